"""FID, Inception Score and precision/recall through torch-fidelity, offline.

Features come from torch-fidelity's own InceptionV3 (`inception-v3-compat`, the TF-FID port) built
from a LOCAL weights file, or from the small digits classifier (`--features digits`). The metrics
are torch-fidelity's functions applied to those features. A reference may be a folder or `.npz` of
images, or ADM-style statistics (`mu`, `sigma`): torch-fidelity's released `calculate_metrics` has
no `fid_statistics_file` argument (DESIGN §6), so the generated features' mean and covariance go
straight into its Fréchet distance.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .datasets import IMAGE_EXTENSIONS
from .errors import TransDiffError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ENV = "TRANSDIFF_INCEPTION_WEIGHTS"
FEATURES = ("inception", "digits")
FID_LAYER = "2048"  # Inception's pool3 features, the standard FID/PR layer
BUILTIN_DIGITS = "digits"  # --ref digits: scikit-learn's digits, no file needed


def default_inception_path() -> Path:
    """$TRANSDIFF_INCEPTION_WEIGHTS, else where torch-fidelity itself caches the file (torch hub)."""
    env = os.environ.get(INCEPTION_ENV)
    if env:
        return Path(env)
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def inception_weights_path(weights: str | Path | None = None) -> Path:
    """The local Inception weights file, or a one-line error naming the missing file and its URL."""
    path = Path(weights) if weights else default_inception_path()
    if not path.is_file():
        raise TransDiffError(
            f"Inception weights file not found: {path}. FID/IS need torch-fidelity's InceptionV3 "
            f"weights {INCEPTION_FILE}; download it where there is internet from {INCEPTION_URL} "
            f"and pass --inception-weights PATH (or set {INCEPTION_ENV}); nothing is downloaded here")
    return path


# --------------------------------------------------------------------------- inputs
@dataclass
class ImageSet:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray | None  # (N,) class of each image when known
    source: str


@dataclass
class Stats:
    mu: np.ndarray
    sigma: np.ndarray
    source: str
    images_path: Path | None = None  # the same .npz also holds reference images (ADM's arr_0)
    features: str | None = None  # the extractor's identity, in files written by --save-stats


def _label_from_name(name: str) -> int | None:
    m = re.search(r"_class(\d+)", name)  # `transdiff sample` names files 00012_class7.png
    return int(m.group(1)) if m else None


def load_image_folder(folder: Path) -> ImageSet:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and "steps" not in p.relative_to(folder).parts[:-1] and p.stem != "grid")
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
        from .latents import is_latent_folder

        if is_latent_folder(p):
            from .fid_reference import latent_folder_images

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
                raise TransDiffError(f"{p} holds statistics (mu, sigma), not images: use it as --ref")
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


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- feature extractors
class Extractor:
    """Images -> (pooled features for FID / PR, logits for IS)."""

    name = ""

    def identity(self) -> str:
        """Names the features exactly (network, weights, layer): the key of cached features."""
        raise NotImplementedError

    def __call__(self, images: np.ndarray, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _safe_check(path: Path) -> None:
    """Unpickle with the weights-only loader (memory-mapped: no need to read the 95 MB twice)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a pre-zip (legacy) file cannot be mapped
        torch.load(path, map_location="cpu", weights_only=True)


class InceptionExtractor(Extractor):
    name = "inception"

    def __init__(self, weights: str | Path | None = None, device: torch.device | str = "cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = inception_weights_path(weights)
        try:
            # torch-fidelity unpickles the file fully; read it the safe way first so a foreign
            # file cannot run code
            _safe_check(path)
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", [FID_LAYER, "logits_unbiased"],
                                                   feature_extractor_weights_path=str(path))
        except Exception as e:  # a torch.load / load_state_dict failure on a wrong or truncated file
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise TransDiffError(f"{path} is not torch-fidelity's InceptionV3 weights file: {msg}") from e
        self.device = torch.device(device)
        self.net.to(self.device)
        self.path = path

    def identity(self) -> str:
        size = type(self.net).INPUT_IMAGE_SIZE
        return f"inception-{file_sha256(self.path)[:16]}-{FID_LAYER}-{size}"

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        pools, logits = [], []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2)
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            pool, logit = self.net(x.contiguous().to(self.device))
            pools.append(pool.cpu().double())
            logits.append(logit.cpu().double())
        return torch.cat(pools), torch.cat(logits)


class DigitsExtractor(Extractor):
    name = "digits"

    def __init__(self, device: torch.device | str = "cpu"):
        from .classifier import load_digits_classifier

        self.clf = load_digits_classifier(device=device)

    def identity(self) -> str:
        from .classifier import WEIGHTS

        return f"digits-{file_sha256(WEIGHTS)[:16]}"

    def __call__(self, images: np.ndarray, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clf.features(images).double(), self.clf.logits(images).double()


def make_extractor(features: str, inception_weights: str | Path | None = None,
                   device: torch.device | str = "cpu") -> Extractor:
    if features == "inception":
        return InceptionExtractor(inception_weights, device)
    if features == "digits":
        return DigitsExtractor(device)
    raise TransDiffError(f"--features must be one of {', '.join(FEATURES)}, not {features!r}")


# --------------------------------------------------------------------------- metrics
def statistics(features: torch.Tensor) -> Stats:
    from torch_fidelity.metric_fid import fid_features_to_statistics

    if features.shape[0] < 2:
        raise TransDiffError("FID needs at least 2 images on each side")
    s = fid_features_to_statistics(features.double())
    return Stats(s["mu"], s["sigma"], "")


def frechet_distance(a: Stats, b: Stats) -> float:
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    if a.mu.shape != b.mu.shape:
        raise TransDiffError(f"statistics of different feature sizes: {a.mu.shape[0]} ({a.source or 'generated'}) "
                             f"vs {b.mu.shape[0]} ({b.source}); use statistics of the same features")
    one = {"mu": a.mu.astype(np.float64), "sigma": a.sigma.astype(np.float64)}
    two = {"mu": b.mu.astype(np.float64), "sigma": b.sigma.astype(np.float64)}
    return float(fid_statistics_to_metric(one, two, False)[KEY_METRIC_FID])


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
                                 f"these ({extractor.identity()}): use the same --features and weights")
        feats = None
        if prc:
            if ref.images_path is None:
                raise TransDiffError(f"--prc needs reference images, not statistics (mu, sigma) alone: "
                                     f"{ref.source} has no arr_0")
            from .fid_reference import cached_reference_features

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
            raise TransDiffError("--prc needs reference images, not statistics (mu, sigma)")
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
