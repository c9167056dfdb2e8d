"""Model configuration: one dataclass, the size presets of the paper plus small CPU sizes.

Widths/depths come from the preset; the token geometry (latent channels and size, patch sizes,
buffer length) follows the data, so the same preset works for ImageNet latents and 8x8 digits.
"""

from __future__ import annotations

import contextvars
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import TransDiffError
from ..schema import MODEL_SCHEMA, Sources, check_config, check_keys, fail, named, with_new_keys

# where each key of the config being built came from (set by from_dict, read by validate), so a
# relation between keys names their origins as the per-key checks do
_SOURCES: contextvars.ContextVar[Sources | None] = contextvars.ContextVar("model_sources", default=None)


@dataclass
class ModelConfig:
    size: str = "tiny"
    width: int = 128  # D: encoder width
    heads: int = 2
    encoder_depth: int = 2  # the paper's depth argument: the encoder has 2x this many blocks
    decoder_depth: int = 4
    decoder_width: int | None = None  # W; None means W = D as in every published size
    mlp_ratio: float = 4.0
    num_classes: int = 10
    buffer_size: int | None = None  # class-embedding buffer; None: min(64, number of slots)
    latent_channels: int = 16
    latent_size: int = 16
    patch_size: int | None = None  # decoder tokens; None: chosen from the latent shape
    # 1-step encoder condition slots; None: one per decoder token. The published 512 model keeps
    # the 256 slots of its 256 parent while its decoder has 1024 tokens (docs/architecture.md#recipes).
    condition_slots: int | None = None
    mrar: bool = False
    mrar_rounds: int = 4  # K
    ref_patch_size: int | None = None  # patch of the reference images; None: 2 x patch_size
    label_drop_prob: float = 0.1
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    diffusion_batch_mul: int = 4
    grad_checkpointing: bool = False
    # sampling defaults (the published settings for B/L/H)
    cfg: float = 1.0
    scale_0: float = 1.0
    scale_1: float = 1.0
    sampling_steps: int = 100
    sampler: str | None = None  # None: the tool's default (Euler-Maruyama); a distilled student's is "ode"
    mrar_cfg: list[float] = field(default_factory=list)  # per MRAR round; empty -> cfg everywhere

    def __post_init__(self) -> None:
        # types and ranges first (also for direct construction), so no relation divides by zero
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in check_config(fields, MODEL_SCHEMA, "model", _SOURCES.get()).items():
            setattr(self, key, value)
        if self.patch_size is None:
            self.patch_size = auto_patch_size(self.latent_channels, self.latent_size)
        if self.ref_patch_size is None:
            self.ref_patch_size = 2 * self.patch_size
        if self.decoder_width is None:
            self.decoder_width = self.width
        if self.buffer_size is None:
            self.buffer_size = min(64, self.num_tokens if self.mrar else self.num_slots)
        self.validate()

    def validate(self) -> None:
        """Relations between keys (each key's own range is in schema.MODEL_SCHEMA)."""
        src = _SOURCES.get()
        for key in ("width", "decoder_width"):
            if getattr(self, key) % self.heads:
                raise fail("heads", self.heads, src,
                           f"must divide {named(key, getattr(self, key), src)}")
        for key in ("patch_size", "ref_patch_size"):
            p = getattr(self, key)
            if self.latent_size % p:
                raise fail(key, p, src, f"does not divide the latent size {self.latent_size} "
                           f"(latents are {self.latent_channels}x{self.latent_size}x{self.latent_size})")
        if self.condition_slots is not None and self.mrar:
            raise TransDiffError("condition_slots applies to 1-step models; an MRAR model's "
                                 "slots follow its reference patches (mrar_rounds x ref_tokens)")

    # token geometry -------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """Decoder tokens per image."""
        return (self.latent_size // self.patch_size) ** 2

    @property
    def token_dim(self) -> int:
        return self.latent_channels * self.patch_size**2

    @property
    def ref_tokens(self) -> int:
        """Tokens per reference image in MRAR: also the MRAR block length."""
        return (self.latent_size // self.ref_patch_size) ** 2

    @property
    def ref_dim(self) -> int:
        return self.latent_channels * self.ref_patch_size**2

    @property
    def num_slots(self) -> int:
        """N: condition slots after the buffer."""
        if self.mrar:
            return self.mrar_rounds * self.ref_tokens
        return self.num_tokens if self.condition_slots is None else self.condition_slots

    @property
    def encoder_blocks(self) -> int:
        return 2 * self.encoder_depth

    def cfg_schedule(self) -> list[float]:
        return list(self.mrar_cfg) if self.mrar_cfg else [self.cfg] * self.mrar_rounds

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["sampler"] is None:  # unset: configs written before the field existed stay identical
            del d["sampler"]
        return d

    @classmethod
    def from_dict(cls, d: Any, sources: Sources | None = None, where: str | None = None) -> ModelConfig:
        """Checked against the schema (key by key, then the relations); `sources` says where each
        key came from, `where` names a file all of them came from."""
        d, sources = with_new_keys(d), with_new_keys(sources)
        check_keys(d, MODEL_SCHEMA, "model", sources, where)  # each value: in __post_init__
        token = _SOURCES.set({**{k: where for k in d}, **(sources or {})} if where else sources)
        try:
            return cls(**d)
        finally:
            _SOURCES.reset(token)


def auto_patch_size(channels: int, size: int) -> int:
    """Smallest patch giving at most 256 tokens of at least 4 dims (16x16x16 KL-16 latents -> 1)."""
    for p in range(1, size + 1):
        if size % p == 0 and (size // p) ** 2 <= 256 and channels * p * p >= 4:
            return p
    return size


# Sizes: (encoder depth argument, decoder depth, width, heads). B/L/H are the paper's; their
# sampling defaults are the published (cfg, scale_0, scale_1) and MRAR variants override them.
PRESETS: dict[str, dict[str, Any]] = {
    # tiny on digits: cfg 2 gave FID 17.9 / 99% class fidelity against 31.4 / 91% at cfg 1
    "tiny": dict(width=128, heads=2, encoder_depth=2, decoder_depth=4, diffusion_batch_mul=2,
                 label_drop_prob=0.1, sampling_steps=50, cfg=2.0, scale_0=1.0, scale_1=1.0),
    "S": dict(width=384, heads=6, encoder_depth=3, decoder_depth=6, sampling_steps=50),
    "B": dict(width=768, heads=12, encoder_depth=12, decoder_depth=12, attn_dropout=0.1,
              proj_dropout=0.1, cfg=1.30, scale_0=0.87, scale_1=0.91),
    "L": dict(width=1024, heads=16, encoder_depth=16, decoder_depth=16, attn_dropout=0.1,
              proj_dropout=0.1, cfg=1.30, scale_0=0.89, scale_1=0.95),
    "H": dict(width=1280, heads=16, encoder_depth=20, decoder_depth=20, attn_dropout=0.1,
              proj_dropout=0.1, cfg=1.23, scale_0=0.87, scale_1=0.93),
}
MRAR_SAMPLING = {
    "B": dict(cfg=1.30, scale_0=0.87, scale_1=0.91),
    "L": dict(cfg=1.30, scale_0=0.925, scale_1=0.95),
    "H": dict(cfg=1.28, scale_0=0.87, scale_1=0.91),
}
PUBLISHED_NAMES = {"transdiff_base": "B", "transdiff_large": "L", "transdiff_huge": "H"}
IMAGENET_GEOMETRY = dict(latent_channels=16, latent_size=16, patch_size=1, buffer_size=64,
                         num_classes=1000)


def preset(size: str, sources: Sources | None = None, **overrides: Any) -> ModelConfig:
    """The named size with data geometry and user overrides applied (`sources`: where each
    override came from, for messages)."""
    key = {k.lower(): k for k in PRESETS}.get(size.lower())
    if key is None:
        raise TransDiffError(f"unknown size {size!r}; choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[key], size=key)
    if overrides.get("mrar") and key in MRAR_SAMPLING:
        values.update(MRAR_SAMPLING[key])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig.from_dict(values, sources)
