"""Image features for the metrics: torch-fidelity's InceptionV3 from a LOCAL weights file, or the
small digits classifier; the images they read, and the Gaussian statistics and Fréchet distance of
their features."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import TransDiffError
from ..fs import file_sha256

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ENV = "TRANSDIFF_INCEPTION_WEIGHTS"
FEATURES = ("inception", "digits")
FID_LAYER = "2048"  # Inception's pool3 features, the standard FID/PR layer


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
            f"and pass `inception_weights` PATH (or set {INCEPTION_ENV}); nothing is downloaded here")
    return path


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
    raise TransDiffError(f"`features` must be one of {', '.join(FEATURES)}, not {features!r}")


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
