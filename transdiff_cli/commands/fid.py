"""`transdiff fid`: FID / IS / precision-recall of generated images against a reference, offline."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..core.classes import resolve_classes
from ..core.device import resolve_device
from ..core.distributed import DistInfo, barrier, cleanup, init_distributed
from ..core.errors import TransDiffError
from ..core.fid import compute_metrics, inception_weights_path, load_input, make_extractor
from ..core.generate import (
    checkpoint_settings,
    generate_arrays,
    merge_shards,
    open_checkpoint,
    open_tokenizer,
    write_npz,
    write_shard,
)
from ..core.hub import hub_file, is_hub_id
from ._common import SamplingPrecision, console, print_json, print_settings, user_errors
from .sample import help_text, progress_bar

HELP = """FID (and with --isc / --prc the Inception Score and precision/recall) of generated images
against a reference, through torch-fidelity, with no download.

--gen is a folder of images or an .npz (arr_0 uint8 NHWC); or --ckpt generates --num-per-class
images of every class first (50, as the paper: 50,000 for ImageNet), split across the processes
under torchrun and saved as OUT/generated.npz. --ref is a folder, an .npz of images, ADM statistics
(an .npz with mu and sigma, e.g. VIRTUAL_imagenet256_labeled.npz), or "digits" (the built-in data).
Inception weights are read from a local file in torch-fidelity's format
(weights-inception-2015-12-05-6726825d.pth). --features digits uses the small built-in digit
classifier instead (CPU, offline) and also reports class fidelity. Writes OUT/metrics.json.
With --ckpt, a published B/L/H file is sampled with the authors' evaluation settings for its size;
the settings and their provenance are printed first, and --dry-run prints the whole resolved run as
JSON without generating or writing anything.

Example:

    transdiff fid --gen out/ --ref stats.npz --inception-weights i.pth

    transdiff fid --ckpt runs/digits --ref digits --features digits
"""


def register(app: typer.Typer) -> None:
    @app.command("fid", help=help_text(HELP))
    @user_errors
    def fid_cmd(
        ref: str = typer.Option(..., "--ref", help="reference: image folder, .npz of images, "
                                "stats .npz (mu, sigma), 'digits', or a Hub file hf://OWNER/REPO/PATH"),
        gen: Path = typer.Option(None, "--gen", help="generated images: a folder or an .npz"),
        ckpt: Path = typer.Option(None, "--ckpt", help="generate the images from this checkpoint "
                                   "first (a path or hf://OWNER/REPO/FILE[@REV])"),
        inception_weights: Path = typer.Option(None, "--inception-weights",
                                               help="torch-fidelity's InceptionV3 weights file (local)"),
        isc: bool = typer.Option(False, "--isc", help="also the Inception Score"),
        prc: bool = typer.Option(False, "--prc", help="also precision / recall (needs reference images)"),
        features: str = typer.Option("inception", "--features", help="inception or digits"),
        num_per_class: int = typer.Option(50, "--num-per-class", min=1, help="--ckpt: images per class"),
        classes: list[str] = typer.Option(None, "--class", "-c", help="--ckpt: classes (default: all)"),
        vae: str = typer.Option(None, "--vae", help="--ckpt: tokenizer, e.g. kl16:PATH"),
        mode: str = typer.Option(None, "--mode", help="--ckpt: 1step or mrar"),
        steps: int = typer.Option(None, "--steps", help="--ckpt: MRAR steps"),
        sampling_steps: int = typer.Option(None, "--sampling-steps", help="--ckpt: sampler steps"),
        cfg: str = typer.Option(None, "--cfg", help="--ckpt: guidance scale (or one per MRAR step)"),
        scale_0: float = typer.Option(None, "--scale-0"),
        scale_1: float = typer.Option(None, "--scale-1"),
        sampler: str = typer.Option(None, "--sampler", help="em (default) or ode"),
        seed: int = typer.Option(0, "--seed"),
        batch_size: int = typer.Option(64, "--batch-size", min=1),
        out: Path = typer.Option(Path("fid"), "--out", "-o", help="folder for metrics.json (and generated.npz)"),
        precision: SamplingPrecision = "auto",
        compile: bool = typer.Option(False, "--compile"),
        device: str = typer.Option(None, "--device"),
        weights: str = typer.Option("ema", "--weights", help="--ckpt: ema or model"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved run as JSON; write nothing"),
    ) -> None:
        if (gen is None) == (ckpt is None):
            raise TransDiffError("give exactly one of --gen DIR|NPZ and --ckpt PATH")
        if dry_run:
            _dry_run(ckpt, gen, ref, out, features=features, inception_weights=inception_weights, weights=weights,
                     vae=vae, classes=classes, num_per_class=num_per_class, mode=mode, steps=steps,
                     sampling_steps=sampling_steps, cfg=cfg, scale_0=scale_0, scale_1=scale_1, sampler=sampler,
                     precision=precision, device=device, seed=seed, batch_size=batch_size)
            return
        if is_hub_id(ref):  # fetched (or found in the cache) before minutes of generation
            ref = str(hub_file(ref))
        dev = resolve_device(device)
        info = init_distributed(dev)
        try:
            if features == "inception":  # fail before minutes of generation, on every rank
                inception_weights_path(inception_weights)
            extractor = make_extractor(features, inception_weights, dev) if info.is_main else None
            if ckpt is not None:
                gen = _generate(ckpt, info, dev, out, vae=vae, classes=classes, num_per_class=num_per_class,
                                mode=mode, steps=steps, sampling_steps=sampling_steps, cfg=cfg, scale_0=scale_0,
                                scale_1=scale_1, sampler=sampler, seed=seed, batch_size=batch_size,
                                precision=precision, compile=compile, weights=weights)
            if not info.is_main:
                return
            generated = load_input(gen)
            reference = load_input(ref, allow_stats=True)
            metrics = compute_metrics(generated, reference, extractor, isc=isc, prc=prc, batch_size=batch_size)
            if features == "inception":
                metrics["inception_weights"] = str(extractor.path)
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
            _print(metrics)
            console.print(f"wrote {out / 'metrics.json'}")
        finally:
            cleanup(info)


def _generate(ckpt: Path, info: DistInfo, dev, out: Path, *, vae, classes, num_per_class, mode, steps,
              sampling_steps, cfg, scale_0, scale_1, sampler, seed, batch_size, precision, compile,
              weights) -> Path:
    """Every rank draws images rank, rank + W, ...; rank 0 merges them into OUT/generated.npz."""
    ck = open_checkpoint(ckpt, weights=weights, device=dev, precision=precision, compile=compile)
    mc = ck.config
    settings = checkpoint_settings(ck, mode=mode, steps=steps, sampling_steps=sampling_steps, cfg=cfg,
                                   scale_0=scale_0, scale_1=scale_1, sampler=sampler)
    picked = resolve_classes(classes, mc.num_classes, ck.class_names)
    labels = [y for y in picked for _ in range(num_per_class)]
    tokenizer = open_tokenizer(ck, vae, dev)
    if info.is_main:
        print_settings(settings)
    mine = list(range(info.rank, len(labels), info.world_size))
    path = out / "generated.npz"
    if info.is_main:
        console.print(f"generating {len(labels)} images ({num_per_class} per class, {len(picked)} classes) "
                      f"on {info.world_size} process(es): {settings.mode}, cfg {settings.cfg}, "
                      f"{settings.sampling_steps} {settings.sampler} steps")
    with progress_bar() as bar:
        task = bar.add_task(f"rank {info.rank}", total=len(mine))
        images = generate_arrays(ck.model, tokenizer, [labels[i] for i in mine], settings, seed=seed,
                                 batch_size=batch_size, indices=mine, on_batch=lambda n: bar.advance(task, n))
    if info.enabled:
        write_shard(path, info.rank, images, mine)
        barrier(info)
        if info.is_main:
            merge_shards(path, info.world_size, labels)
    else:
        write_npz(path, images, labels)
    if info.is_main:
        console.print(f"wrote {path}")
    return path


def _dry_run(ckpt, gen, ref, out: Path, *, features, inception_weights, **options) -> None:
    """One JSON object: what `fid` would generate (with --ckpt) and measure; nothing is run."""
    from ..core.dry_run import generation_plan

    doc: dict = {"command": "fid", "ref": ref, "features": features}
    if is_hub_id(ref):
        doc["ref_local_path"] = str(hub_file(ref))
    if features == "inception":
        doc["inception_weights"] = str(inception_weights_path(inception_weights))
    if ckpt is not None:
        plan = generation_plan(ckpt, **options)
        doc.update(plan, generated=str(out / "generated.npz"))
    else:
        doc["gen"] = str(gen)
    doc["outputs"] = {"metrics": str(out / "metrics.json"),
                      "generated": str(out / "generated.npz") if ckpt is not None else None}
    print_json(doc)


def _print(metrics: dict) -> None:
    from rich.console import Console

    table = Table(title=f"{metrics['generated']} vs {metrics['reference']} ({metrics['features']} features)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
        elif isinstance(value, int):
            table.add_row(key, str(value))
    Console().print(table)
