"""Quality during training (`train --eval-every N`): FID (+ IS, or class fidelity with the digits
features) of the EMA model every N steps, logged into metrics.jsonl and drawn as fid.png.

Every rank draws its share of the `eval_images` class-balanced images (image i of class i mod C,
noise seeded by (seed, i): the same images whatever the number of processes); rank 0 gathers them
and measures them against the reference, whose side (statistics, features) is computed once per run.
The training RNG is left untouched, so a resumed run still equals an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..distributed import DistInfo
from ..errors import TransDiffError
from ..eval.features import ImageSet, make_extractor
from ..eval.fid import BUILTIN_DIGITS, Reference, fid_key, generated_metrics, prepare_reference
from ..fs import atomic_write
from ..model.config import ModelConfig
from ..model.transdiff import TransDiff
from ..plot_text import drawable
from ..sampling.generate import generate_arrays
from ..sampling.settings import sample_settings
from .run_dir import RunDir
from .train_config import TrainConfig

EVAL_BATCH = 64


def check_eval_config(train_config: TrainConfig) -> None:
    """Fail at start-up, on every rank, rather than at the first evaluation."""
    if not train_config.eval_every:
        return
    if train_config.eval_ref != BUILTIN_DIGITS and not Path(train_config.eval_ref).exists():
        raise TransDiffError(f"`eval_ref` not found: {train_config.eval_ref}")
    if train_config.eval_features == "inception":
        from ..eval.features import inception_weights_path

        inception_weights_path(train_config.eval_inception_weights)


class TrainingEvaluator:
    def __init__(self, train_config: TrainConfig, model_config: ModelConfig, tokenizer: Any, dist_info: DistInfo,
                 device: torch.device, run: RunDir):
        check_eval_config(train_config)
        self.train_config, self.model_config, self.tokenizer = train_config, model_config, tokenizer
        self.dist, self.device, self.run = dist_info, device, run
        self.extractor = None
        self.reference: Reference | None = None
        self.plot = run.root / "fid.png"

    def _reference(self) -> Reference:
        if self.reference is None:
            from ..eval.fid import load_input

            tc = self.train_config
            self.extractor = make_extractor(tc.eval_features, tc.eval_inception_weights, self.device)
            self.reference = prepare_reference(load_input(tc.eval_ref, allow_stats=True), self.extractor)
        return self.reference

    @torch.no_grad()
    def __call__(self, ema_state: dict[str, torch.Tensor], step: int) -> dict[str, Any] | None:
        """Evaluate the EMA weights; rank 0 returns the logged row."""
        t0 = time.time()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            model = TransDiff(self.model_config).to(self.device)
            model.load_state_dict(ema_state)
            model.eval()
            c = self.model_config.num_classes
            labels = [i % c for i in range(self.train_config.eval_images)]
            mine = list(range(self.dist.rank, len(labels), self.dist.world_size))
            settings = sample_settings(self.model_config)
            images = generate_arrays(model, self.tokenizer, [labels[i] for i in mine], settings,
                                     seed=self.train_config.seed, batch_size=EVAL_BATCH, indices=mine)
        del model
        if self.dist.enabled:
            parts: list[Any] = [None] * self.dist.world_size
            dist.gather_object((mine, images), parts if self.dist.is_main else None, dst=0)
            if not self.dist.is_main:
                return None
            order = np.argsort(np.concatenate([np.asarray(p[0]) for p in parts]), kind="stable")
            images = np.concatenate([p[1] for p in parts])[order]
        ref = self._reference()
        m = generated_metrics(ImageSet(images, np.asarray(labels, dtype=np.int64), f"step {step}"), ref,
                              self.extractor, isc=True)
        row: dict[str, Any] = {"step": step, "fid": m[fid_key(self.train_config.eval_features)],
                               "inception_score": m.get("inception_score_mean"),
                               "eval_images": len(labels), "eval_features": self.train_config.eval_features,
                               "eval_seconds": round(time.time() - t0, 2)}
        if "class_fidelity" in m:
            row["class_fidelity"] = m["class_fidelity"]
        self.run.append_metrics([row])
        plot_fid(self.run, self.plot)
        return row


def plot_fid(run: RunDir, path: Path) -> Path | None:
    """FID (and IS / class fidelity on a second axis) against the training step."""
    rows = [r for r in run.read_metrics()
            if isinstance(r.get("fid"), (int, float)) and not isinstance(r.get("fid"), bool)]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, [r["fid"] for r in rows], marker="o", color="C0", label="FID")
    ax.set_xlabel("step")
    ax.set_ylabel(drawable(f"FID ({rows[-1].get('eval_features', '')} features, {rows[-1].get('eval_images')} images)"))
    ax.grid(alpha=0.3)
    second = "class_fidelity" if all("class_fidelity" in r for r in rows) else "inception_score"
    if all(r.get(second) is not None for r in rows):
        ax2 = ax.twinx()
        ax2.plot(steps, [r[second] for r in rows], marker="s", color="C1", label=second.replace("_", " "))
        ax2.set_ylabel(second.replace("_", " "))
        ax.legend(ax.get_lines() + ax2.get_lines(), ["FID", second.replace("_", " ")], loc="best")
    ax.set_title(drawable(f"{run.root.name}: EMA model quality"))
    fig.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path
