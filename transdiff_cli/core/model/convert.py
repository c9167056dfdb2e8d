"""State-dict conversions: the published TransDiff key layout, and 1-step -> MRAR initialisation."""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

import torch

from ..errors import TransDiffError
from .config import MRAR_SAMPLING, PUBLISHED_NAMES, ModelConfig, preset

PUBLISHED_DECODER_PREFIX = "diffdecoder.net."
# the authors' MRAR fine-tune repeats each (image, condition) twice, not four times
MRAR_FINETUNE_MODEL: dict[str, Any] = {"diffusion_batch_mul": 2}


def from_published_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' `diffdecoder.net.*` is our `decoder.*`; every other name is the same."""
    return {("decoder." + k[len(PUBLISHED_DECODER_PREFIX):]
             if k.startswith(PUBLISHED_DECODER_PREFIX) else k): v for k, v in state.items()}


def to_published_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(PUBLISHED_DECODER_PREFIX + k[len("decoder."):] if k.startswith("decoder.") else k): v
            for k, v in state.items()}


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    ids = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(ids) + 1 if ids else 0


def config_from_published(state: dict[str, torch.Tensor], args: argparse.Namespace | None,
                          heads: int | None = None) -> ModelConfig:
    """Model config of a published checkpoint: the named size if `args.model` is one, otherwise
    widths/depths from the tensor shapes and heads = width // 64 (unless given)."""
    a: dict[str, Any] = vars(args) if args is not None else {}
    try:
        width = state["class_emb.weight"].shape[1]
        num_classes = state["class_emb.weight"].shape[0]
        slots = state["diffusion_pos_embed_learned"].shape[1]
        buffer = state["encoder_pos_embed_learned"].shape[1] - slots
        mask_tokens = state["mask_token"].shape[1]
        token_dim = state["decoder.final_layer.linear.weight"].shape[0]
        dec_tokens = state["decoder.diffusion_pos_embed_learned"].shape[1]
    except KeyError as e:
        raise TransDiffError(f"not a TransDiff state dict: missing tensor {e.args[0]}") from e
    channels = int(a.get("vae_embed_dim", token_dim))
    latent_size = int(round((dec_tokens * token_dim / channels) ** 0.5))
    patch = int(round((token_dim / channels) ** 0.5))
    mrar = mask_tokens > 1 or bool(a.get("mrar", False))
    geometry: dict[str, Any] = dict(
        num_classes=num_classes, buffer_size=buffer, latent_channels=channels,
        latent_size=latent_size, patch_size=patch, mrar=mrar,
        label_drop_prob=a.get("label_drop_prob", 0.1), attn_dropout=a.get("attn_dropout", 0.1),
        proj_dropout=a.get("proj_dropout", 0.1),
        diffusion_batch_mul=a.get("diffusion_batch_mul", 4),
    )
    if not mrar and slots != dec_tokens:  # e.g. the 512 model: 256 slots, 1024 decoder tokens
        geometry["condition_slots"] = slots
    if mrar:
        ref_dim = state["z_proj.weight"].shape[1]
        geometry.update(ref_patch_size=int(round((ref_dim / channels) ** 0.5)),
                        mrar_rounds=slots // mask_tokens)
    # `args` holds training-time flags (cfg 1.0, num_sampling_steps "100", ...): never sampling
    # settings; eval_settings.checkpoint_defaults gives a published file its evaluation settings.
    size = PUBLISHED_NAMES.get(str(a.get("model", "")))
    if size is not None:
        config = preset(size, **geometry)
        if heads:
            config = dataclasses.replace(config, heads=heads)
        return config
    return ModelConfig(
        size=str(a.get("model", "custom")), width=width, heads=heads or max(1, width // 64),
        encoder_depth=_count(state, r"encoder_blocks\.(\d+)\.") // 2,
        decoder_depth=_count(state, r"decoder\.res_blocks\.(\d+)\."),
        decoder_width=state["decoder.input_proj.weight"].shape[0], **geometry)


def init_mrar_from_1step(state: dict[str, torch.Tensor], one: ModelConfig, mrar: ModelConfig,
                         generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Turn a 1-step state dict into an MRAR one. The two tensors that change shape get a start
    that preserves what the 1-step model computes:
    - mask_token (1, 1, D) -> (1, R, D): R copies, so the first block starts as the 1-step slots;
    - z_proj (D, C p^2) -> (D, C r^2): each reference patch covers (r/p)^2 decoder tokens; the
      weight of a token offset is shared by those tokens and divided by their count, so a
      reference made of equal tokens projects exactly like one token.
    Position embeddings keep their rows (extra rows, if the slot count grows, start at N(0, .02))."""
    out = dict(state)
    out["mask_token"] = state["mask_token"].expand(1, mrar.ref_tokens, -1).clone()
    w = state["z_proj.weight"]  # (D, C * p * p), channel-major
    d, c, p, r = w.shape[0], one.latent_channels, one.patch_size, mrar.ref_patch_size
    w = w.view(d, c, p, p)
    rep = r // p
    new = w.repeat(1, 1, rep, rep) / (rep * rep)  # (D, C, r, r): offset (y, x) -> (y % p, x % p)
    out["z_proj.weight"] = new.reshape(d, c * r * r).contiguous()
    for key, extra in (("encoder_pos_embed_learned", mrar.buffer_size),
                       ("diffusion_pos_embed_learned", 0)):
        old = state[key]
        rows = extra + mrar.num_slots
        if old.shape[1] != rows:
            fresh = torch.randn(1, rows, old.shape[2], generator=generator).to(old.dtype) * 0.02
            n = min(rows, old.shape[1])
            fresh[:, :n] = old[:, :n]
            out[key] = fresh
    return out


def mrar_config(one: ModelConfig, **overrides: Any) -> ModelConfig:
    if one.mrar:
        raise TransDiffError("the checkpoint is already an MRAR model; start from a 1-step one")
    if one.num_slots != one.num_tokens:  # e.g. the 512 model: 256 slots, 1024 decoder tokens
        raise TransDiffError(f"MRAR is not supported for this model: its {one.num_slots} condition "
                             f"slots differ from its {one.num_tokens} decoder tokens (the 512 "
                             "geometry), and MRAR needs one slot per reference token")
    values = dict(one.to_dict(), mrar=True, **MRAR_FINETUNE_MODEL)
    values.update(overrides)
    if one.size in MRAR_SAMPLING and "cfg" not in overrides:
        values.update(MRAR_SAMPLING[one.size])
    return ModelConfig.from_dict(values)
