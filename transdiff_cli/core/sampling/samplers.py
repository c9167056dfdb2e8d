"""The samplers of the rectified flow: objects that own their time grid and their update rule.

x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0, t runs from 1 (noise) to 0 (data).
A sampler is given a velocity function (`core.flow.VelocityFn`) and the initial noise; the model,
guidance batching and MRAR rounds are the caller's. `times` lets a caller precompute everything
that depends only on t (the decoder's time modulation) once per run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from ..flow import VelocityFn

Generators = torch.Generator | Sequence[torch.Generator] | None  # one, or one per image

T_MIN = 0.04  # last Euler-Maruyama time before the final deterministic step (paper, app. F)


def guided_velocity(velocity: VelocityFn, x: torch.Tensor, t: float, cfg: float) -> torch.Tensor:
    """v_uncond + cfg (v_cond - v_uncond). The reverse-SDE drift with w(t) = 2t is d = v - t * score,
    score = -((1 - t) v + x) / t, i.e. d = (2 - t) v + x: affine in v with the same x term in both
    branches, so guiding the velocity equals guiding the drift: d_u + cfg (d_c - d_u) = (2 - t) v_cfg + x."""
    v_cond, v_uncond = velocity(x, t)
    if v_uncond is None or cfg == 1.0:
        return v_cond
    return torch.lerp(v_uncond, v_cond, cfg)


def draw_noise(out: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal draws into `out` (the same draws as a fresh randn); with a list of
    generators, row i comes from generator i."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(out.shape, generator=generator, out=out)
    if len(generator) != out.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {out.shape[0]}")
    for row, g in zip(out, generator):
        torch.randn(row.shape, generator=g, out=row)
    return out


class Sampler:
    """`sampling_steps` network evaluations from t = 1 to t = 0. The state is updated in place (one
    buffer, the caller's noise untouched), in the noise's dtype."""

    name: str
    sampling_steps: int

    @property
    def times(self) -> list[float]:
        """The times at which the network is evaluated, in order."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, i: int, v: torch.Tensor, generator: Generators) -> torch.Tensor:
        """Update x in place from time times[i] to the next with the (guided) velocity v."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, velocity: VelocityFn, noise: torch.Tensor, cfg: float = 1.0,
                 generator: Generators = None) -> torch.Tensor:
        x = noise.clone()
        for i, t in enumerate(self.times):
            self.step(x, i, guided_velocity(velocity, x, t, cfg), generator)
        return x


@dataclass(frozen=True)
class EulerMaruyama(Sampler):
    """The paper's Euler-Maruyama sampler with scales (appendix F): scale_0 scales the drift, scale_1
    the injected noise; the last step (0.04 -> 0) is plain Euler. Every step's coefficients are
    folded into Python floats: x <- (1 + a) x + a (2 - t) v_cfg (+ noise), a = scale_0 dt.
    `generator` may be one generator per image, so that an image does not depend on its batch."""

    sampling_steps: int
    scale_0: float = 1.0
    scale_1: float = 1.0
    name = "em"

    @cached_property
    def grid(self) -> list[float]:
        """t_0 = 1 > ... > t_{S-1} = 0.04 evenly spaced, then t_S = 0."""
        s = self.sampling_steps
        if s < 2:
            return [1.0, 0.0]
        return [1.0 + (T_MIN - 1.0) * i / (s - 1) for i in range(s)] + [0.0]

    @cached_property
    def times(self) -> list[float]:
        return self.grid[:-1]

    def step(self, x: torch.Tensor, i: int, v: torch.Tensor, generator: Generators) -> torch.Tensor:
        ts = self.grid
        t, dt = ts[i], ts[i + 1] - ts[i]
        last = i == len(ts) - 2
        a = dt if last else self.scale_0 * dt
        x.mul_(1 + a).add_(v, alpha=a * (2 - t))
        if not last and self.scale_1 != 0.0:
            xi = draw_noise(torch.empty_like(x), generator)
            x.add_(xi, alpha=self.scale_1 * math.sqrt(2 * t) * math.sqrt(abs(dt)))
        return x


@dataclass(frozen=True)
class EulerODE(Sampler):
    """Deterministic Euler on the probability-flow ODE dx/dt = v, t: 1 -> 0 in uniform steps."""

    sampling_steps: int
    name = "ode"

    @cached_property
    def times(self) -> list[float]:
        return [1.0 - i / self.sampling_steps for i in range(self.sampling_steps)]

    def step(self, x: torch.Tensor, i: int, v: torch.Tensor, generator: Generators) -> torch.Tensor:
        return x.add_(v, alpha=-1.0 / self.sampling_steps)


SAMPLERS = ("em", "ode")


def make_sampler(name: str, sampling_steps: int, scale_0: float = 1.0, scale_1: float = 1.0) -> Sampler:
    """The sampler called `name` ("em" or "ode"; the ODE has no scales)."""
    if name == "ode":
        return EulerODE(sampling_steps)
    if name == "em":
        return EulerMaruyama(sampling_steps, scale_0, scale_1)
    raise ValueError(f"unknown sampler {name!r}")
