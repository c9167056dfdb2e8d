"""Memory checks made before sampling allocates anything: a batch's activations (`check_batch_fits`)
and a resumable shard's images held until it is written (`check_shard_fits`). Each refusal names a
size that fits. The estimates are rough lower bounds; training's are in `training/memory`."""

from __future__ import annotations

import torch

from ..data.tokenizer import Tokenizer
from ..device import available_memory
from ..errors import TransDiffError
from ..model.transdiff import TransDiff
from .loop import model_device_dtype
from .settings import SampleSettings


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


def check_shard_fits(model: TransDiff, tokenizer: Tokenizer, shard_size: int, rounds: int = 1) -> None:
    """A shard's images (and with `save_rounds` every round's) are held in memory until it is
    written: refuse a `shard_size` whose shard cannot fit, before the first image is drawn."""
    side = int(getattr(tokenizer, "image_size", None) or model.config.latent_size)
    need = shard_size * side * side * int(getattr(tokenizer, "image_channels", 3)) * (1 + rounds) * 2
    free = available_memory(torch.device("cpu"))
    if free is not None and need > free * 0.5:
        fits = max(1, int(shard_size * free * 0.25 / need))
        raise TransDiffError(f"`shard_size` {shard_size} holds about {need / 2**30:.1f} GiB of images in memory but "
                             f"only {free / 2**30:.1f} GiB is available: try `shard_size` {fits}")
