"""Class-conditional generation in batches: the sampling loop (`loop.sample_latents`, seeded per
image) run over batches and decoded through the tokenizer, with the memory checks made before a
batch is allocated. Writing the folder is `outputs`' job, the resumable `.npz` `generate_npz`'s,
opening a checkpoint `inference`'s (its names stay importable from here); the diversity measure is
`eval.diversity`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import to_uint8
from ..data.tokenizer import Tokenizer
from ..device import available_memory
from ..errors import TransDiffError
from ..model.transdiff import TransDiff
from ..validate import check_seed
from .inference import open_checkpoint, open_tokenizer, tokenizer_spec
from .loop import model_device_dtype, sample_latents
from .outputs import (
    GRID_MAX,
    GRID_PNG,
    SAMPLES_JSON,
    Batch,
    Written,
    check_outputs,
    file_name,
    grid_rows,
    into_fresh_folder,
    samples_doc,
    strip_file,
    write_samples,
)
from .settings import SampleSettings

__all__ = ["GRID_MAX", "GRID_PNG", "SAMPLES_JSON", "Batch", "Written", "check_outputs", "file_name", "grid_rows",
           "open_checkpoint", "open_tokenizer", "samples_doc",
           "strip_file", "tokenizer_spec"]

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


def batch_bytes(model: TransDiff, tokenizer: Tokenizer, batch_size: int, settings: SampleSettings) -> int:
    """A rough lower bound of the activation memory of one batch: the transformer's token states
    and attention scores (doubled under guidance) with the per-round latents kept, plus the
    decoded images and the tokenizer's widest feature map (128 channels for a VAE)."""
    mc = model.config
    rows = batch_size * (2 if any(c != 1.0 for c in settings.cfg) else 1)
    tokens = mc.buffer_size + mc.num_tokens * (mc.mrar_rounds if mc.mrar else 1)
    depth = mc.encoder_depth + mc.decoder_depth
    per_row = 4 * (tokens * mc.width * (8 + 2 * depth) + mc.heads * tokens * tokens)
    latents = 4 * batch_size * mc.num_tokens * mc.token_dim * (settings.rounds + 2)
    side = int(getattr(tokenizer, "image_size", None) or mc.latent_size)
    feature = 3 if tokenizer.kind == "pixels" else 128
    pixels = 4 * batch_size * side * side * (3 + feature)
    return rows * per_row + latents + pixels


def check_batch_fits(model: TransDiff, tokenizer: Tokenizer, batch_size: int, settings: SampleSettings) -> None:
    """Refuse a batch that cannot fit in memory before it is allocated, with a batch size that can."""
    device, _ = model_device_dtype(model)
    free = available_memory(device)
    need = batch_bytes(model, tokenizer, batch_size, settings)
    if free is None or need <= free * 0.8:
        return
    fits = max(1, int(batch_size * free * 0.5 / need))
    raise TransDiffError(f"`batch_size` {batch_size} needs about {_size(need)} for activations but only "
                         f"{_size(free)} is available on {device}: try `batch_size` {fits}")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


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
