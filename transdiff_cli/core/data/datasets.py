"""Image datasets: items are `(image (C, H, W) in [-1, 1], label)`, with class names.

- `digits`: scikit-learn's bundled 8x8 handwritten digits (no download), 1 channel.
- `shapes`: procedurally drawn coloured shapes (`red-circle`, ...), 3 channels, seeded.
- an ImageNet-style folder `DIR/train/<wnid or class>/*.JPEG|png` (or `DIR/<class>/*`), with ADM's
  center-crop preprocessing.
"""

from __future__ import annotations

import os
import re
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ..errors import TransDiffError

BUILTIN = ("digits", "shapes")
IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png", ".webp", ".bmp"}


class UnreadableImage(Exception):
    """An image file that cannot be decoded (truncated, corrupt, not an image)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class ImageDataset(Dataset):
    """Base class. `load(i)` returns the unflipped image (or raises UnreadableImage);
    `__getitem__` adds the random horizontal flip when `flip` is on."""

    name: str
    class_names: list[str]
    targets: list[int]
    image_size: int
    image_channels: int
    flip: bool
    default_flip: bool = True  # whether a mirrored image is still an image of its class

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def source(self, index: int) -> str:
        """Where item `index` comes from (a file path for folders), for error reports."""
        return f"{self.name}[{index}]"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.load(index)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.targets[index]


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < images.shape[-1]).clamp(-1, 1)


class DigitsDataset(ImageDataset):
    """1797 digits, values 0..16 mapped to [-1, 1]; native 8x8 (the CPU default), bilinear upscaling
    on request. Not flipped by default: a mirrored digit is not a digit."""

    name = "digits"
    default_flip = False

    def __init__(self, image_size: int | None = None, flip: bool | None = None):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(bunch.images).float().unsqueeze(1) / 8.0 - 1.0
        self.image_size = int(image_size or 8)
        self.images = _resize(images, self.image_size)
        self.image_channels = 1
        self.targets = [int(t) for t in bunch.target]
        self.class_names = [str(i) for i in range(10)]
        self.flip = self.default_flip if flip is None else flip

    def load(self, index: int) -> torch.Tensor:
        return self.images[index]


SHAPE_COLOURS = {"red": (220, 50, 40), "green": (50, 180, 60), "blue": (50, 90, 230), "yellow": (235, 205, 40)}
SHAPE_KINDS = ("circle", "square", "triangle")


def _draw_shape(colour: tuple[int, int, int], kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    s = size * 4  # draw 4x larger, then box-downsample: anti-aliased edges
    background = tuple(int(v) for v in rng.integers(10, 40, size=3))
    image = Image.new("RGB", (s, s), background)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.2, 0.4) * s
    cx, cy = rng.uniform(r, s - r, size=2)
    fill = tuple(int(np.clip(v + rng.integers(-25, 26), 0, 255)) for v in colour)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        q = r * 0.85
        draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
    return image.resize((size, size), Image.BOX)


class ShapesDataset(ImageDataset):
    """Coloured circles, squares and triangles on a dark background, classes like `red-circle`.
    Each item is drawn from its own seeded generator, so the dataset is the same everywhere."""

    name = "shapes"

    def __init__(self, image_size: int | None = None, flip: bool | None = None,
                 per_class: int = 200, seed: int = 0):
        self.image_size = int(image_size or 16)
        self.image_channels = 3
        self.kinds = [(c, k) for c in SHAPE_COLOURS for k in SHAPE_KINDS]
        self.class_names = [f"{c}-{k}" for c, k in self.kinds]
        n = len(self.kinds)
        self.targets = [i % n for i in range(per_class * n)]
        self.seed = seed
        self.flip = self.default_flip if flip is None else flip
        self._cache: dict[int, torch.Tensor] = {}

    def load(self, index: int) -> torch.Tensor:
        if index not in self._cache:
            colour, kind = self.kinds[self.targets[index]]
            rng = np.random.default_rng([self.seed, index])
            image = _draw_shape(SHAPE_COLOURS[colour], kind, self.image_size, rng)
            self._cache[index] = _to_tensor(image)
        return self._cache[index]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def center_crop_adm(image: Image.Image, size: int) -> Image.Image:
    """ADM's preprocessing: halve with BOX filtering while the short side is >= 2x the target (cheap and
    alias-free), BICUBIC-resize the short side to `size`, then crop the center square."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    left = (image.size[0] - size) // 2
    top = (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


WNID = re.compile(r"^n\d{8}$")


@lru_cache(maxsize=1)
def _imagenet_names() -> dict[str, str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    # the first synonym of each description: "tiger, Panthera tigris" -> "tiger"
    return {wnid: info.index_to_description(i).split(",")[0].strip() for i, wnid in enumerate(info.label_names())}


def readable_class_names(folders: list[str]) -> list[str]:
    """Folder names, with ImageNet wnids replaced by their short names ("n01818515" -> "macaw");
    a name that would repeat (ImageNet has two "crane"s) keeps its wnid to stay unique."""
    if not all(WNID.match(f) for f in folders):
        return list(folders)
    table = _imagenet_names()
    names = [table.get(f, f) for f in folders]
    return [f"{n} ({f})" if names.count(n) > 1 else n for n, f in zip(names, folders)]


class ImageFolderDataset(ImageDataset):
    """`root/<class>/<image>`; labels follow the sorted folder names (ImageNet index order for wnids)."""

    def __init__(self, root: Path, image_size: int | None = None, flip: bool | None = None):
        self.root = root
        self.name = str(root)
        self.image_size = int(image_size or 256)
        self.image_channels = 3
        self.flip = self.default_flip if flip is None else flip
        folders: list[str] = []
        self.files: list[str] = []
        self.targets = []
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            files = sorted(f for f in os.listdir(entry.path)
                           if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
            if not files:
                continue
            self.files += [os.path.join(entry.path, f) for f in files]
            self.targets += [len(folders)] * len(files)
            folders.append(entry.name)
        self.folders = folders
        self.class_names = readable_class_names(folders)
        self._warned = False

    def source(self, index: int) -> str:
        return self.files[index]

    def load(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")  # forces the full decode: truncated files fail here
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UnreadableImage(path, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        return _to_tensor(center_crop_adm(image, self.image_size))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        # In training an unreadable file is replaced by the next readable one of the dataset rather
        # than killing a long run; encode-latents calls `load` and lists such files instead.
        for offset in range(len(self)):
            j = (index + offset) % len(self)
            try:
                image = self.load(j)
            except UnreadableImage as e:
                if not self._warned:
                    warnings.warn(f"skipping unreadable image {e}", stacklevel=2)
                    self._warned = True
                continue
            if self.flip and torch.rand(()) < 0.5:
                image = image.flip(-1)
            return image, self.targets[j]
        raise TransDiffError(f"no readable image in {self.root}")


def _folder_root(path: Path, train: bool) -> Path:
    split = path / ("train" if train else "val")
    if split.is_dir() and any(e.is_dir() for e in os.scandir(split)):
        return split
    return path


def open_image_dataset(data: str, image_size: int | None = None, flip: bool | None = None,
                       train: bool = True) -> ImageDataset:
    """`digits`, `shapes`, or an image folder (its `train/` split, or `val/` when train=False, when
    present). `flip` None means the dataset's default (off for digits)."""
    if image_size is not None and image_size < 1:
        raise TransDiffError(f"`image_size` must be positive, got {image_size}")
    if data == "digits":
        return DigitsDataset(image_size, flip)
    if data == "shapes":
        return ShapesDataset(image_size, flip)
    path = Path(data).expanduser()
    if not path.exists():
        if os.sep in data or data.startswith("."):
            raise TransDiffError(f"image folder {data} not found (expected DIR/train/<class>/*.JPEG)")
        raise TransDiffError(f"unknown dataset {data!r}: use digits, shapes or an image folder "
                             "(DIR/train/<class>/*.JPEG)")
    if not path.is_dir():
        raise TransDiffError(f"`data` {data}: not a folder (expected DIR/train/<class>/*.JPEG or DIR/<class>/*.png)")
    root = _folder_root(path.resolve(), train)
    dataset = ImageFolderDataset(root, image_size, flip)
    if len(dataset) == 0:
        raise TransDiffError(f"no images found in {path} (expected {path}/train/<class>/*.JPEG or "
                             f"{path}/<class>/*.png)")
    return dataset
