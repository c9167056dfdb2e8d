"""Does MRAR beat 1-step here? The paper's claims (Table 4, Figure 5) in miniature, on a CPU.

On the built-in `digits`: train the default 1-step model, fine-tune it into MRAR, and, as a
control at equal compute, continue the 1-step model for the same number of steps. Evaluate all on
the same number of generated images per class:
  - FID in the feature space of the shipped digits classifier (`fid --features digits`),
  - class fidelity: that classifier's accuracy on images labelled by their condition,
  - the paper's diversity measure of the semantic features (lower = more diverse),
  - sampling time per image.
Then sweep the sampler (sampling steps x (scale_0, scale_1)) and run the fuse demo on `shapes`.

Writes results.json, figure.png, fuse.png and REPORT.md into --out, and (full runs only) replaces
the section between the quality_small markers of docs/reproduction.md with the report and copies
its two figures to docs/images/quality_small/, so the docs' numbers come from one run of this script.

    python benchmarks/quality_small.py              # full run (about an hour on 2 cores)
    python benchmarks/quality_small.py --quick      # smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics as st
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transdiff_cli.core.data.images import make_grid
from transdiff_cli.core.data.tokenizer_spec import load_tokenizer
from transdiff_cli.core.eval.classifier import digits_dataset, load_digits_classifier
from transdiff_cli.core.eval.diversity import (
    diversity,
    mrar_feature_diversity,  # noqa: E402
)
from transdiff_cli.core.eval.features import frechet_distance, statistics
from transdiff_cli.core.io.checkpoint import load_checkpoint
from transdiff_cli.core.sampling.fuse import fuse, save_figure
from transdiff_cli.core.sampling.generate import generate_arrays, latents_to_images
from transdiff_cli.core.sampling.settings import sample_settings
from transdiff_cli.core.training.train_run import RunRequest, run_training

REPO = Path(__file__).resolve().parents[1]
CONFIG: dict[str, Any] = {}  # the settings of this run (FULL or QUICK)
BEGIN, END = "<!-- quality_small:begin -->", "<!-- quality_small:end -->"

FULL = dict(seeds=[0, 1], steps_1step=630, steps_extra=300, per_class=50, sweep_per_class=20,
            sweep_steps=[10, 25, 50, 100], sweep_scales=[(1.0, 1.0), (0.9, 0.9), (1.0, 0.0)],
            shapes_steps=500, model={}, finetune_batch=32)
QUICK = dict(seeds=[0], steps_1step=12, steps_extra=6, per_class=4, sweep_per_class=2,
             sweep_steps=[2, 4], sweep_scales=[(1.0, 1.0), (1.0, 0.0)], shapes_steps=6,
             model={"width": 32, "heads": 2, "encoder_depth": 1, "decoder_depth": 1},
             finetune_batch=16, train={"grid_classes": 2, "grid_per_class": 2, "grid_sampling_steps": 4})


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train(out: Path, name: str, *, model: dict, **train: Any) -> Path:
    run = out / "runs" / name
    cfg_file = None
    if model:
        import yaml

        cfg_file = out / "runs" / "model.yaml"
        cfg_file.parent.mkdir(parents=True, exist_ok=True)
        cfg_file.write_text(yaml.safe_dump({"model": model}))
    finetune = train.pop("finetune_from", None)
    train = {**CONFIG.get("train", {}), **train}
    req = RunRequest(size=None if finetune else "tiny", config_file=str(cfg_file) if cfg_file else None,
                     run_dir=str(run), device="cpu", progress=False, finetune_from=finetune,
                     train_overrides={k: v for k, v in train.items() if v is not None})
    t0 = time.time()
    result = run_training(req)
    log(f"trained {name}: {result.step} steps in {time.time() - t0:.0f} s")
    return run


class Evaluator:
    """FID / fidelity against all real digits in the classifier's feature space."""

    def __init__(self) -> None:
        self.clf = load_digits_classifier()
        real, _ = digits_dataset()
        self.ref = statistics(self.clf.features(real).double())
        self.ref.source = "digits"

    def __call__(self, ckpt: Path, mode: str, per_class: int, seed: int, **sampling: Any) -> dict[str, Any]:
        ck = load_checkpoint(ckpt)
        model = ck.model.eval()
        tok = load_tokenizer(ck.meta["tokenizer"])
        settings = sample_settings(model.config, mode=mode, **sampling)
        labels = [c for c in range(model.config.num_classes) for _ in range(per_class)]
        t0 = time.perf_counter()
        images = generate_arrays(model, tok, labels, settings, seed=seed, batch_size=200)
        secs = (time.perf_counter() - t0) / len(labels)
        feats = self.clf.features(images).double()
        pred = self.clf.predict(images).numpy()
        return {"fid": frechet_distance(statistics(feats), self.ref),
                "class_fidelity": float((pred == np.asarray(labels)).mean()),
                "s_per_image": secs, "num_images": len(labels), "settings": settings.to_dict()}


def feature_diversity(ckpt: Path, mode: str, seed: int, quick: bool) -> dict[str, Any]:
    model = load_checkpoint(ckpt).model.eval()
    labels = list(range(model.config.num_classes))
    if mode == "1step":
        per = diversity(model, torch.tensor(labels))
        return {"per_class": per.tolist(), "mean": float(per.mean())}
    settings = sample_settings(model.config, mode="mrar", sampling_steps=4 if quick else 25)
    per, per_round = mrar_feature_diversity(model, labels, settings, seed=seed, num_refs=2 if quick else 8)
    return {"per_class": per.tolist(), "mean": float(per.mean()),
            "per_round_mean": per_round.mean(dim=1).tolist()}


def grid(ckpt: Path, mode: str, seed: int) -> torch.Tensor:
    ck = load_checkpoint(ckpt)
    model = ck.model.eval()
    tok = load_tokenizer(ck.meta["tokenizer"])
    settings = sample_settings(model.config, mode=mode)
    labels = [c for c in range(model.config.num_classes) for _ in range(8)]
    images = generate_arrays(model, tok, labels, settings, seed=seed + 1000, batch_size=200)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def figure(results: dict[str, Any], grids: dict[str, torch.Tensor], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 5.2), dpi=110)
    names = list(grids)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names) + 1, i + 1)
        ax.imshow(np.asarray(make_grid(grids[name], nrow=8, upscale=1)), cmap="gray")
        ax.set_title(f"{name} (rows: digits 0-9)", fontsize=10)
        ax.axis("off")
    ax = fig.add_subplot(1, len(names) + 1, len(names) + 1)
    for (model, s0, s1), rows in _sweep_series(results["sweep"]).items():
        ax.plot([r["sampling_steps"] for r in rows], [r["fid"] for r in rows], marker="o",
                label=f"{model}, scales {s0}/{s1}")
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("FID (digits-classifier features)")
    ax.set_title("FID vs sampling steps (seed 0)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _sweep_series(sweep: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    series: dict[tuple, list[dict[str, Any]]] = {}
    for row in sweep:
        series.setdefault((row["model"], row["scale_0"], row["scale_1"]), []).append(row)
    return series


def verdict(results: dict[str, Any]) -> list[str]:
    seeds = results["seeds"]
    n = len(seeds)
    lines = []
    for metric, better in (("fid", "lower"), ("class_fidelity", "higher")):
        for base in ("1step", "1step_continued"):
            d = [s["eval"]["mrar"][metric] - s["eval"][base][metric] for s in seeds]
            wins = sum((x < 0) if better == "lower" else (x > 0) for x in d)
            lines.append(f"- {metric}: MRAR vs {base}: MRAR better in {wins} of {n} seed(s); "
                         f"mean difference MRAR − {base} = {st.mean(d):+.4f} ({better} is better)")
    d = [s["diversity"]["mrar"]["mean"] - s["diversity"]["1step"]["mean"] for s in seeds]
    wins = sum(x < 0 for x in d)
    lines.append(f"- diversity measure: MRAR features more diverse (lower) than 1-step in {wins} of {n} "
                 f"seed(s); mean difference MRAR − 1-step = {st.mean(d):+.4f} (paper, TransDiff-L: "
                 f"0.39 vs 0.44, −0.05)")
    return lines


def report(results: dict[str, Any], args: argparse.Namespace, images: str = "") -> str:
    """The markdown report; `images` is the figures' folder relative to where it is written."""
    rows = []
    for key, label in (("1step", "1-step"), ("1step_continued", "1-step, continued (control)"),
                       ("mrar", "MRAR (fine-tuned)")):
        vals = [s["eval"][key] for s in results["seeds"]]
        div_key = "1step" if key != "mrar" else "mrar"
        if key == "1step_continued":
            div = [s["diversity"]["1step_continued"]["mean"] for s in results["seeds"]]
        else:
            div = [s["diversity"][div_key]["mean"] for s in results["seeds"]]

        def ms(xs: list[float], f: str = ".3f") -> str:
            return f"{st.mean(xs):{f}}" + (f" ± {st.stdev(xs):{f}}" if len(xs) > 1 else "")

        rows.append(f"| {label} | {ms([v['fid'] for v in vals], '.2f')} | "
                    f"{ms([100 * v['class_fidelity'] for v in vals], '.1f')}% | {ms(div)} | "
                    f"{ms([v['s_per_image'] for v in vals], '.4f')} |")
    sweep = "\n".join(
        f"| {r['model']} | {r['sampling_steps']} | {r['scale_0']} / {r['scale_1']} | {r['fid']:.2f} | "
        f"{100 * r['class_fidelity']:.1f}% | {r['s_per_image']:.4f} |" for r in results["sweep"])
    setup = results["config"]
    return "\n".join([
        "### Does MRAR beat 1-step? (digits, CPU)",
        "",
        f"Command: `{results['command']}` — {results['machine']}, torch {results['torch']}, "
        f"seeds {setup['seeds']}, {results['minutes']:.0f} minutes in all.",
        f"1-step: the default `transdiff train` ({setup['steps_1step']} steps); MRAR: `finetune-mrar` for "
        f"{setup['steps_extra']} steps (groups of 4 same-class digits, batch {setup['finetune_batch']}); control: "
        f"the 1-step model trained {setup['steps_extra']} more steps. {setup['per_class']} images per class "
        f"per model, the models' default sampler ({_sampler_text(results)}). FID uses the shipped digits "
        f"classifier's features against all 1,797 real digits; ± is the standard deviation over seeds.",
        "",
        "| model | FID ↓ | class fidelity ↑ | diversity measure ↓ | s / image |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Verdict, from the numbers above:",
        "",
        *verdict(results),
        "",
        f"Sampler sweep (seed 0, {setup['sweep_per_class']} images per class):",
        "",
        "| model | sampling steps | scale_0 / scale_1 | FID ↓ | class fidelity ↑ | s / image |",
        "| --- | --- | --- | --- | --- | --- |",
        sweep,
        "",
        f"![1-step vs MRAR samples and FID against sampling steps]({images}figure.png)",
        "",
        "Fuse demo (`shapes`, red-circle + blue-square, first half of the slots from A):",
        "",
        f"![fuse]({images}fuse.png)",
    ])


def _sampler_text(results: dict[str, Any]) -> str:
    st_ = results["seeds"][0]["eval"]["1step"]["settings"]
    return (f"{st_['sampling_steps']} Euler–Maruyama steps, cfg {st_['cfg'][0]:g}, "
            f"scale_0/scale_1 {st_['scale_0']:g}/{st_['scale_1']:g}")


DOCS_PAGE = REPO / "docs" / "reproduction.md"
DOCS_IMAGES = "images/quality_small/"  # relative to the page


def update_docs(text: str, out: Path) -> None:
    """Put the report between the markers of the docs page and its figures beside the page."""
    images = DOCS_PAGE.parent / DOCS_IMAGES
    images.mkdir(parents=True, exist_ok=True)
    for name in ("figure.png", "fuse.png"):
        shutil.copyfile(out / name, images / name)
    doc = DOCS_PAGE.read_text()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc = f"{head}{BEGIN}\n{text}\n{END}{tail}"
    else:
        doc = f"{doc.rstrip()}\n\n{BEGIN}\n{text}\n{END}\n"
    DOCS_PAGE.write_text(doc)


def machine() -> str:
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, a few steps, no docs update")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/quality_small)")
    ap.add_argument("--seeds", type=str, default=None, help="comma-separated seeds (default 0,1)")
    ap.add_argument("--no-docs", "--no-readme", dest="no_docs", action="store_true",
                    help="do not update docs/reproduction.md (--no-readme: the old spelling)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = dict(QUICK if args.quick else FULL)
    CONFIG.update(setup)
    if args.seeds:
        setup["seeds"] = [int(s) for s in args.seeds.split(",")]
    out = args.out or (REPO / "benchmarks" / ("quality_small_quick" if args.quick else "quality_small"))
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    quick = args.quick
    model = setup["model"]
    evaluate = Evaluator()
    results: dict[str, Any] = {"config": {k: v for k, v in setup.items()}, "seeds": [], "sweep": []}
    grids: dict[str, torch.Tensor] = {}
    for seed in setup["seeds"]:
        log(f"seed {seed}: training 1-step")
        one = train(out, f"seed{seed}-1step", model=model, seed=seed, max_steps=setup["steps_1step"])
        log(f"seed {seed}: fine-tuning MRAR")
        mrar = train(out, f"seed{seed}-mrar", model={}, seed=seed, finetune_from=str(one),
                     max_steps=setup["steps_extra"], batch_size=setup["finetune_batch"])
        log(f"seed {seed}: continuing 1-step (control)")
        ctrl = _continue(out, one, seed, setup, model)
        ev = {name: evaluate(path, mode, setup["per_class"], seed)
              for name, path, mode in (("1step", one, "1step"), ("1step_continued", ctrl, "1step"),
                                       ("mrar", mrar, "mrar"))}
        div = {"1step": feature_diversity(one, "1step", seed, quick),
               "1step_continued": feature_diversity(ctrl, "1step", seed, quick),
               "mrar": feature_diversity(mrar, "mrar", seed, quick)}
        results["seeds"].append({"seed": seed, "eval": ev, "diversity": div,
                                 "runs": {"1step": str(one), "mrar": str(mrar), "control": str(ctrl)}})
        log(f"seed {seed}: " + ", ".join(f"{k} FID {v['fid']:.2f} fid.acc {v['class_fidelity']:.3f}"
                                         for k, v in ev.items()))
        if seed == setup["seeds"][0]:
            grids = {"1-step": grid(one, "1step", seed), "MRAR": grid(mrar, "mrar", seed)}
            for steps in setup["sweep_steps"]:
                for i, (s0, s1) in enumerate(setup["sweep_scales"]):
                    # MRAR costs 4 decodes per image: it is swept over steps at the default scales only
                    models = (("1-step", one, "1step"), ("MRAR", mrar, "mrar"))[: 2 if i == 0 else 1]
                    for name, path, mode in models:
                        r = evaluate(path, mode, setup["sweep_per_class"], seed, sampling_steps=steps,
                                     scale_0=s0, scale_1=s1)
                        results["sweep"].append({"model": name, "sampling_steps": steps, "scale_0": s0,
                                                 "scale_1": s1, **{k: r[k] for k in ("fid", "class_fidelity",
                                                                                     "s_per_image")}})
            log("sampler sweep done")
    log("shapes: training for the fuse demo")
    shapes = train(out, "shapes-1step", model=model, seed=0, data="shapes", image_size=8,
                   max_steps=setup["shapes_steps"])
    ck = load_checkpoint(shapes)
    names = ck.class_names
    a, b = names.index("red-circle"), names.index("blue-square")
    settings = sample_settings(ck.model.config, mode="1step")
    fused = fuse(ck.model.eval(), a, b, settings, seed=0)
    save_figure(latents_to_images(load_tokenizer(ck.meta["tokenizer"]), fused.latents),
                ["red-circle", "fused", "blue-square"], out / "fuse.png")
    results.update(minutes=(time.time() - t_start) / 60, machine=machine(), torch=torch.__version__,
                   command="python benchmarks/quality_small.py" + (" --quick" if quick else "")
                   + (f" --seeds {args.seeds}" if args.seeds else "")
                   + (f" --threads {args.threads}" if args.threads else ""),
                   git=_git_rev())
    figure(results, grids, out / "figure.png")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "REPORT.md").write_text(report(results, args) + "\n")
    if not quick and not args.no_docs:
        update_docs(report(results, args, images=DOCS_IMAGES), out)
    log(f"done in {results['minutes']:.1f} min; wrote {out}")
    print("\n".join(verdict(results)))


def _continue(out: Path, one: Path, seed: int, setup: dict[str, Any], model: dict) -> Path:
    """The control: a copy of the 1-step run trained `steps_extra` more steps (same data order)."""
    import shutil

    ctrl = out / "runs" / f"seed{seed}-1step-continued"
    if not ctrl.exists():
        shutil.copytree(one, ctrl)
    return train(out, ctrl.name, model=model, seed=seed, max_steps=setup["steps_1step"] + setup["steps_extra"])


def _git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
