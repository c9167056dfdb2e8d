"""What the trainer reads: `open_training_data` gives one dataset whatever `--data` names (an
encode-latents folder, read by `LatentDataset`; `digits`/`shapes` or an image folder, encoded on the
fly by `EncodedImages`), in same-class groups for MRAR (`GroupedDataset`, or a groups file)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch.utils.data import Dataset

from ..errors import TransDiffError
from .datasets import BUILTIN, ImageDataset, open_image_dataset
from .latents import (
    MANIFEST,
    is_latent_folder,
    read_manifest,
    shard_job,
    tokenizer_for_images,
)
from .tokenizer import PixelTokenizer, Tokenizer
from .tokenizer_spec import load_tokenizer, same_tokenizer, scaled_posterior


class LatentDataset(Dataset):
    """Items `(latent (C, h, w), label)`: a fresh posterior draw times the scale factor, of the image
    or (randomly, when `flip`) of its mirror. All shards are loaded into memory, checksums verified."""

    def __init__(self, folder: str | Path, flip: bool = True):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if self.manifest.get("status") != "complete":
            raise TransDiffError(f"{self.folder} holds an unfinished encode-latents run: re-run the same "
                                 "`transdiff encode-latents` command to finish it")
        parts: dict[str, list[torch.Tensor]] = {"moments": [], "moments_flip": [], "labels": [], "indices": []}
        job = shard_job(self.folder, self.manifest)
        for shard in self.manifest["shards"]:
            path = self.folder / shard["file"]
            job.check_stamp(path)
            try:
                raw = path.read_bytes()
            except OSError as e:
                raise TransDiffError(f"cannot read latent shard {path}: {e.strerror}") from None
            if hashlib.sha256(raw).hexdigest() != shard["sha256"]:
                raise TransDiffError(f"checksum mismatch in {path}: the file changed or is corrupt; "
                                     "delete it and re-run encode-latents to rewrite it")
            try:
                tensors = load_safetensors(raw)
                missing = sorted(set(parts) - set(tensors))
            except (ValueError, SafetensorError) as e:
                raise TransDiffError(f"cannot read latent shard {path}: {e}") from None
            if missing:
                raise TransDiffError(f"latent shard {path} lacks `{missing[0]}`: re-run encode-latents into a new "
                                     "folder")
            if len(tensors["labels"]) != shard.get("count"):
                raise TransDiffError(f"{path} holds {len(tensors['labels'])} images but {self.folder / MANIFEST} "
                                     f"says {shard.get('count')}: re-run encode-latents into a new folder")
            for key in parts:
                parts[key].append(tensors[key])
        self._check_counts(parts["labels"])
        self.moments = torch.cat(parts["moments"])
        self.moments_flip = torch.cat(parts["moments_flip"])
        self.targets: list[int] = torch.cat(parts["labels"]).tolist()
        self.indices: list[int] = torch.cat(parts["indices"]).tolist()  # each latent's image in the source
        self.flip = flip
        self.tokenizer_spec: dict[str, Any] = self.manifest["tokenizer"]
        self.posterior = scaled_posterior(self.tokenizer_spec)
        self.class_names: list[str] = self.manifest["class_names"]
        self.latent_channels = self.moments.shape[1] // 2
        self.latent_size = self.moments.shape[-1]

    def _check_counts(self, labels: list[torch.Tensor]) -> None:
        """A manifest that lies (a cut shard list, too few class names) is caught here, not as a
        silently smaller dataset or an IndexError at the first step."""
        m, where = self.manifest, self.folder / MANIFEST
        shards = m.get("shards") or []
        if len(shards) != m.get("num_shards"):
            raise TransDiffError(f"{where} lists {len(shards)} shards but says there are {m.get('num_shards')}: "
                                 "the manifest was changed; re-run encode-latents into a new folder")
        covered = sum(int(sh.get("stop", 0)) - int(sh.get("start", 0)) for sh in shards)
        encoded = sum(len(t) for t in labels)
        if covered != m.get("num_images") or encoded != m.get("num_encoded"):
            raise TransDiffError(f"{where} says {m.get('num_images')} images ({m.get('num_encoded')} encoded) but "
                                 f"its shards cover {covered} ({encoded} encoded): the manifest was changed; "
                                 "re-run encode-latents into a new folder")
        top = max((int(t.max()) for t in labels if len(t)), default=-1)
        names = m.get("class_names")
        if not isinstance(names, list) or top >= len(names):
            count = len(names) if isinstance(names, list) else 0
            raise TransDiffError(f"{where} names {count} classes but the shards use class {top}: "
                                 "the manifest was changed; re-run encode-latents into a new folder")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        use_flip = self.flip and bool(torch.rand(()) < 0.5)
        moments = (self.moments_flip if use_flip else self.moments)[index]
        return self.posterior.draw_latents(moments[None])[0], self.targets[index]


class GroupedDataset(Dataset):
    """Items `(latents (K, C, h, w), label)`: item i followed by K-1 other items of its class drawn at
    random (without repeats when the class is large enough), for MRAR training. `seed` None draws
    from torch's global RNG (distinct per DataLoader worker); an int gives a reproducible stream."""

    def __init__(self, base: Dataset, group_size: int, seed: int | None = None):
        if group_size < 1:
            raise TransDiffError(f"group size must be at least 1, got {group_size}")
        self.base, self.group_size = base, group_size
        self.targets: list[int] = list(base.targets)
        self.class_names = getattr(base, "class_names", None)
        by_class: dict[int, list[int]] = {}
        for i, t in enumerate(self.targets):
            by_class.setdefault(t, []).append(i)
        self.by_class = {t: torch.tensor(ix) for t, ix in by_class.items()}
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.targets)

    def _others(self, index: int) -> list[int]:
        k = self.group_size - 1
        pool = self.by_class[self.targets[index]]
        pool = pool[pool != index] if len(pool) > 1 else pool
        if len(pool) >= k:
            pick = torch.randperm(len(pool), generator=self.generator)[:k]
        else:
            pick = torch.randint(len(pool), (k,), generator=self.generator)
        return pool[pick].tolist()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        items = [self.base[j][0] for j in [index, *self._others(index)]]
        return torch.stack(items), self.targets[index]


class EncodedImages(Dataset):
    """Images encoded on the fly (training straight from images): the pixels themselves, or a posterior
    draw of the VAE on `device` (use DataLoader num_workers=0 with a GPU VAE)."""

    def __init__(self, images: ImageDataset, tokenizer: Tokenizer):
        self.images, self.tokenizer = images, tokenizer
        self.targets, self.class_names = images.targets, images.class_names

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.images[index]
        if isinstance(self.tokenizer, PixelTokenizer):
            return image, label
        device = torch.device(getattr(self.tokenizer, "device", "cpu"))
        if device.type == "cuda" and torch.utils.data.get_worker_info() is not None:
            raise TransDiffError("encoding images with a GPU VAE inside DataLoader workers is not possible: "
                                 "use num_workers 0, or cache the latents first with `transdiff encode-latents`")
        moments = self.tokenizer.encode_moments(image[None].to(device))
        return self.tokenizer.draw_latents(moments)[0].float().cpu(), label


@dataclass
class TrainingData:
    dataset: Dataset  # items (latent (C, h, w) or (K, C, h, w) with group_size, label)
    class_names: list[str]
    tokenizer: Tokenizer
    latent_channels: int
    latent_size: int
    source: str


def open_training_data(data: str, vae: str | None = None, image_size: int | None = None,
                       group_size: int | None = None, flip: bool | None = None,
                       device: torch.device | str = "cpu", groups: str | Path | None = None) -> TrainingData:
    """`data`: an encode-latents folder (tokenizer from its manifest), `digits` / `shapes` (pixels
    unless `vae` says otherwise) or an image folder (`vae` required: kl16:PATH, diffusers:DIR or
    pixels). `flip` None means the data's default (off for digits). With `group_size`, items are
    same-class groups: the fixed ones of the `groups` file, else drawn at random."""
    if is_latent_folder(data):
        folder = Path(data)
        manifest = read_manifest(folder)
        spec = manifest["tokenizer"]
        if vae is not None and not same_tokenizer(vae, spec):
            raise TransDiffError(f"`vae` {vae} does not match the tokenizer the latents in {data} were "
                                 f"encoded with ({spec['kind']}{':' + spec['path'] if spec.get('path') else ''})")
        if image_size is not None and image_size != manifest["image_size"]:
            raise TransDiffError(f"`image_size` {image_size}, but the latents in {data} were encoded at "
                                 f"{manifest['image_size']}")
        base: Dataset = LatentDataset(folder, flip=manifest["flip_default"] if flip is None else flip)
        tokenizer = load_tokenizer(spec, device=device)
        source = f"latents {folder}"
    else:
        images = open_image_dataset(data, image_size, flip)
        if vae is None:
            if data not in BUILTIN:
                raise TransDiffError("an image folder needs `vae` (kl16:PATH, diffusers:DIR or pixels), "
                                     "or encode it first with `transdiff encode-latents`")
            vae = "pixels"
        tokenizer = tokenizer_for_images(vae, images, device)
        base = EncodedImages(images, tokenizer)
        source = f"images {data} ({tokenizer.kind})"
    if group_size is None:
        dataset: Dataset = base
    elif groups is not None:
        from .mrar_groups import fixed_groups

        dataset = fixed_groups(base, groups, group_size)
    else:
        dataset = GroupedDataset(base, group_size)
    return TrainingData(dataset, list(base.class_names), tokenizer, tokenizer.latent_channels,
                        tokenizer.latent_size, source)
