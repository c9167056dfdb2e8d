"""Few-step decoding on digits: FID and class fidelity against network evaluations (NFE) and seconds
per image, for the default 1-step model, its MRAR fine-tune and its distilled student, with every
sampler in the registry; the teacher's 100-step Euler-Maruyama result is the reference line.

- FID: in the feature space of the shipped digits classifier (`fid --features digits`), against all
  1,797 real digits; class fidelity: that classifier's accuracy on images labelled by their class.
- NFE: counted, not assumed: every call of the decoder during sampling (a guided pair, batched, is one
  evaluation), with the rows it computed (2 per image with guidance, 1 without).
- s/image: wall-clock of the whole generation (encoder, decoder, pixels), measured in this run.
- Several seeds of `--per-class` x 10 images each: the tables give mean ± standard deviation.
- The width-256 benchmark configuration (bench_sampling.py's: ImageNet geometry, 256 decoder tokens,
  random weights) is timed at each NFE, guided (the teacher) and unguided (the student).

    python benchmarks/few_step.py --teacher runs/digits-tiny --mrar runs/digits-tiny-mrar \\
        --student runs/digits-tiny-distill4 --out benchmarks/few_step
    python benchmarks/few_step.py --quick --out /tmp/few_step   # toy models, trained here (a minute)

Writes results.json, few_step.png (FID vs NFE, FID vs s/image) and table.md into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics as st
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transdiff_cli.core.data.tokenizer_spec import load_tokenizer  # noqa: E402
from transdiff_cli.core.eval.classifier import digits_dataset, load_digits_classifier  # noqa: E402
from transdiff_cli.core.eval.features import frechet_distance, statistics  # noqa: E402
from transdiff_cli.core.io.checkpoint import load_checkpoint  # noqa: E402
from transdiff_cli.core.model.config import IMAGENET_GEOMETRY, preset  # noqa: E402
from transdiff_cli.core.model.transdiff import TransDiff  # noqa: E402
from transdiff_cli.core.sampling import samplers as sampler_registry  # noqa: E402
from transdiff_cli.core.sampling.generate import generate_arrays  # noqa: E402
from transdiff_cli.core.sampling.loop import sample_rounds  # noqa: E402
from transdiff_cli.core.sampling.settings import sample_settings  # noqa: E402

FULL = dict(seeds=[0, 1, 2], per_class=50, nfe={"teacher": [1, 2, 4, 8, 16, 100], "mrar": [1, 2, 4, 8, 25],
                                                  "student": [1, 2, 4, 8]},
            timing=dict(width=256, heads=4, encoder_depth=2, decoder_depth=4, batch=4, repeats=3))
QUICK = dict(seeds=[0, 1], per_class=2, nfe={"teacher": [1, 2, 4, 100], "mrar": [1, 2], "student": [1, 2]},
             timing=dict(width=32, heads=2, encoder_depth=1, decoder_depth=1, batch=2, repeats=1),
             model=dict(width=32, heads=2, encoder_depth=1, decoder_depth=1, buffer_size=4),
             train_steps=6, finetune_steps=4, distill_steps=4, pool_size=32)
REFERENCE_STEPS = 100  # the paper's Euler-Maruyama steps


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def registry() -> list[str]:
    """Every sampler the sampling layer offers (a tuple of names or a name -> class mapping)."""
    reg = sampler_registry.SAMPLERS
    return list(reg)


class CountingDecoder:
    """Counts decoder evaluations (calls) and the rows they compute, on both sampling paths."""

    def __init__(self, model: TransDiff):
        self.calls = self.rows = 0
        dec = model.decoder
        fast, plain = dec.forward_step, dec.forward

        def forward_step(x, mods, kv, copies=1, scratch=None):
            self.calls += 1
            self.rows += x.shape[0] * copies
            return fast(x, mods, kv, copies, scratch)

        def forward(x, *args, **kwargs):
            self.calls += 1
            self.rows += x.shape[0]
            return plain(x, *args, **kwargs)

        dec.forward_step, dec.forward = forward_step, forward

    def reset(self) -> None:
        self.calls = self.rows = 0


class Evaluator:
    def __init__(self) -> None:
        self.clf = load_digits_classifier()
        real, _ = digits_dataset()
        self.ref = statistics(self.clf.features(real).double())

    def __call__(self, images: np.ndarray, labels: list[int]) -> dict[str, float]:
        feats = self.clf.features(images).double()
        pred = self.clf.predict(images).numpy()
        return {"fid": float(frechet_distance(statistics(feats), self.ref)),
                "class_fidelity": float((pred == np.asarray(labels)).mean())}


_CACHE: dict[str, Any] = {}  # per process: the evaluator and loaded models


def evaluate(task: tuple[str, str, str, int, int, int, int]) -> dict[str, Any]:
    """One (model, sampler, steps per round, seed) point: generate, count, time, measure."""
    name, ckpt, sampler, steps, seed, per_class, batch_size = task
    if "ev" not in _CACHE:
        _CACHE["ev"] = Evaluator()
    if ckpt not in _CACHE:
        ck = load_checkpoint(ckpt)
        model = ck.model.float().eval()
        _CACHE[ckpt] = (model, load_tokenizer(ck.meta["tokenizer"]), CountingDecoder(model))
    model, tok, counter = _CACHE[ckpt]
    labels = [c for c in range(model.config.num_classes) for _ in range(per_class)]
    # `steps` sampler steps per round; the counter reports what they cost (a second-order sampler's
    # step may take two evaluations, MRAR runs the decoder once per round)
    settings = sample_settings(model.config, sampler=sampler, sampling_steps=steps)
    counter.reset()
    t0 = time.perf_counter()
    images = generate_arrays(model, tok, labels, settings, seed=seed, batch_size=batch_size)
    secs = (time.perf_counter() - t0) / len(labels)
    batches = math.ceil(len(labels) / batch_size)
    row = {"model": name, "sampler": sampler, "sampling_steps": settings.sampling_steps,
           "nfe": counter.calls / batches, "rows_per_image": counter.rows / len(labels),
           "cfg": settings.cfg, "scale_0": settings.scale_0, "scale_1": settings.scale_1,
           "seed": seed, "num_images": len(labels), "s_per_image": secs, **_CACHE["ev"](images, labels)}
    log(f"{name:8s} {sampler:5s} NFE {row['nfe']:5.0f}  seed {seed}: FID {row['fid']:7.2f}  "
        f"fidelity {100 * row['class_fidelity']:5.1f}%  {1000 * secs:6.2f} ms/image")
    return row


def evaluate_all(ckpts: dict[str, str], nfes: dict[str, list[int]], seeds: list[int], per_class: int,
                 batch_size: int, jobs: int) -> list[dict[str, Any]]:
    """Every model x registered sampler x steps x seed; with `jobs` > 1 in that many processes
    (one thread each: the s/image of points measured side by side then share the machine)."""
    tasks = [(name, ckpt, sampler, n, seed, per_class, batch_size) for name, ckpt in ckpts.items()
             for sampler in registry() for n in nfes[name] for seed in seeds]
    if jobs <= 1:
        return [evaluate(t) for t in tasks]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork")) as pool:
        return list(pool.map(evaluate, tasks))


def time_width256(cfg: dict[str, Any], nfes: list[int], guidance: float) -> list[dict[str, Any]]:
    """bench_sampling.py's width-256 configuration: ImageNet geometry (256 decoder tokens), random
    weights, fp32, one thread per core; median of `repeats` runs per NFE, guided and unguided."""
    config = preset("tiny", width=cfg["width"], heads=cfg["heads"], encoder_depth=cfg["encoder_depth"],
                    decoder_depth=cfg["decoder_depth"], **IMAGENET_GEOMETRY)
    torch.manual_seed(0)
    model = TransDiff(config).eval()
    for p in model.decoder.final_layer.linear.parameters():
        torch.nn.init.normal_(p, std=0.02)
    b = cfg["batch"]
    labels = torch.arange(b) % config.num_classes
    noise = torch.randn(b, config.num_tokens, config.token_dim, generator=torch.Generator().manual_seed(0))
    out = []
    for nfe in sorted(set(nfes) | {REFERENCE_STEPS}):
        for label, scale, sampler in (("guided (teacher)", guidance, "em"), ("unguided (student)", 1.0, "ode")):
            def run(scale: float = scale, nfe: int = nfe, sampler: str = sampler) -> None:
                sample_rounds(model, labels, cfg=scale, sampling_steps=nfe, sampler=sampler, noise=noise,
                              generator=torch.Generator().manual_seed(0))
            run()  # warm-up
            times = []
            for _ in range(cfg["repeats"]):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            out.append({"nfe": nfe, "kind": label, "cfg": scale, "sampler": sampler,
                        "s_per_image": st.median(times) / b, "batch": b})
            log(f"width-{cfg['width']}: NFE {nfe:3d} {label}: {1000 * out[-1]['s_per_image']:.1f} ms/image")
    ref = next(r["s_per_image"] for r in out if r["nfe"] == REFERENCE_STEPS and r["kind"].startswith("guided"))
    for r in out:
        r["speedup_vs_guided_100"] = ref / r["s_per_image"]
    return out


# ------------------------------------------------------------------------------ summaries
def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["sampler"], r["sampling_steps"]), []).append(r)
    out = []
    for (model, sampler, steps), g in groups.items():
        def ms(key: str, g: list[dict[str, Any]] = g) -> tuple[float, float]:
            vals = [r[key] for r in g]
            return st.mean(vals), (st.stdev(vals) if len(vals) > 1 else 0.0)

        fid, fid_sd = ms("fid")
        fidelity, fidelity_sd = ms("class_fidelity")
        out.append({"model": model, "sampler": sampler, "sampling_steps": steps, "nfe": g[0]["nfe"],
                    "rows_per_image": g[0]["rows_per_image"], "fid": fid, "fid_std": fid_sd,
                    "class_fidelity": fidelity, "class_fidelity_std": fidelity_sd,
                    "s_per_image": st.median(r["s_per_image"] for r in g), "seeds": len(g)})
    return out


def acceptance(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's bar for the distilled student: at <= 4 NFE, FID <= 1.10 x the teacher's 100-step
    Euler-Maruyama FID (means over seeds) and class fidelity at most 1 point below the teacher's."""
    ref = next((s for s in summary if s["model"] == "teacher" and s["sampler"] == "em"
                and s["sampling_steps"] == REFERENCE_STEPS), None)
    cands = [s for s in summary if s["model"] == "student" and s["nfe"] <= 4]
    if ref is None or not cands:
        return {}
    best = min(cands, key=lambda s: s["fid"])
    return {"reference": {k: ref[k] for k in ("fid", "fid_std", "class_fidelity", "s_per_image")},
            "best_student": {k: best[k] for k in ("sampler", "nfe", "fid", "fid_std", "class_fidelity", "s_per_image")},
            "fid_ratio": best["fid"] / ref["fid"],
            "fidelity_drop_points": 100 * (ref["class_fidelity"] - best["class_fidelity"]),
            "speedup_s_per_image": ref["s_per_image"] / best["s_per_image"],
            "passes": best["fid"] <= 1.10 * ref["fid"] and ref["class_fidelity"] - best["class_fidelity"] <= 0.01}


def table(summary: list[dict[str, Any]], timing: list[dict[str, Any]], acc: dict[str, Any], meta: dict) -> str:
    ref = acc.get("reference")
    lines = [f"{meta['seeds']} seeds x {meta['images_per_seed']} images each (mean ± std over seeds); FID in the "
             "digits classifier's features against all real digits; NFE counted (a guided pair is 1), rows = "
             f"decoder rows per image; s/image on {meta['machine']} (load {meta['loadavg']}).", ""]
    if ref:
        lines += [f"Reference line: teacher, Euler–Maruyama, {REFERENCE_STEPS} steps: FID {ref['fid']:.2f} ± "
                  f"{ref['fid_std']:.2f}, class fidelity {100 * ref['class_fidelity']:.1f}%.", ""]
    lines += ["| model | sampler | NFE | rows/image | FID | class fidelity | ms/image | × vs EM-100 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary:
        speed = f"{ref['s_per_image'] / s['s_per_image']:.1f}×" if ref else ""
        lines.append(f"| {s['model']} | {s['sampler']} | {s['nfe']:g} | {s['rows_per_image']:g} | "
                     f"{s['fid']:.2f} ± {s['fid_std']:.2f} | {100 * s['class_fidelity']:.1f} ± "
                     f"{100 * s['class_fidelity_std']:.1f}% | {1000 * s['s_per_image']:.2f} | {speed} |")
    if acc:
        b = acc["best_student"]
        lines += ["", f"Distilled student, best at ≤ 4 NFE: {b['sampler']} at NFE {b['nfe']:g}: FID {b['fid']:.2f} "
                  f"= {acc['fid_ratio']:.3f} × the teacher's EM-100 (bar: ≤ 1.10), class fidelity "
                  f"{acc['fidelity_drop_points']:+.1f} points below (bar: ≤ 1), {acc['speedup_s_per_image']:.1f}× "
                  f"faster per image: **{'passes' if acc['passes'] else 'fails'}**."]
    if timing:
        lines += ["", f"Width-{meta['timing']['width']} configuration (ImageNet geometry, 256 decoder tokens, random "
                  f"weights, batch {meta['timing']['batch']}, fp32):", "",
                  "| NFE | guided (teacher), ms/image | unguided (student), ms/image | speed-up vs guided 100 |",
                  "| --- | --- | --- | --- |"]
        for nfe in sorted({t["nfe"] for t in timing}):
            g = next(t for t in timing if t["nfe"] == nfe and t["kind"].startswith("guided"))
            u = next(t for t in timing if t["nfe"] == nfe and t["kind"].startswith("unguided"))
            lines.append(f"| {nfe} | {1000 * g['s_per_image']:.1f} | {1000 * u['s_per_image']:.1f} | "
                         f"{g['speedup_vs_guided_100']:.1f}× / {u['speedup_vs_guided_100']:.1f}× |")
    return "\n".join(lines) + "\n"


def figure(summary: list[dict[str, Any]], acc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    series: dict[tuple, list[dict[str, Any]]] = {}
    for s in summary:
        series.setdefault((s["model"], s["sampler"]), []).append(s)
    for (model, sampler), pts in series.items():
        pts = sorted(pts, key=lambda s: s["nfe"])
        style = {"teacher": "-", "mrar": "--", "student": ":"}.get(model, "-.")
        for ax, x in ((axes[0], "nfe"), (axes[1], "s_per_image")):
            ax.errorbar([p[x] for p in pts], [p["fid"] for p in pts], yerr=[p["fid_std"] for p in pts],
                        marker="o", linestyle=style, capsize=3, label=f"{model}, {sampler}")
    ref = acc.get("reference")
    for ax, xlabel in ((axes[0], "network evaluations (NFE)"), (axes[1], "seconds per image (measured)")):
        if ref:
            ax.axhline(ref["fid"], color="k", lw=1, label=f"teacher EM-{REFERENCE_STEPS} (reference)")
            ax.axhspan(ref["fid"] - ref["fid_std"], ref["fid"] + ref["fid_std"], color="k", alpha=0.08)
            ax.axhline(1.1 * ref["fid"], color="k", lw=0.8, ls="--", label="1.10 × reference")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID (digits features, mean ± std over seeds)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title("FID vs NFE")
    axes[1].set_title("FID vs time")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------ quick models
def quick_models(out: Path, cfg: dict[str, Any]) -> dict[str, str]:
    """Toy teacher, MRAR fine-tune and student, trained here (the smoke test's models)."""
    import yaml

    from transdiff_cli.core.reporting import SilentReporter
    from transdiff_cli.core.training.distill import DistillRequest, run_distill
    from transdiff_cli.core.training.train_run import RunRequest, run_training

    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    model_yaml = runs / "model.yaml"
    model_yaml.write_text(yaml.safe_dump({"model": cfg["model"]}))
    small = dict(batch_size=32, log_every=1, ckpt_every=1000, grid_classes=2, grid_per_class=1, grid_sampling_steps=2)

    def req(run: str, steps: int, **kw: Any) -> RunRequest:
        return RunRequest(run_dir=str(runs / run), device="cpu", progress=False, reporter=SilentReporter(),
                          train_overrides={**small, "max_steps": steps}, **kw)

    run_training(req("teacher", cfg["train_steps"], size="tiny", config_file=str(model_yaml)))
    run_training(req("mrar", cfg["finetune_steps"], finetune_from=str(runs / "teacher")))
    run_distill(DistillRequest(req("student", cfg["distill_steps"]), str(runs / "teacher"),
                               pool_size=cfg["pool_size"], teacher_steps=8))
    return {k: str(runs / k) for k in ("teacher", "mrar", "student")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help="the default digits model (a `transdiff train` run)")
    p.add_argument("--mrar", help="its MRAR fine-tune (`transdiff finetune-mrar`)")
    p.add_argument("--student", help="its distilled student (`transdiff distill`)")
    p.add_argument("--out", default="benchmarks/few_step")
    p.add_argument("--quick", action="store_true", help="toy models trained here, few images (smoke test)")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--per-class", type=int)
    for name in ("teacher", "mrar", "student"):
        p.add_argument(f"--{name}-nfe", type=int, nargs="+", help=f"sampler steps per round for the {name} "
                       f"(default {' '.join(map(str, FULL['nfe'][name]))})")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--jobs", type=int, default=1, help="evaluate in this many processes (one thread each)")
    p.add_argument("--no-timing", action="store_true", help="skip the width-256 timing")
    p.add_argument("--timing-repeats", type=int, help="timed runs per point of the width-256 timing (default 3)")
    p.add_argument("--reuse", nargs="+", default=[],
                   help="results.json files of earlier runs whose points (rows, width-256 timing) join this one's")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpts = {"teacher": args.teacher, "mrar": args.mrar, "student": args.student}
    if args.quick and not any(ckpts.values()):
        ckpts = quick_models(out, cfg)
    ckpts = {k: v for k, v in ckpts.items() if v}
    earlier = [json.loads(Path(f).read_text()) for f in args.reuse]
    if not ckpts and not earlier:
        p.error("give --teacher / --mrar / --student checkpoints, or --quick")
    cfg["nfe"] = {k: getattr(args, f"{k}_nfe") or v for k, v in cfg["nfe"].items()}
    seeds = args.seeds or cfg["seeds"]
    per_class = args.per_class or cfg["per_class"]
    t0 = time.time()
    if args.jobs > 1:
        torch.set_num_threads(1)
    rows = [r for doc in earlier for r in doc["rows"]]
    rows += evaluate_all(ckpts, cfg["nfe"], seeds, per_class, args.batch_size, args.jobs)
    summary = summarise(rows)
    acc = acceptance(summary)
    timing: list[dict[str, Any]] = [t for doc in earlier for t in doc.get("width256", [])]
    if not args.no_timing:
        first = ckpts.get("teacher") or next(iter(ckpts.values()), None)
        guidance = sample_settings(load_checkpoint(first).config).cfg[0] if first else 1.5
        teacher_cfg = guidance if guidance != 1.0 else 1.5
        if args.timing_repeats:
            cfg["timing"] = {**cfg["timing"], "repeats": args.timing_repeats}
        timing = time_width256(cfg["timing"], sorted({r["sampling_steps"] for r in rows}), teacher_cfg)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "cpu") if Path("/proc/cpuinfo").is_file() else "cpu"
    meta = {"seeds": len(seeds), "images_per_seed": per_class * 10, "machine": f"{cpu}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads, {args.jobs} jobs", "loadavg": [round(x, 2) for x in os.getloadavg()],
            "timing": cfg["timing"], "checkpoints": {**{k: v for doc in earlier for k, v in
                                                         doc["meta"]["checkpoints"].items()}, **ckpts},
            "samplers": registry(), "reused": args.reuse,
            "seconds": round(time.time() - t0, 1),
            "command": " ".join(sys.argv)}
    results = {"meta": meta, "rows": rows, "summary": summary, "acceptance": acc, "width256": timing}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table(summary, timing, acc, meta))
    figure(summary, acc, out / "few_step.png")
    log(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'few_step.png'}")
    print(json.dumps({"acceptance": acc, "results": str(out / "results.json")}))

if __name__ == "__main__":
    main()
