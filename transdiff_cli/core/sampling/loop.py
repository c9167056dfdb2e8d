"""The sampling loop: classifier-free guidance batching, MRAR rounds and seeding around a sampler.

The model computes features, conditions and velocities (`TransDiff.velocity`); a sampler
(`samplers.SAMPLERS`) owns the time grid and the update. Here they meet:
- guidance: the conditional and the null-class rows run as one batch of 2B, and the sampler mixes
  their velocities with the round's scale (one scale, or one per MRAR round); with a guidance
  interval, steps outside it run the B conditional rows alone;
- MRAR: K rounds, each image fed back as the next round's reference, the same initial noise reused
  at every round; only the new feature block goes through the encoder (its keys/values cached);
- seeding (`sample_latents`): image i's noise from (seed, i), see `seeding`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

from ..model.transdiff import TransDiff
from .curvature import with_profile
from .samplers import Generators, Sampler, draw_noise
from .seeding import initial_noise, step_generators
from .settings import SampleSettings, sample_settings


def model_device_dtype(model: TransDiff) -> tuple[torch.device, torch.dtype]:
    w = model.class_emb.weight
    return w.device, w.dtype


def run_sampler(model: TransDiff, c: torch.Tensor, noise: torch.Tensor, sampler: Sampler, cfg: float,
                generator: Generators = None, cache: bool = True,
                interval: Sequence[float] | None = None) -> torch.Tensor:
    """Decoder tokens sampled from `noise` (B, N_d, token_dim) given c: B rows, or 2B rows
    [cond; uncond] (then the unconditional half is used only when cfg != 1, and with `interval`
    (lo, hi) only at times lo <= t <= hi: elsewhere the network runs the B conditional rows alone)."""
    b = noise.shape[0]
    guided = cfg != 1.0
    if c.shape[0] != b and not guided:
        c = c[:b]
    dtype = c.dtype
    times = sampler.times
    lo, hi = interval if interval is not None else (0.0, 1.0)
    on = [t for t in times if lo <= t <= hi] if guided else []
    off = [t for t in times if not (guided and lo <= t <= hi)]
    both = model.velocity(c, b, True, on if cache else None) if on else None
    alone = model.velocity(c[:b], b, False, off if cache else None) if off else None
    if alone is None or both is None:
        velocity = both or alone
    else:
        def velocity(x: torch.Tensor, t: float):
            return both(x, t) if lo <= t <= hi else alone(x, t)

    if cache:
        # the sampler state stays float32 even with low-precision weights: it accumulates small
        # updates over many steps, where bfloat16's 8-bit mantissa would lose them
        noise = noise.float()
    return sampler(velocity, noise, cfg, generator).to(dtype)


def feature_slots(slots: int | Sequence[int], n: int) -> list[int]:
    """The condition slots to keep: an int k means the first k of the n slots, a sequence names
    them (distinct, in 0..n-1)."""
    if isinstance(slots, torch.Tensor):
        slots = slots.tolist()
    if isinstance(slots, bool) or isinstance(slots, str) or not isinstance(slots, (numbers.Integral, Sequence)):
        raise TypeError(f"`slots` must be an int or a sequence of slot indices, not {type(slots).__name__}")
    if isinstance(slots, numbers.Integral):
        if not 1 <= slots <= n:
            raise ValueError(f"`slots` must be in 1..{n} (this model has {n} condition slots), not {slots}")
        return list(range(int(slots)))
    idx = list(slots)
    if not idx or any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in idx):
        raise TypeError("`slots` as a sequence must hold at least one int slot index")
    if len(set(idx)) != len(idx) or not all(0 <= i < n for i in idx):
        raise ValueError(f"`slots` indices must be distinct and in 0..{n - 1}")
    return [int(i) for i in idx]


@torch.no_grad()
def decode(model: TransDiff, c: torch.Tensor, noise: torch.Tensor, sampler: Sampler, *, cfg: float = 1.0,
           uncond: torch.Tensor | None = None, generator: Generators = None, cache: bool = True,
           slots: Sequence[int] | None = None, interval: Sequence[float] | None = None) -> torch.Tensor:
    """Latents (B, C, H, W) sampled from `noise` given the condition c (B, n, D), e.g.
    `model.condition(model.features(...))`. With cfg != 1 the unconditional branch uses `uncond`
    (default: `model.null_condition`, which fits conditions without MRAR references).
    `slots`: the decoder cross-attends only to these condition slots (both branches), as in the
    paper's Figure 1 (middle); see `feature_slots`."""
    if cfg != 1.0:
        if uncond is None:
            uncond = model.null_condition(c.shape[0]).to(c.dtype)
        if uncond.shape[1:] != c.shape[1:]:
            raise ValueError(f"uncond has shape {tuple(uncond.shape)}, the condition {tuple(c.shape)}: "
                             "a condition with MRAR references needs its own unconditional branch")
        c = torch.cat([c, uncond.expand_as(c)])
    if slots is not None:
        c = c[:, torch.as_tensor(list(slots), dtype=torch.long, device=c.device)]
    return model.to_latent(run_sampler(model, c, noise.to(c.dtype), sampler, cfg, generator, cache, interval))


@torch.no_grad()
def sample_rounds(model: TransDiff, labels: torch.Tensor, settings: SampleSettings | None = None, *,
                  noise: torch.Tensor | None = None, generator: Generators = None, cache: bool = True,
                  **options: Any) -> list[torch.Tensor]:
    """Class-conditional latents (B, C, H, W) of every MRAR round (one entry in 1-step mode); the
    last is the output. `settings` (or `options` for `sample_settings` against the model's own
    config: mode, rounds, cfg, cfg_interval, sampling_steps, scale_0, scale_1, sampler,
    sampler_params). `noise` (B, N_d, token_dim) defaults to draws from `generator`, which also
    drives the sampler's noise (one generator, or one per image). `cache=False` runs the plain
    path (no cached keys/values)."""
    if settings is None:
        settings = sample_settings(model.config, **options)
    elif options:
        raise TypeError(f"give settings or options, not both ({', '.join(options)})")
    mc = model.config
    b = labels.shape[0]
    dtype = model.class_emb.weight.dtype
    if noise is None:
        noise = draw_noise(torch.empty(b, mc.num_tokens, mc.token_dim, device=labels.device, dtype=dtype),
                           generator)
    noise = noise.to(dtype)
    samplers = with_profile(model, settings).samplers()  # one per round
    guided = any(s != 1.0 for s in settings.cfg)  # the null rows then run in every round
    class_emb = model.class_embedding(labels)
    if guided:
        class_emb = torch.cat([class_emb, model.class_embedding(labels, null=True)])

    def round_latents(feats: torch.Tensor, k: int) -> torch.Tensor:
        c = model.condition(feats)
        return model.to_latent(run_sampler(model, c, noise, samplers[k], settings.cfg[k], generator, cache,
                                           settings.cfg_interval))

    if not mc.mrar:
        return [round_latents(model.features(class_emb), 0)]
    images: list[torch.Tensor] = []
    caches: list[dict] = [{} for _ in model.encoder_blocks]
    feats = None
    for k in range(settings.rounds):
        if cache:  # only the new block goes through the encoder; earlier keys/values reused
            new = model.round_features(class_emb, images, k, caches)
            feats = new if feats is None else torch.cat([feats, new], dim=1)
        else:
            feats = model.features(class_emb, model.references(images, 2 if guided else 1))
        images.append(round_latents(feats, k))
    return images


@torch.no_grad()
def sample_latents(model: TransDiff, labels: Sequence[int], indices: Sequence[int], settings: SampleSettings,
                   seed: int) -> list[torch.Tensor]:
    """`sample_rounds` for images `indices` (global image numbers) seeded by (seed, i): the same
    image whatever the batch or the torchrun split."""
    device, dtype = model_device_dtype(model)
    noise = initial_noise(model.config, indices, seed).to(device=device, dtype=dtype)
    y = torch.as_tensor(list(labels), device=device, dtype=torch.long)
    return sample_rounds(model, y, settings, noise=noise, generator=step_generators(indices, seed, device))
