"""Starting a training run from another checkpoint (`train --init-from`), possibly at another
resolution: the paper's 512 recipe fine-tunes the 256 model's decoder at 512 (docs/architecture.md#recipes).

The encoder keeps its geometry (buffer and condition slots), so every encoder tensor loads as is;
the decoder keeps its patch size, so only its position embedding changes shape: its g×g grid is
resized to the new grid by bicubic interpolation. A different class count re-initialises the
class embedding."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import TransDiffError
from .config import ModelConfig
from .transdiff import TransDiff

DECODER_POS = "decoder.diffusion_pos_embed_learned"
CLASS_EMB = "class_emb.weight"
DECODER_PREFIX = "decoder."


def grow_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, g*g, W) position embedding of a g×g token grid -> (1, grid*grid, W), bicubic."""
    g = math.isqrt(pos.shape[1])
    if g * g != pos.shape[1]:
        raise TransDiffError(f"position embedding of {pos.shape[1]} rows is not a square grid")
    if g == grid:
        return pos.clone()
    w = pos.shape[2]
    img = pos.float().reshape(1, g, g, w).permute(0, 3, 1, 2)
    out = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(1, grid * grid, w).to(pos.dtype).contiguous()


def target_config(src: ModelConfig, latent_channels: int, latent_size: int, num_classes: int,
                  **overrides: Any) -> ModelConfig:
    """The source's config at the data's latent size: same encoder (its condition slots pinned),
    same decoder patch, so the decoder gets (latent_size / patch)^2 tokens."""
    if src.mrar:
        raise TransDiffError("`init_from` takes a 1-step checkpoint (an MRAR model's reference "
                             "grid is tied to its resolution; fine-tune MRAR with finetune-mrar)")
    if latent_channels != src.latent_channels:
        raise TransDiffError(f"the checkpoint has {src.latent_channels} latent channels, the data "
                             f"{latent_channels} (use the tokenizer the checkpoint was trained with)")
    values = dict(src.to_dict(), latent_size=latent_size, num_classes=num_classes,
                  condition_slots=src.num_slots if latent_size != src.latent_size
                  else src.condition_slots)
    values.update(overrides)
    return ModelConfig.from_dict(values)


def check_widths(src: ModelConfig, want: ModelConfig, ckpt: str) -> None:
    """A named size or model override that disagrees with the checkpoint's widths/depths."""
    for key in ("width", "decoder_width", "heads", "encoder_depth", "decoder_depth", "mlp_ratio"):
        a, b = getattr(src, key), getattr(want, key)
        if a != b:
            raise TransDiffError(f"`init_from` {ckpt} has {key} {a}, but the run asks for {b}: "
                                 "drop `size`/`config` model overrides or pick a matching checkpoint")


def init_state(state: dict[str, torch.Tensor], config: ModelConfig, ckpt: str,
               fresh_class_emb: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of `state` for a model of config `config`: the decoder position embedding grown
    to config's grid, the class embedding replaced by `fresh_class_emb` when given. Any other shape
    difference is a one-line error."""
    out = dict(state)
    grid = config.latent_size // config.patch_size
    out[DECODER_POS] = grow_pos_embed(state[DECODER_POS], grid)
    if fresh_class_emb is not None:
        out[CLASS_EMB] = fresh_class_emb.clone()
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in TransDiff(config).state_dict().items()}
    missing = sorted(set(shapes) - set(out))
    if missing:
        raise TransDiffError(f"`init_from` {ckpt} lacks {missing[0]} ({len(missing)} tensors missing)")
    for k, shape in shapes.items():
        if out[k].shape != shape:
            raise TransDiffError(f"`init_from` {ckpt} does not fit: {k} has shape "
                                 f"{tuple(out[k].shape)}, the run needs {tuple(shape)}")
    return {k: out[k] for k in shapes}


def fresh_class_embedding(config: ModelConfig, seed: int) -> torch.Tensor:
    """N(0, 0.02) rows, as a new model's class embedding starts."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(config.num_classes, config.width, generator=g) * 0.02


def frozen_from(ema: dict[str, torch.Tensor], model: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    """Decoder-only training: the frozen part (encoder, class and condition embeddings) taken from
    the source's EMA weights, the ones it samples with, so the decoder learns on the very
    condition it will be sampled with; the decoder keeps the given weights."""
    return {k: (v if k.startswith(DECODER_PREFIX) else ema[k]) for k, v in model.items()}


def is_decoder(name: str) -> bool:
    return name.startswith(DECODER_PREFIX)

