"""Will the run fit? The parameter count and a rough lower bound of the training memory, from the
configuration alone (nothing is allocated), checked against the device's free memory (measured
once, with the device: `Machine.memory`) before the model is built."""

from __future__ import annotations

import torch

from ..errors import TransDiffError
from ..model.config import ModelConfig
from .train_config import TrainConfig

# fp32 weights, gradients, AdamW's two moments and the EMA copy
BYTES_PER_PARAM = 5 * 4


def parameter_count(c: ModelConfig) -> int:
    """The model's parameters by its blocks: an encoder block holds self-attention (4 D^2) and an
    MLP (2 r D^2); a decoder block also cross-attention (4 W^2); plus embeddings and projections."""
    d, w, r = c.width, c.decoder_width, c.mlp_ratio
    encoder = c.encoder_blocks * int((4 + 2 * r) * d * d + (9 + 2 * r) * d)
    decoder = c.decoder_depth * int((8 + 2 * r) * w * w + (14 + 2 * r) * w)
    slots = c.buffer_size + c.num_slots
    embeddings = (c.num_classes + 2 + slots + c.num_slots + 2 * c.ref_tokens) * d
    io = (c.ref_dim if c.mrar else c.token_dim) * d + d * w + (c.token_dim + 1) * w * 2 + 7 * w * w
    return encoder + decoder + embeddings + io + c.num_tokens * w


def activation_bytes(c: ModelConfig, local_batch: int) -> int:
    """A lower bound for one micro-batch: every block keeps at least eight values per token for
    the backward pass (attention through SDPA stores no score matrix), held in 16 bits as under
    bf16 autocast; the decoder sees `diffusion_batch_mul` copies of each image."""
    images = c.mrar_rounds if c.mrar else 1
    enc = local_batch * c.encoder_blocks * 8 * (c.buffer_size + c.num_slots) * c.width
    dec = local_batch * c.diffusion_batch_mul * images * c.decoder_depth * 8 * c.num_tokens * c.decoder_width
    if c.grad_checkpointing:  # only block inputs are kept
        enc //= 8
        dec //= 8
    return 2 * (enc + dec)


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_fits_machine(c: ModelConfig, t: TrainConfig, device: torch.device, world_size: int = 1,
                       available: int | None = None) -> None:
    """Refuse a model whose weights and optimizer state, or one micro-batch's activations, exceed
    the `available` bytes of the device (None: unknown, nothing checked), naming the estimate (as
    sampling's batch check does)."""
    params = parameter_count(c)
    state = params * BYTES_PER_PARAM
    local = max(1, t.batch_size // max(1, t.grad_accum * world_size))
    acts = activation_bytes(c, local)
    if available is None or state + acts <= available:
        return
    what = (f"the model has about {params:,} parameters ({_gib(state)} for weights, gradients, "
            f"optimizer state and EMA) and one micro-batch of {local} needs at least {_gib(acts)} "
            f"of activations, but {device.type} has {_gib(available)} available")
    if state > available:
        raise TransDiffError(f"{what}: reduce `width`, `encoder_depth` or `decoder_depth`")
    raise TransDiffError(f"{what}: lower `batch_size`, raise `grad_accum` or use `grad_checkpointing`")
