"""Seeding: image i's initial noise and its Euler-Maruyama noise stream (scale_1 > 0) come from
generators seeded by (seed, i), so an image does not depend on the batch size or on how images are
split across torchrun ranks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..model.config import ModelConfig
from ..validate import check_seed


def image_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for (seed, key...): independent streams per image, no overlap across seeds.
    Every bit of a seed up to 2**63-1 counts: the high word goes in as the spawn key (absent below
    2**32, so those seeds give the images they always gave)."""
    check_seed(seed)
    high = seed >> 32
    seq = np.random.SeedSequence([seed & 0xFFFFFFFF, *key], spawn_key=(high,) if high else ())
    return int(seq.generate_state(2, np.uint64)[0] >> 1)


def initial_noise(config: ModelConfig, indices: Sequence[int], seed: int) -> torch.Tensor:
    """(B, N_d, token_dim) noise, image i from generator (seed, i); drawn on the CPU so the same
    seed gives the same start on every device."""
    shape = (config.num_tokens, config.token_dim)
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(image_seed(seed, i))) for i in indices]
    return torch.stack(rows)


def step_generators(indices: Sequence[int], seed: int, device: torch.device) -> list[torch.Generator]:
    """The sampler's per-step noise, one stream per image (seed, i, 1): an image does not depend on
    its batch or on the torchrun split."""
    return [torch.Generator(device=device).manual_seed(image_seed(seed, i, 1)) for i in indices]
