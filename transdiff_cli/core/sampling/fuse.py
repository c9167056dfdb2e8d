"""Feature fusion (paper §4.2.2): one condition built from the 1-step semantic features of two
classes, a `ratio` share of the slot positions taken from class A and the rest from class B, decoded
from the same noise as A and B alone (macaw + tiger -> a "tiger-striped macaw").

Only 1-step models: an MRAR model's later feature blocks depend on the images it sampled, so there
is no single per-class feature set to mix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TransDiffError
from ..model.config import ModelConfig
from ..model.transdiff import TransDiff
from ..plot_text import drawable
from .loop import decode, model_device_dtype
from .seeding import image_seed, initial_noise
from .settings import SampleSettings

PATTERNS = ("halves", "interleave", "random")


def fuse_mask(n: int, ratio: float = 0.5, pattern: str = "halves", seed: int = 0) -> torch.Tensor:
    """(n,) bool, True where the slot comes from class A; round(ratio * n) of them.
    halves: the first positions (0-127 of 256 at ratio 0.5, the paper's default); interleave: spread
    evenly (A, B, A, B, ... at 0.5); random: a seeded random subset."""
    if not 0.0 <= ratio <= 1.0:
        raise TransDiffError(f"`ratio` must be between 0 and 1, not {ratio}")
    k = round(ratio * n)
    if pattern == "halves":
        return torch.arange(n) < k
    if pattern == "interleave":
        # slot i is A's when the running share ceil((i+1) k / n) steps up: k slots, A first
        return torch.tensor([math.ceil((i + 1) * k / n) > math.ceil(i * k / n) for i in range(n)])
    if pattern == "random":
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]] = True
        return mask
    raise TransDiffError(f"`pattern` must be one of {', '.join(PATTERNS)}, not {pattern!r}")


def fuse_features(features_a: torch.Tensor, features_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Slots where `mask` is True from A, the others from B; (B, n, D) each."""
    return torch.where(mask.to(features_a.device)[None, :, None], features_a, features_b)


@dataclass
class Fused:
    latents: torch.Tensor  # (3, C, H, W): A, fused, B
    mask: torch.Tensor  # (n,) True = slot from A


@torch.no_grad()
def decode_features(model: TransDiff, features: torch.Tensor, settings: SampleSettings, seed: int) -> torch.Tensor:
    """Sample one latent from the given semantic features (1, n, D), with noise (initial and
    per-step) from `seed` alone, so different features decoded with one seed share all their noise."""
    device, dtype = model_device_dtype(model)
    noise = initial_noise(model.config, [0], seed).to(device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(image_seed(seed, 0, 1))
    return decode(model, model.condition(features), noise, settings.make_sampler(), cfg=settings.cfg[0],
                  generator=gen, interval=settings.cfg_interval)


def check_fuse(config: ModelConfig, ratio: float, pattern: str, seed: int) -> None:
    """The errors `fuse` would raise, before any work."""
    if config.mrar:
        raise TransDiffError("fuse needs a 1-step checkpoint: an MRAR model's features depend on the "
                             "images it sampled, so there is no per-class feature set to mix")
    fuse_mask(config.num_slots, ratio, pattern, seed)


@torch.no_grad()
def fuse(model: TransDiff, class_a: int, class_b: int, settings: SampleSettings, *, ratio: float = 0.5,
         pattern: str = "halves", seed: int = 0) -> Fused:
    """Latents for class A, the fused features, and class B, all from the same noise."""
    check_fuse(model.config, ratio, pattern, seed)
    device, _ = model_device_dtype(model)
    labels = torch.tensor([class_a, class_b], device=device)
    fa, fb = model.features(model.class_emb(labels)).split(1)
    mask = fuse_mask(fa.shape[1], ratio, pattern, seed)
    feats = [fa, fuse_features(fa, fb, mask), fb]
    latents = torch.cat([decode_features(model, f, settings, seed) for f in feats])
    return Fused(latents, mask)


def save_figure(images: torch.Tensor, titles: list[str], path: str | Path) -> Path:
    """A | fused | B side by side with titles (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.images import to_uint8

    arrays = to_uint8(images)
    fig, axes = plt.subplots(1, len(arrays), figsize=(3.2 * len(arrays), 3.6))
    for ax, arr, title in zip(axes, arrays, titles):
        gray = arr.shape[-1] == 1
        ax.imshow(arr[..., 0] if gray else arr, cmap="gray" if gray else None, vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(drawable(title), fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
