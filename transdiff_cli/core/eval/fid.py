"""FID, Inception Score and precision/recall through torch-fidelity, offline.

Features come from torch-fidelity's own InceptionV3 (`inception-v3-compat`, the TF-FID port) built
from a LOCAL weights file, or from the small digits classifier (`--features digits`). The metrics
are torch-fidelity's functions applied to those features. A reference may be a folder or `.npz` of
images, or ADM-style statistics (`mu`, `sigma`): torch-fidelity's released `calculate_metrics` has
no `fid_statistics_file` argument (docs/architecture.md#known-pitfalls), so the generated features'
mean and covariance go straight into its Fréchet distance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.datasets import IMAGE_EXTENSIONS
from ..errors import TransDiffError
from ..sampling.outputs import ROUNDS
from .features import (
    Extractor,
    ImageSet,
    Stats,
    frechet_distance,
    statistics,
)
from .fid_reference import cached_reference_features, latent_folder_images

BUILTIN_DIGITS = "digits"  # --ref digits: scikit-learn's digits, no file needed






# --------------------------------------------------------------------------- inputs




def _label_from_name(name: str) -> int | None:
    m = re.search(r"_class(\d+)", name)  # `transdiff sample` names files 00012_class7.png
    return int(m.group(1)) if m else None


# `sample --save-rounds` strips (named steps/ before the rename) are not samples
STRIP_FOLDERS = {ROUNDS, "steps"}


def load_image_folder(folder: Path) -> ImageSet:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not STRIP_FOLDERS & set(p.relative_to(folder).parts[:-1]) and p.stem != "grid")
    if not files:
        raise TransDiffError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
    arrays = []
    for p in files:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise TransDiffError(f"images in {folder} differ in size ({', '.join(map(str, sorted(sizes)[:3]))}); "
                             "resize them to one size first")
    labels = [_label_from_name(p.name) for p in files]
    known = None if any(y is None for y in labels) else np.asarray(labels, dtype=np.int64)
    return ImageSet(np.stack(arrays), known, str(folder))


def builtin_digits() -> ImageSet:
    """scikit-learn's 1797 digits as 8x8 grey images: the reference for digits models."""
    from .classifier import digits_dataset

    x, y = digits_dataset()
    images = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return ImageSet(images, y.numpy(), BUILTIN_DIGITS)


def load_input(path: str | Path, allow_stats: bool = False) -> ImageSet | Stats:
    """A folder of images, an encode-latents folder (decoded), an `.npz` of images (`arr_0` uint8
    NHWC, optional `labels`), (with `allow_stats`) an `.npz` of statistics (`mu`, `sigma`, and in
    ADM's files also `arr_0`), or "digits" (the built-in digits)."""
    p = Path(path)
    if str(path) == BUILTIN_DIGITS and not p.exists():
        return builtin_digits()
    if not p.exists():
        raise TransDiffError(f"not found: {p}")
    if p.is_dir():
        from ..data.latents import is_latent_folder

        if is_latent_folder(p):
            return latent_folder_images(p)
        return load_image_folder(p)
    try:
        data = np.load(p)
    except (OSError, ValueError) as e:
        raise TransDiffError(f"{p} is neither an image folder nor a readable .npz: {e}") from e
    with data:
        keys = set(data.files)
        if {"mu", "sigma"} <= keys and (allow_stats or "arr_0" not in keys):
            if not allow_stats:
                raise TransDiffError(f"{p} holds statistics (mu, sigma), not images: use it as `ref`")
            # ADM's files also carry their reference images (arr_0): read later, only for PR
            return Stats(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), str(p),
                         p if "arr_0" in keys else None, str(data["features"]) if "features" in keys else None)
        if "arr_0" not in keys:
            raise TransDiffError(f"{p} has neither images (arr_0) nor statistics (mu, sigma): keys {sorted(keys)}")
        images = data["arr_0"]
        labels = data["labels"].astype(np.int64) if "labels" in keys else None
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise TransDiffError(f"{p}: arr_0 must be uint8 (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    return ImageSet(images, labels, str(p))




# --------------------------------------------------------------------------- feature extractors










# --------------------------------------------------------------------------- metrics




@dataclass
class Reference:
    """The reference side of the metrics, computed once and reused (sweeps, training evaluation):
    its statistics, and its features when precision/recall need them."""

    stats: Stats
    features: torch.Tensor | None
    source: str
    num_images: int | None = None


def prepare_reference(ref: ImageSet | Stats, extractor: Extractor, *, prc: bool = False, batch_size: int = 64,
                      cache_dir: str | Path | None = None) -> Reference:
    """Statistics come from the file when it has them (ADM's mu/sigma); precision/recall need
    features of reference images: of the images given, or of ADM's arr_0 (cached in `cache_dir`)."""
    if isinstance(ref, Stats):
        if ref.features is not None and ref.features != extractor.identity():
            raise TransDiffError(f"{ref.source} holds statistics of other features ({ref.features}) than "
                                 f"these ({extractor.identity()}): use the same `features` and weights")
        feats = None
        if prc:
            if ref.images_path is None:
                raise TransDiffError(f"`prc` needs reference images, not statistics (mu, sigma) alone: "
                                     f"{ref.source} has no arr_0")
            feats = cached_reference_features(ref.images_path, extractor, cache_dir, batch_size)
        return Reference(ref, feats, ref.source, None if feats is None else len(feats))
    feats, _ = extractor(ref.images, batch_size)
    stats = statistics(feats)
    stats.source = ref.source
    return Reference(stats, feats, ref.source, len(ref.images))


def generated_metrics(gen: ImageSet, ref: Reference, extractor: Extractor, *, isc: bool = True,
                      prc: bool = False, batch_size: int = 64) -> dict[str, Any]:
    """FID of `gen` against a prepared reference; IS from the same forward pass; precision/recall;
    with the digits features and known labels the class fidelity. Keys follow torch-fidelity's."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    feats, logits = extractor(gen.images, batch_size)
    out: dict[str, Any] = {"features": extractor.name, "generated": gen.source, "num_generated": len(gen.images),
                           "reference": ref.source}
    if ref.num_images is not None:
        out["num_reference"] = ref.num_images
    out[fid_key(extractor.name)] = frechet_distance(statistics(feats), ref.stats)
    if isc:
        out.update(isc_features_to_metric(logits, splits=min(10, len(logits))))
    if prc:
        if ref.features is None:
            raise TransDiffError("`prc` needs reference images, not statistics (mu, sigma)")
        out.update(prc_features_to_metric(feats.float(), ref.features.float(), prc_neighborhood=3,
                                          prc_batch_size=10000, save_cpu_ram=False, verbose=False))
    if extractor.name == "digits" and gen.labels is not None:
        pred = logits.argmax(dim=1).numpy()
        out["class_fidelity"] = float((pred == gen.labels).mean())
    return out


def fid_key(features: str) -> str:
    return "frechet_inception_distance" if features == "inception" else "frechet_distance"


def compute_metrics(gen: ImageSet, ref: ImageSet | Stats, extractor: Extractor, *, isc: bool = False,
                    prc: bool = False, batch_size: int = 64, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """FID of `gen` against `ref` (+ IS of `gen`, precision/recall, and with the digits features and
    known labels the class fidelity). Keys follow torch-fidelity's names."""
    reference = prepare_reference(ref, extractor, prc=prc, batch_size=batch_size, cache_dir=cache_dir)
    return generated_metrics(gen, reference, extractor, isc=isc, prc=prc, batch_size=batch_size)
