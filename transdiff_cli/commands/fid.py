"""`transdiff fid`: FID / IS / precision-recall of generated images against a reference, offline;
reference statistics for any dataset (--save-stats); resumable generation and sampler sweeps.
The work is done by `core/eval/engine.py`; this module reads the options and prints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..core.errors import TransDiffError
from ..core.eval.engine import Generation, Measurement, evaluate, evaluate_sweep, plan, reference_path, write_stats
from ..core.eval.sweep import parse_sweeps
from ..core.fs import ensure_dir
from . import _sampling_options as so
from ._common import RichReporter, console, help_text, print_json, user_errors

HELP = """FID, Inception Score (off with --no-isc) and with --prc precision/recall of generated
images against a reference, through torch-fidelity, with no download.

--gen is a folder of images or an .npz (arr_0 uint8 NHWC); or --ckpt generates --num-per-class
images of every class first (50, as the paper: 50,000 for ImageNet), split across the processes
under torchrun, into OUT/generated.npz. Finished shards are kept as it goes: rerunning the same
command continues an interrupted generation (shards of another checkpoint or other settings are
refused). --ref is a folder, an encode-latents folder, an .npz of images, ADM's reference file
(mu, sigma and arr_0, e.g. VIRTUAL_imagenet256_labeled.npz: FID from mu/sigma, precision/recall
from arr_0's features, cached in --cache-dir), or "digits" (the built-in data). Inception weights
are read from a local file in torch-fidelity's format (weights-inception-2015-12-05-6726825d.pth).
--features digits uses the small built-in digit classifier instead (CPU, offline) and also reports
class fidelity. Writes OUT/metrics.json.

--save-stats OUT.npz writes the reference's mu and sigma (and with --with-images N a batch of N
of its images as arr_0): ADM's layout, for any dataset. --sweep AXIS=V1,V2 (cfg, cfg_interval as
LO:HI, sampling_steps, nfe, sampler, or any sampler parameter: scale_0, scale_1, grid, shift; twice
for a grid) evaluates every setting and writes OUT/sweep.json, sweep.md and sweep.png, with each
point's NFE (network evaluations per image, a guided pair counted once) and rows per image.

With --ckpt, a published B/L/H file is sampled with the authors' evaluation settings for its size;
the settings and their provenance are printed first, and --dry-run prints the whole resolved run as
JSON without generating or writing anything.

Example:

    transdiff fid --gen out/ --ref VIRTUAL_imagenet256_labeled.npz --inception-weights i.pth --prc

    transdiff fid --ckpt runs/digits-tiny --ref digits --features digits --sweep cfg=1,2,3

    transdiff fid --save-stats digits_stats.npz --ref digits --features digits --with-images 500
"""


def register(app: typer.Typer) -> None:
    @app.command("fid", help=help_text(HELP))
    @user_errors
    def fid_cmd(
        ref: str = typer.Option(..., "--ref", help="reference: image folder, encode-latents folder, .npz of "
                                "images, ADM .npz (mu, sigma, arr_0), 'digits', or a Hub file hf://OWNER/REPO/PATH"),
        gen: Path = typer.Option(None, "--gen", help="generated images: a folder or an .npz"),
        ckpt: Path = typer.Option(None, "--ckpt", help="generate the images from this checkpoint "
                                   "first (a path or hf://OWNER/REPO/FILE[@REV])"),
        inception_weights: Path = typer.Option(None, "--inception-weights",
                                               help="torch-fidelity's InceptionV3 weights file (local)"),
        isc: bool = typer.Option(True, "--isc/--no-isc", help="the Inception Score (same forward pass)"),
        prc: bool = typer.Option(False, "--prc", help="also precision / recall (needs reference images)"),
        features: str = typer.Option("inception", "--features", help="inception or digits"),
        cache_dir: Path = typer.Option(None, "--cache-dir", help="cache of reference features "
                                       "(default $TRANSDIFF_CACHE_DIR or ~/.cache/transdiff)"),
        save_stats: Path = typer.Option(None, "--save-stats", help="write --ref's mu/sigma to this .npz "
                                        "(ADM's layout) and stop"),
        with_images: int = typer.Option(None, "--with-images", min=1,
                                        help="--save-stats: also store N reference images as arr_0"),
        sweep: list[str] = typer.Option(None, "--sweep", help="--ckpt: AXIS=V1,V2,... over cfg, cfg_interval, "
                                        "sampling_steps, nfe, sampler or a sampler parameter; twice for a grid"),
        num_per_class: int = typer.Option(50, "--num-per-class", min=1, help="--ckpt: images per class"),
        classes: list[str] = typer.Option(None, "--class", "-c", help="--ckpt: classes (default: all)"),
        vae: so.Vae = None,
        mode: so.Mode = None,
        rounds: so.Rounds = None,
        sampling_steps: so.SamplingSteps = None,
        cfg: so.Cfg = None,
        cfg_interval: so.CfgInterval = None,
        scale_0: so.Scale0 = None,
        scale_1: so.Scale1 = None,
        sampler: so.Sampler = None,
        sampler_param: so.SamplerParam = None,
        seed: so.Seed = 0,
        batch_size: int = typer.Option(64, "--batch-size", min=1),
        shard_size: int = typer.Option(None, "--shard-size", min=1, help="--ckpt: images per resumable "
                                       "shard (rounded up to whole batches; default about 1024)"),
        out: Path = typer.Option(Path("fid"), "--out", "-o", help="folder for metrics.json (and generated.npz)"),
        precision: so.Precision = "auto",
        compile: so.Compile = False,
        device: so.Device = None,
        weights: so.Weights = "ema",
        dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved run as JSON; write nothing"),
    ) -> None:
        if save_stats is None and (gen is None) == (ckpt is None):
            raise TransDiffError("give exactly one of --gen DIR|NPZ and --ckpt PATH (or --save-stats OUT.npz)")
        if save_stats is not None and (gen is not None or ckpt is not None or sweep):
            raise TransDiffError("--save-stats writes the statistics of --ref alone: drop --gen/--ckpt/--sweep")
        if with_images is not None and save_stats is None:
            raise TransDiffError("--with-images goes with --save-stats")
        axes = parse_sweeps(sweep)
        opts = so.options(mode=mode, rounds=rounds, sampling_steps=sampling_steps, cfg=cfg, cfg_interval=cfg_interval,
                          scale_0=scale_0, scale_1=scale_1, sampler=sampler, sampler_param=sampler_param)
        if axes and ckpt is None:
            raise TransDiffError("--sweep needs --ckpt (it generates images for every setting)")
        measurement = Measurement(ref, features=features, inception_weights=inception_weights, isc=isc, prc=prc,
                                  batch_size=batch_size, cache_dir=cache_dir)
        generation = None if ckpt is None else Generation(
            ckpt, vae=vae, classes=classes, num_per_class=num_per_class, seed=seed, batch_size=batch_size,
            shard_size=shard_size, precision=precision, compile=compile, weights=weights)
        if dry_run:
            print_json(plan(measurement, out, gen=gen, generation=generation, options=opts, device=device))
            return
        measurement = replace(measurement, ref=reference_path(ref))  # a Hub file fetched before the work
        if save_stats is not None:
            done = write_stats(measurement, save_stats, with_images=with_images, device=device)
            if done is not None:
                console.print(f"wrote {save_stats}: mu, sigma ({done['feature_dim']} {features} features of "
                              f"{done['num_reference']} images)"
                              + (f", arr_0 ({done['num_images_saved']} images)" if with_images else ""))
            return
        ensure_dir(out, "--out")  # a bad --out fails now, not after minutes of generation
        reporter = RichReporter(transient=True)
        if axes:
            written = evaluate_sweep(measurement, generation, out, axes, opts, device=device, reporter=reporter)
            if written is not None:
                console.print(Path(written["table"]).read_text())
                console.print(f"wrote {written['json']}, {written['table']}, {written['plot']}")
            return
        metrics = evaluate(measurement, out, gen=gen, generation=generation, options=opts, device=device,
                           reporter=reporter)
        if metrics is not None:
            _print(metrics)
            console.print(f"wrote {out / 'metrics.json'}")


def _print(metrics: dict) -> None:
    table = Table(title=f"{metrics['generated']} vs {metrics['reference']} ({metrics['features']} features)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
        elif isinstance(value, int):
            table.add_row(key, str(value))
    Console(markup=False).print(table)
