"""A small digit classifier for offline quality checks on CPU.

Trained on scikit-learn's built-in 8x8 digits (pixel values 0..16 mapped to [-1, 1], the scale the
`pixels` tokenizer uses) by `scripts/train_digits_classifier.py` with a fixed seed: 80 % of the
1797 images (stratified split, random_state 0), one-pixel random shifts and light noise as
augmentation. Accuracy on the held-out 20 % (360 images) is stored in the weights file's
metadata (`test_accuracy`: 0.9972 for the shipped file, 359 of 360). Its 128-dim penultimate
features stand in for Inception's in `transdiff fid --features digits`, and `class_fidelity` is the share of generated
images it reads as the class they were conditioned on.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import TransDiffError

WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "digits_classifier.safetensors"  # transdiff_cli/weights
IMAGE_SIZE = 8
NUM_CLASSES = 10
FEATURE_DIM = 128


class DigitsNet(nn.Module):
    """conv 3x3 (32) -> conv 3x3 (64) -> max-pool 2 -> linear 128 (the features) -> linear 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (IMAGE_SIZE // 2) ** 2, FEATURE_DIM)
        self.dropout = nn.Dropout(0.3)
        self.fc2 = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) in [-1, 1] -> (B, 128) penultimate activations."""
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.features(x)))


def as_digit_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Anything image-like -> (B, 1, 8, 8) float32 in [-1, 1].
    Accepts float tensors (B, C, H, W) in [-1, 1], uint8 tensors (B, C, H, W) and uint8 numpy arrays
    (B, H, W, C) (the .npz convention); colour is averaged to grey, other sizes are resized
    (area-averaged when shrinking, bilinear when growing)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise TransDiffError(f"expected uint8 (N, H, W, C) image arrays, got {images.dtype} {images.shape}")
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    if images.dim() != 4:
        raise TransDiffError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
    x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        shrink = x.shape[-1] > IMAGE_SIZE
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area" if shrink else "bilinear",
                          **({} if shrink else {"align_corners": False}))
    return x.clamp(-1, 1)


class DigitsClassifier:
    """The trained network plus the input handling: call `.features`, `.logits`, `.predict`."""

    def __init__(self, net: DigitsNet, metadata: dict[str, str] | None = None, device: str | torch.device = "cpu"):
        self.net = net.to(device).eval()
        self.metadata = metadata or {}
        self.device = torch.device(device)

    @torch.no_grad()
    def _run(self, fn, images: torch.Tensor | np.ndarray, batch_size: int = 512) -> torch.Tensor:
        x = as_digit_images(images)
        return torch.cat([fn(x[i:i + batch_size].to(self.device)).float().cpu()
                          for i in range(0, x.shape[0], batch_size)]) if x.shape[0] else torch.zeros(0)

    def features(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self._run(self.net.features, images)

    def logits(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self._run(self.net, images)

    def predict(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.logits(images).argmax(dim=1)


@lru_cache(maxsize=4)
def _load(path: str, device: str) -> DigitsClassifier:
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise TransDiffError(f"digits classifier weights not found: {p} (make them with "
                             "`python scripts/train_digits_classifier.py`)")
    net = DigitsNet()
    net.load_state_dict(load_file(str(p)))
    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
    return DigitsClassifier(net, meta, device)


def load_digits_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DigitsClassifier:
    """The shipped classifier (or the weights at `path`), in eval mode; cached per (path, device)."""
    return _load(str(path or WEIGHTS), str(device))


def class_fidelity(images: torch.Tensor | np.ndarray, labels: Sequence[int] | torch.Tensor,
                   classifier: DigitsClassifier | None = None) -> float:
    """Share of `images` (e.g. (B, 1, 8, 8) in [-1, 1]) that the classifier reads as their label."""
    clf = classifier or load_digits_classifier()
    y = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
    pred = clf.predict(images)
    if pred.shape[0] != y.shape[0]:
        raise TransDiffError(f"{pred.shape[0]} images but {y.shape[0]} labels")
    if y.numel() and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise TransDiffError(f"digit labels must be 0-{NUM_CLASSES - 1}")
    return float((pred == y).float().mean()) if y.numel() else float("nan")


def digits_dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (1797, 1, 8, 8) in [-1, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0 * 2 - 1
    return x, torch.tensor(d.target, dtype=torch.long)
