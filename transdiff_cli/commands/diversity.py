"""`transdiff diversity`: the paper's cosine-similarity diversity measure (appendix D) per class."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..core.data.classes import class_label, resolve_classes
from ..core.device import resolve_device
from ..core.errors import TransDiffError
from ..core.eval.diversity import measure_diversity
from ..core.sampling.inference import open_checkpoint
from ..core.sampling.settings import reference_settings
from . import _sampling_options as so
from ._common import console, help_text, print_settings, user_errors

HELP = """The paper's diversity measure of a checkpoint's semantic features: the mean off-diagonal
cosine similarity of one image's features (lower = more diverse), per class and overall.

1-step: the features the encoder gives each class. MRAR (--mode mrar): the features depend on the
images sampled in earlier rounds, so --num-refs MRAR samples per class are drawn (cheaply:
--sampling-steps, default 10) and, with their rounds as references, the measure is taken over all K
blocks of features (per_class) and over each round's block alone (per_round). --json prints the
result as JSON on stdout.

Example:

    transdiff diversity checkpoint-last.pth --classes 207,292 --json

    transdiff diversity --ckpt runs/digits-tiny
"""


def register(app: typer.Typer) -> None:
    @app.command("diversity", help=help_text(HELP))
    @user_errors
    def diversity_cmd(
        ckpt: Path = typer.Argument(None, show_default=False,
                                    help="checkpoint folder, run folder or published .pth (or --ckpt; "
                                    "default: the newest run under runs/)"),
        ckpt_option: Path = typer.Option(None, "--ckpt", help="the checkpoint, as the other commands take it"),
        classes: list[str] = typer.Option(None, "--classes", "--class", "-c",
                                          help="classes to measure (default: all); repeat or comma-separate"),
        mode: so.Mode = None,
        as_json: bool = typer.Option(False, "--json", help="print JSON to stdout instead of a table"),
        num_refs: int = typer.Option(1, "--num-refs", min=1, help="MRAR: samples per class to average over"),
        sampling_steps: int = typer.Option(None, "--sampling-steps",
                                           help="MRAR: sampler steps for the references (default 10)"),
        cfg: so.Cfg = None,
        seed: so.Seed = 0,
        batch_size: int = typer.Option(64, "--batch-size", min=1),
        out: Path = typer.Option(None, "--out", "-o", help="also write the JSON to this file"),
        device: so.Device = None,
        weights: so.Weights = "ema",
        size: so.Size = None,
    ) -> None:
        if ckpt is not None and ckpt_option is not None and ckpt != ckpt_option:
            raise TransDiffError(f"two checkpoints given ({ckpt} and --ckpt {ckpt_option}): give one")
        ckpt = ckpt if ckpt is not None else ckpt_option
        dev = resolve_device(device)
        ck = open_checkpoint(ckpt, weights=weights, size=size, device=dev, precision="fp32")  # a measurement
        mc, model = ck.config, ck.model
        settings = reference_settings(ck, so.options(mode=mode, sampling_steps=sampling_steps, cfg=cfg))
        if settings.mode == "mrar":  # only MRAR samples anything
            print_settings(settings)
        labels = resolve_classes(classes, mc.num_classes, ck.class_names)
        doc: dict = {"checkpoint": ck.path.name if ck.path else None, "source": str(ck.path),
                     "weights": "model_ema" if weights == "ema" else "model", "mode": settings.mode,
                     "classes": labels}
        per_class, per_round = measure_diversity(model, labels, settings, seed=seed, num_refs=num_refs,
                                                 batch_size=batch_size)
        if per_round is not None:
            doc["per_round"] = [{"round": k, "per_class": row.tolist(), "mean": row.mean().item()}
                                for k, row in enumerate(per_round)]
            doc.update(num_refs=num_refs, seed=seed, reference_sampling=settings.to_dict())
        per_class = per_class.double()
        doc["per_class"] = per_class.tolist()
        doc["mean"] = per_class.mean().item()
        text = json.dumps(doc, indent=1)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        if as_json:
            typer.echo(text)
            return
        table = Table(title=f"diversity of {doc['checkpoint']} ({settings.mode}; lower = more diverse)")
        table.add_column("class", justify="right")
        table.add_column("name")
        table.add_column("measure", justify="right")
        rounds = doc.get("per_round", [])
        for r in rounds:
            table.add_column(f"round {r['round']}", justify="right")
        for i, y in enumerate(labels):
            table.add_row(str(y), class_label(y, mc.num_classes, ck.class_names), f"{doc['per_class'][i]:.4f}",
                          *(f"{r['per_class'][i]:.4f}" for r in rounds))
        table.add_row("all", "mean", f"{doc['mean']:.4f}", *(f"{r['mean']:.4f}" for r in rounds), style="bold")
        from rich.console import Console

        Console(markup=False).print(table)
        if out is not None:
            console.print(f"wrote {out}")
