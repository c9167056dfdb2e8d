"""Class-conditional generation in batches: the sampling loop (`loop.sample_latents`, seeded per
image) run over batches and turned into images by the tokenizer, once `memory` has checked that a
batch fits. Writing the folder is `outputs`' job, the resumable `.npz` `generate_npz`'s, opening a
checkpoint `inference`'s; the diversity measure is `eval.diversity`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import to_uint8
from ..data.tokenizer import Tokenizer
from ..errors import TransDiffError
from ..model.transdiff import TransDiff
from ..validate import check_seed
from .loop import sample_latents
from .memory import check_batch_fits
from .outputs import Batch, Written, into_fresh_folder, write_samples
from .settings import SampleSettings

# A stated limit on the images of one call (`--num` times the classes): the labels, file names
# and samples.json grow with it before the first image is drawn.
MAX_IMAGES = 1_000_000


def check_num_images(n: int, what: str = "`num` times the number of classes") -> None:
    """Refuse an image count beyond MAX_IMAGES before any list of that size is built."""
    if n > MAX_IMAGES:
        raise TransDiffError(f"{what} asks for {n} images; one call draws at most {MAX_IMAGES:,}: split the "
                             "work over several calls (another `seed` each, or other classes)")


@torch.no_grad()
def latents_to_images(tokenizer: Tokenizer, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [-1, 1] on the CPU (the tokenizer runs in float32)."""
    return tokenizer.to_images(latents.float()).float().clamp(-1, 1).cpu()


def generate(model: TransDiff, tokenizer: Tokenizer, labels: Sequence[int], settings: SampleSettings, *,
             seed: int = 0, batch_size: int = 16, indices: Sequence[int] | None = None,
             save_rounds: bool = False) -> Iterator[Batch]:
    """Generate image `indices[j]` of class `labels[j]` for every j, `batch_size` at a time.
    `indices` (default 0..N-1) are the global image numbers that seed the noise: a rank given a
    slice of them draws exactly the images a single process would."""
    if batch_size < 1:
        raise TransDiffError(f"`batch_size` must be at least 1, not {batch_size}")
    check_seed(seed)
    check_batch_fits(model, tokenizer, min(batch_size, max(1, len(labels))), settings)
    indices = list(range(len(labels))) if indices is None else list(indices)
    if len(indices) != len(labels):
        raise ValueError("indices and labels differ in length")
    for start in range(0, len(labels), batch_size):
        idx = indices[start:start + batch_size]
        lab = [int(v) for v in labels[start:start + batch_size]]
        rounds = sample_latents(model, lab, idx, settings, seed)
        if save_rounds:  # every round's latents through the tokenizer in one call
            decoded = list(latents_to_images(tokenizer, torch.cat(rounds)).split(len(idx)))
            yield Batch(idx, lab, decoded[-1], decoded)
        else:
            yield Batch(idx, lab, latents_to_images(tokenizer, rounds[-1]))


def generate_arrays(model: TransDiff, tokenizer: Tokenizer, labels: Sequence[int], settings: SampleSettings, *,
                    seed: int = 0, batch_size: int = 16, indices: Sequence[int] | None = None,
                    on_batch: Any = None) -> np.ndarray:
    """All images as one uint8 (N, H, W, C) array (for FID: no PNG round trip)."""
    arrays = []
    for batch in generate(model, tokenizer, labels, settings, seed=seed, batch_size=batch_size, indices=indices):
        arrays.append(to_uint8(batch.images))
        if on_batch is not None:
            on_batch(len(batch.indices))
    return np.concatenate(arrays)


def generate_to_folder(model: TransDiff, tokenizer: Tokenizer, labels: Sequence[int], settings: SampleSettings,
                       out: str | Path, *, seed: int = 0, batch_size: int = 16, save_rounds: bool = False,
                       nrow: int | None = None, class_names: Sequence[str] | None = None,
                       info: dict[str, Any] | None = None, on_batch: Any = None, overwrite: bool = False) -> Written:
    """One PNG per image, `grid.png` (the first GRID_MAX images), with `save_rounds` a strip of each
    MRAR round per image under `rounds/`, and `samples.json` (what was done), all drawn in memory
    batch by batch (`generate_npz.generate_folder_and_npz` draws through resumable shards instead).
    `on_batch(n)` is called after every batch with its size (a progress bar)."""
    check_seed(seed)
    batches = generate(model, tokenizer, labels, settings, seed=seed, batch_size=batch_size, save_rounds=save_rounds)
    return into_fresh_folder(Path(out), overwrite, lambda staging: write_samples(
        batches, labels, settings, staging, seed=seed, batch_size=batch_size, num_classes=model.config.num_classes,
        nrow=nrow, class_names=class_names, info=info, on_batch=on_batch))
