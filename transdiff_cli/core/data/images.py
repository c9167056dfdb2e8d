"""Images on disk: [-1, 1] tensors <-> uint8 PNGs, and grids of them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8 (C = 1 or 3)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def from_uint8(arrays: np.ndarray) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float in [-1, 1]; `to_uint8` gives the same bytes back."""
    return torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, C, H, W) in [-1, 1] -> PIL images ("L" or "RGB"), exactly the pixels `save_pngs` writes."""
    return [_pil(arr) for arr in to_uint8(images)]


def make_grid_tv(*args, **kwargs) -> torch.Tensor:
    # imported on use: `import torchvision` costs ~3 s (its model zoo), paid by every CLI call otherwise
    from torchvision.utils import make_grid as tv_make_grid

    return tv_make_grid(*args, **kwargs)


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2,
              upscale: int | None = None) -> Image.Image:
    """A grid image (torchvision's, white padding); small images (digits are 8x8) are upscaled
    (nearest) so they can be seen."""
    arr = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2)
    b, c, h, w = arr.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    if b == 1:  # torchvision returns a lone image unpadded; keep the border every grid has
        grid = torch.nn.functional.pad(arr[0], (pad, pad, pad, pad), value=255)
    else:  # it makes 1 channel 3
        grid = make_grid_tv(arr, nrow=nrow, padding=pad, pad_value=255)[:c]
    img = _pil(grid.permute(1, 2, 0).numpy())
    if upscale is None:
        upscale = max(1, 64 // max(h, w))
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    return img


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, nrow).save(path)
    return path


def save_pngs(images: torch.Tensor, folder: str | Path, names: list[str]) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for arr, name in zip(to_uint8(images), names):
        p = folder / name
        _pil(arr).save(p)
        paths.append(p)
    return paths
