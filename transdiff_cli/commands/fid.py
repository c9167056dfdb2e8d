"""`transdiff fid`: FID / IS / precision-recall of generated images against a reference, offline;
reference statistics for any dataset (--save-stats); resumable generation and sampler sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..core.data.classes import resolve_classes
from ..core.device import resolve_device
from ..core.distributed import DistInfo, cleanup, init_distributed
from ..core.errors import TransDiffError
from ..core.eval.features import inception_weights_path, make_extractor
from ..core.eval.fid import BUILTIN_DIGITS, fid_key, generated_metrics, load_input, prepare_reference
from ..core.eval.fid_reference import save_reference_stats
from ..core.eval.sweep import parse_sweeps, point_name, point_options, sweep_points, write_sweep
from ..core.fs import ensure_dir
from ..core.io.hub import hub_file, is_hub_id
from ..core.sampling.curvature import with_profile
from ..core.sampling.generate import open_checkpoint, open_tokenizer
from ..core.sampling.generate_npz import generate_npz, generation_identity, parts_dir, shard_size_for
from ..core.sampling.options import SamplingOptions
from ..core.sampling.settings import checkpoint_settings
from . import _sampling_options as so
from ._common import console, cost_line, print_json, print_settings, user_errors
from .sample import help_text, progress_bar

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
        if dry_run:
            _dry_run(ckpt, gen, ref, out, features=features, inception_weights=inception_weights, weights=weights,
                     vae=vae, classes=classes, num_per_class=num_per_class, options=opts, precision=precision,
                     device=device, seed=seed, batch_size=batch_size)
            return
        if is_hub_id(ref):  # fetched (or found in the cache) before minutes of generation
            ref = str(hub_file(ref))
        if ref != BUILTIN_DIGITS and not Path(ref).exists():
            raise TransDiffError(f"--ref not found: {ref}")
        if save_stats is None:
            ensure_dir(out, "--out")  # a bad --out fails now, not after minutes of generation
        dev = resolve_device(device)
        info = init_distributed(dev)
        try:
            if features == "inception":  # fail before minutes of generation, on every rank
                inception_weights_path(inception_weights)
            extractor = make_extractor(features, inception_weights, dev) if info.is_main else None
            if save_stats is not None:
                if info.is_main:
                    done = save_reference_stats(load_input(ref), extractor, save_stats, with_images=with_images,
                                                batch_size=batch_size)
                    console.print(f"wrote {save_stats}: mu, sigma ({done['feature_dim']} {features} features of "
                                  f"{done['num_reference']} images)"
                                  + (f", arr_0 ({done['num_images_saved']} images)" if with_images else ""))
                return
            reference = None

            def metrics_of(images: Path) -> dict:
                nonlocal reference
                if reference is None:  # once, reused across a sweep
                    reference = prepare_reference(load_input(ref, allow_stats=True), extractor, prc=prc,
                                                  batch_size=batch_size, cache_dir=cache_dir)
                m = generated_metrics(load_input(images), reference, extractor, isc=isc, prc=prc,
                                      batch_size=batch_size)
                if features == "inception":
                    m["inception_weights"] = str(extractor.path)
                return m

            if ckpt is None:
                if info.is_main:
                    _finish(metrics_of(gen), out)
                return
            job = _Generation(ckpt, info, dev, vae=vae, classes=classes, num_per_class=num_per_class, seed=seed,
                              batch_size=batch_size, shard_size=shard_size, precision=precision, compile=compile,
                              weights=weights)
            if not axes:
                path = job.run(out / "generated.npz", opts)
                if info.is_main:
                    _finish({**metrics_of(path), "settings": job.last_settings, **job.last_cost}, out)
                return
            rows = []
            for point in sweep_points(axes):
                folder = out / point_name(point)
                if info.is_main:
                    console.print(point_name(point), style="bold")
                path = job.run(folder / "generated.npz", point_options(opts, point))
                if info.is_main:
                    m = {**metrics_of(path), "settings": job.last_settings, **job.last_cost}
                    (folder / "metrics.json").write_text(json.dumps(m, indent=1))
                    rows.append({**{k: v for k, v in m.items() if isinstance(v, float | int)}, **point})
            if info.is_main:
                written = write_sweep(out, axes, rows, fid_key(features))
                console.print(Path(written["table"]).read_text())
                console.print(f"wrote {written['json']}, {written['table']}, {written['plot']}")
        finally:
            cleanup(info)


class _Generation:
    """The checkpoint opened once; `run` draws one setting's images (resumably) into an .npz."""

    def __init__(self, ckpt: Path, info: DistInfo, dev, *, vae, classes, num_per_class, seed, batch_size,
                 shard_size, precision, compile, weights):
        self.ck = open_checkpoint(ckpt, weights=weights, device=dev, precision=precision, compile=compile)
        picked = resolve_classes(classes, self.ck.config.num_classes, self.ck.class_names)
        self.labels = [y for y in picked for _ in range(num_per_class)]
        self.num_classes, self.num_per_class = len(picked), num_per_class
        self.tokenizer = open_tokenizer(self.ck, vae, dev)
        self.info, self.dev, self.seed = info, dev, seed
        self.batch_size, self.precision, self.compile, self.weights = batch_size, precision, compile, weights
        self.shard_size = shard_size_for(batch_size, shard_size) if shard_size else shard_size_for(batch_size)
        self.last_settings: dict = {}
        self.last_cost: dict = {}

    def run(self, path: Path, options: SamplingOptions) -> Path:
        settings = with_profile(self.ck.model, checkpoint_settings(self.ck, options))
        self.last_settings = settings.to_dict()
        cost = settings.cost()  # NFE and rows per image, and the rows of the whole run
        self.last_cost = {"nfe": cost["nfe"], "rows_per_image": cost["rows"], "rows": cost["rows"] * len(self.labels)}
        identity = generation_identity(self.ck, weights=self.weights, settings=settings, seed=self.seed,
                                       labels=self.labels, batch_size=self.batch_size, shard_size=self.shard_size,
                                       tokenizer=self.tokenizer, precision=self.precision, compile=self.compile,
                                       device=self.dev)
        if self.info.is_main:
            print_settings(settings)
            console.print(f"generating {len(self.labels)} images ({self.num_per_class} per class, "
                          f"{self.num_classes} classes) on {self.info.world_size} process(es): {settings.mode}, "
                          f"cfg {settings.cfg}, {settings.sampling_steps} {settings.sampler} steps, "
                          f"seed {self.seed}; {cost_line(settings, len(self.labels))}")
        with progress_bar() as bar:
            n, s, w = len(self.labels), self.shard_size, self.info.world_size
            mine = sum(min(n, (k + 1) * s) - k * s for k in range(self.info.rank, -(-n // s), w))
            task = bar.add_task(f"rank {self.info.rank}", total=mine)
            try:
                generate_npz(self.ck.model, self.tokenizer, self.labels, settings, path, identity, seed=self.seed,
                             batch_size=self.batch_size, info=self.info, on_batch=lambda n: bar.advance(task, n))
            except KeyboardInterrupt:
                if self.info.is_main:
                    console.print(f"finished shards are kept in {parts_dir(path)}: run the same "
                                  "command again to continue", style="yellow")
                raise
        if self.info.is_main:
            console.print(f"wrote {path}")
        return path


def _finish(metrics: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    _print(metrics)
    console.print(f"wrote {out / 'metrics.json'}")


def _dry_run(ckpt, gen, ref, out: Path, *, features, inception_weights, **options) -> None:
    """One JSON object: what `fid` would generate (with --ckpt) and measure; nothing is run."""
    from ..core.sampling.dry_run import generation_plan

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
    Console(markup=False).print(table)
