"""Fixed MRAR training groups (`finetune-mrar --groups FILE`), as the authors train with
(`Imagenet2012_mrar_files.txt`): JSON lines `{"cate": "n01440764", "files": [K file names]}`.

An item of the data is known by (class folder, file name): for an image folder its class folder
and the image's file name; for the built-in datasets the class name and the item's name
(`digits[17]`, `shapes[5]`). Latents are matched through the image folder they were encoded from
(their manifest names it, their shards keep each latent's index in it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import TransDiffError
from .datasets import ImageDataset, open_image_dataset


@dataclass
class Group:
    cate: str
    files: list[str]
    line: int  # 1-based line of the groups file, for errors


def read_groups(path: str | Path, group_size: int) -> list[Group]:
    """Parse the JSON-lines file; every group must hold `group_size` files."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise TransDiffError(f"`groups` {p}: cannot read the file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        line = p.read_bytes()[:e.start].count(b"\n") + 1
        raise TransDiffError(f"`groups` {p} line {line}: not text (UTF-8 JSON lines expected; byte "
                             f"{e.object[e.start]:#04x} at offset {e.start})") from None
    groups = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as e:
            raise TransDiffError(f"`groups` {p} line {n}: not JSON ({e.msg})") from None
        if not (isinstance(doc, dict) and isinstance(doc.get("cate"), str) and isinstance(doc.get("files"), list)
                and all(isinstance(f, str) for f in doc["files"])):
            raise TransDiffError(f'`groups` {p} line {n}: expected {{"cate": CLASS, "files": [FILE, ...]}}')
        if len(doc["files"]) != group_size:
            raise TransDiffError(f"`groups` {p} line {n}: {len(doc['files'])} files, but MRAR trains on "
                                 f"groups of {group_size} (`mrar_rounds`)")
        groups.append(Group(doc["cate"], [Path(f).name for f in doc["files"]], n))
    if not groups:
        raise TransDiffError(f"`groups` {p}: no groups in the file")
    return groups


def _image_keys(images: ImageDataset, indices: list[int]) -> list[tuple[str, str]]:
    folders = getattr(images, "folders", images.class_names)
    return [(folders[images.targets[i]], Path(images.source(i)).name) for i in indices]


def item_keys(base: Any) -> list[tuple[str, str]]:
    """(class folder, file name) of every item of a training dataset (images or latents)."""
    images = getattr(base, "images", None)
    if isinstance(images, ImageDataset):
        return _image_keys(images, list(range(len(images))))
    manifest = getattr(base, "manifest", None)
    if manifest is None:
        raise TransDiffError("`groups` needs training data read from images or encode-latents latents")
    source = manifest["job"]["data"]
    try:
        images = open_image_dataset(source, manifest["image_size"], flip=False)
    except TransDiffError as e:
        raise TransDiffError(f"`groups`: the image folder the latents in {base.folder} were encoded from "
                             f"cannot be read ({e})") from None
    if len(images) != manifest["num_images"]:
        raise TransDiffError(f"`groups`: {source} holds {len(images)} images now, {manifest['num_images']} "
                             f"when the latents in {base.folder} were encoded: the folder changed")
    return _image_keys(images, base.indices)


class FixedGroupDataset(Dataset):
    """Items `(latents (K, C, h, w), label)`: one per group of the file, in its file order."""

    def __init__(self, base: Dataset, groups: list[list[int]], source: str):
        self.base, self.groups, self.source = base, groups, source
        self.targets: list[int] = [base.targets[g[0]] for g in groups]
        self.class_names = getattr(base, "class_names", None)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.stack([self.base[j][0] for j in self.groups[index]]), self.targets[index]


def fixed_groups(base: Dataset, path: str | Path, group_size: int) -> FixedGroupDataset:
    """The groups of `path` as indices into `base`; a file not in the data is an error."""
    groups = read_groups(path, group_size)
    where = {key: i for i, key in enumerate(item_keys(base))}
    out = []
    for g in groups:
        idx = [where.get((g.cate, f)) for f in g.files]
        if None in idx:
            missing = g.files[idx.index(None)]
            raise TransDiffError(f"`groups` {path} line {g.line}: {g.cate}/{missing} is not in the training data")
        out.append(idx)
    return FixedGroupDataset(base, out, str(path))
