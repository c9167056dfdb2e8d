"""`fid`'s work below the command, shaped like MAR's `engine_mar.evaluate`: `evaluate` draws a
checkpoint's images when asked and measures them against a reference; `evaluate_sweep` does that for
every setting of a sampler sweep. Every process of torchrun draws its share of the shards of one
resumable `.npz` (`core/sampling/generate_npz.py`); rank 0 measures and writes `metrics.json`. The
reference's features are prepared once and reused by every setting of a sweep. Messages and progress
go through a `Reporter` (docs/architecture.md#layers)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.classes import resolve_classes
from ..device import resolve_device
from ..distributed import DistInfo, cleanup, init_distributed
from ..errors import TransDiffError
from ..fs import write_text_atomic
from ..io.hub import hub_file, is_hub_id
from ..reporting import Reporter
from ..sampling.curvature import with_profile
from ..sampling.eval_settings import cost_line, settings_block
from ..sampling.generate_npz import (
    SHARD_IMAGES,
    generate_npz,
    generation_identity,
    parts_dir,
    rank_images,
    shard_size_for,
)
from ..sampling.inference import open_checkpoint, open_tokenizer
from ..sampling.options import SamplingOptions
from ..sampling.settings import checkpoint_settings
from .features import Extractor, inception_weights_path, make_extractor
from .fid import BUILTIN_DIGITS, Reference, fid_key, generated_metrics, load_input, prepare_reference
from .fid_reference import save_reference_stats
from .sweep import point_name, point_options, sweep_points, write_sweep

GENERATED = "generated.npz"
METRICS = "metrics.json"
Session = tuple[DistInfo, torch.device, Extractor | None]  # the process group, the device, rank 0's extractor


@dataclass(frozen=True)
class Measurement:
    """What images are measured against (`ref`: a folder, an encode-latents folder, an .npz, ADM's
    reference file or "digits") and how (`features` inception or digits, IS, precision/recall)."""

    ref: str | Path
    features: str = "inception"
    inception_weights: str | Path | None = None
    isc: bool = True
    prc: bool = False
    batch_size: int = 64
    cache_dir: str | Path | None = None


@dataclass(frozen=True)
class Generation:
    """Which images to draw: `num_per_class` of each of `classes` (default all) from `ckpt`, in
    resumable shards of about `shard_size` images (whole batches)."""

    ckpt: str | Path | None
    vae: str | None = None
    classes: Sequence[str] | None = None
    num_per_class: int = 50
    seed: int = 0
    batch_size: int = 64
    shard_size: int | None = None
    precision: str = "auto"
    compile: bool = False
    weights: str = "ema"


def reference_path(ref: str | Path) -> str:
    """`ref` as a local path: a Hub file is fetched (or found in the cache) before minutes of generation."""
    ref = str(hub_file(ref)) if is_hub_id(str(ref)) else str(ref)
    if ref != BUILTIN_DIGITS and not Path(ref).exists():
        raise TransDiffError(f"`ref` not found: {ref}")
    return ref


def evaluate(measurement: Measurement, out: str | Path, *, gen: str | Path | None = None,
             generation: Generation | None = None, options: SamplingOptions | None = None,
             device: str | None = None, reporter: Reporter | None = None) -> dict[str, Any] | None:
    """FID (IS, precision/recall) of the images `gen` (a folder or an .npz) or, with `generation`,
    of images drawn first into OUT/generated.npz (resuming from finished shards; under torchrun every
    process draws its share). Rank 0 writes OUT/metrics.json and returns the metrics, with the
    sampling settings and NFE of drawn images; the other ranks return None."""
    if (gen is None) == (generation is None):
        raise ValueError("give exactly one of `gen` (images) and `generation` (a checkpoint to draw them from)")
    out = Path(out)
    with _session(measurement, device) as (info, dev, extractor):
        record: dict[str, Any] = {}
        if generation is not None:
            drawer = _Drawer(generation, info, dev, reporter or Reporter())
            gen, record = drawer.draw(out / GENERATED, options or SamplingOptions())
        if not info.is_main:
            return None
        result = {**_Metrics(measurement, extractor)(gen), **record}
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / METRICS, json.dumps(result, indent=1))
        return result


def evaluate_sweep(measurement: Measurement, generation: Generation, out: str | Path,
                   axes: list[tuple[str, list[float | int]]], options: SamplingOptions | None = None, *,
                   device: str | None = None, reporter: Reporter | None = None) -> dict[str, Path] | None:
    """`evaluate` for every point of `axes` (`sweep.parse_sweeps`): OUT/<point>/generated.npz and
    metrics.json, then OUT/sweep.json, sweep.md and sweep.png (their paths are returned on rank 0)."""
    out, reporter = Path(out), reporter or Reporter()
    with _session(measurement, device) as (info, dev, extractor):
        metrics = _Metrics(measurement, extractor)
        drawer = _Drawer(generation, info, dev, reporter)  # the checkpoint is opened once for every point
        rows = []
        for point in sweep_points(axes):
            folder = out / point_name(point)
            if info.is_main:
                reporter.message(point_name(point))
            path, record = drawer.draw(folder / GENERATED, point_options(options or SamplingOptions(), point))
            if info.is_main:
                m = {**metrics(path), **record}
                write_text_atomic(folder / METRICS, json.dumps(m, indent=1))
                rows.append({**{k: v for k, v in m.items() if isinstance(v, float | int)}, **point})
        return write_sweep(out, axes, rows, fid_key(measurement.features)) if info.is_main else None


def write_stats(measurement: Measurement, path: str | Path, *, with_images: int | None = None,
               device: str | None = None) -> dict[str, Any] | None:
    """The reference's mu and sigma (and `with_images` of its images as arr_0) into `path`, ADM's
    layout; rank 0 returns what it wrote, the other ranks None."""
    with _session(measurement, device) as (info, _, extractor):
        if not info.is_main:
            return None
        return save_reference_stats(load_input(reference_path(measurement.ref)), extractor, path,
                                    with_images=with_images, batch_size=measurement.batch_size)


def plan(measurement: Measurement, out: str | Path, *, gen: str | Path | None = None,
         generation: Generation | None = None, options: SamplingOptions | None = None,
         device: str | None = None) -> dict[str, Any]:
    """What `evaluate` would draw and measure, resolved without loading weights or writing anything."""
    from ..sampling.dry_run import generation_plan

    out, ref = Path(out), measurement.ref
    doc: dict[str, Any] = {"command": "fid", "ref": ref, "features": measurement.features}
    if is_hub_id(str(ref)):
        doc["ref_local_path"] = str(hub_file(ref))
    if measurement.features == "inception":
        doc["inception_weights"] = str(inception_weights_path(measurement.inception_weights))
    if generation is not None:
        g = generation
        doc.update(generation_plan(g.ckpt, options, weights=g.weights, vae=g.vae, classes=g.classes,
                                   num_per_class=g.num_per_class, precision=g.precision, device=device, seed=g.seed,
                                   batch_size=g.batch_size), generated=str(out / GENERATED))
    else:
        doc["gen"] = str(gen)
    doc["outputs"] = {"metrics": str(out / METRICS),
                      "generated": str(out / GENERATED) if generation is not None else None}
    return doc


@contextlib.contextmanager
def _session(measurement: Measurement, device: str | None) -> Iterator[Session]:
    """The device, the process group (under torchrun) and, on rank 0, the feature extractor."""
    dev = resolve_device(device)
    info = init_distributed(dev)
    try:
        if measurement.features == "inception":  # fail before minutes of generation, on every rank
            inception_weights_path(measurement.inception_weights)
        extractor = make_extractor(measurement.features, measurement.inception_weights, dev) if info.is_main else None
        yield info, dev, extractor
    finally:
        cleanup(info)


class _Metrics:
    """The metrics of image sets against one reference, whose features are prepared on first use."""

    def __init__(self, measurement: Measurement, extractor: Extractor | None) -> None:
        self.m, self.extractor = measurement, extractor
        self.reference: Reference | None = None

    def __call__(self, images: str | Path) -> dict[str, Any]:
        m = self.m
        if self.reference is None:
            ref = load_input(reference_path(m.ref), allow_stats=True)
            self.reference = prepare_reference(ref, self.extractor, prc=m.prc, batch_size=m.batch_size,
                                               cache_dir=m.cache_dir)
        out = generated_metrics(load_input(images), self.reference, self.extractor, isc=m.isc, prc=m.prc,
                                batch_size=m.batch_size)
        if m.features == "inception":
            out["inception_weights"] = str(self.extractor.path)
        return out


class _Drawer:
    """The checkpoint opened once (on every rank); `draw` generates one setting's images into an .npz."""

    def __init__(self, g: Generation, info: DistInfo, device: torch.device, reporter: Reporter) -> None:
        self.g, self.info, self.device, self.reporter = g, info, device, reporter
        self.ck = open_checkpoint(g.ckpt, weights=g.weights, device=device, precision=g.precision, compile=g.compile)
        picked = resolve_classes(g.classes, self.ck.config.num_classes, self.ck.class_names)
        self.num_classes = len(picked)
        self.labels = [y for y in picked for _ in range(g.num_per_class)]
        self.tokenizer = open_tokenizer(self.ck, g.vae, device)
        self.shard_size = shard_size_for(g.batch_size, g.shard_size or SHARD_IMAGES)

    def draw(self, path: Path, options: SamplingOptions) -> tuple[Path, dict[str, Any]]:
        """The .npz of one setting (resumed, or found finished) and its record for metrics.json: the
        settings, NFE and network rows per image, and the rows of the whole run."""
        g, info, n = self.g, self.info, len(self.labels)
        settings = with_profile(self.ck.model, checkpoint_settings(self.ck, options))
        cost = settings.cost()
        record = {"settings": settings.to_dict(), "nfe": cost["nfe"], "rows_per_image": cost["rows"],
                  "rows": cost["rows"] * n}
        identity = generation_identity(self.ck, weights=g.weights, settings=settings, seed=g.seed, labels=self.labels,
                                       batch_size=g.batch_size, shard_size=self.shard_size, tokenizer=self.tokenizer,
                                       precision=g.precision, compile=g.compile, device=self.device)
        if info.is_main:
            for line in settings_block(settings):
                self.reporter.message(line)
            self.reporter.message(f"generating {n} images ({g.num_per_class} per class, {self.num_classes} classes) "
                                  f"on {info.world_size} process(es): {settings.mode}, cfg {settings.cfg}, "
                                  f"{settings.sampling_steps} {settings.sampler} steps, seed {g.seed}; "
                                  f"{cost_line(settings, n)}")
        with self.reporter.progress(f"rank {info.rank}", rank_images(n, self.shard_size, info), unit="img/s") as bar:
            done = 0

            def advance(k: int) -> None:
                nonlocal done
                done += k
                bar(done)

            try:
                generate_npz(self.ck.model, self.tokenizer, self.labels, settings, path, identity, seed=g.seed,
                             batch_size=g.batch_size, info=info, on_batch=advance)
            except KeyboardInterrupt:
                if info.is_main:
                    self.reporter.message(f"finished shards are kept in {parts_dir(path)}: run the same "
                                          "command again to continue")
                raise
        if info.is_main:
            self.reporter.message(f"wrote {path}")
        return path, record
