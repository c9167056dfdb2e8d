"""Rectified flow: the training loss and the samplers. All of the flow math lives here.

x_t = (1 - t) x0 + t eps, the network predicts the velocity v = eps - x0, t in [0, 1],
and the network's time input is 1000 t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import TransDiffError

Generators = torch.Generator | Sequence[torch.Generator] | None  # one, or one per image

# velocity(x, t) -> (v_cond, v_uncond or None); t is a Python float in [0, 1]
VelocityFn = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor | None]]

T_MIN = 0.04  # last Euler-Maruyama time before the final deterministic step (paper, app. F)


def sample_timesteps(n: int, device: torch.device | str, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Logit-normal times quantised like the reference: k = floor(1000 sigmoid(n)), n ~ N(0, 1)."""
    u = torch.randn(n, device=device, generator=generator)
    return (torch.sigmoid(u) * 1000).floor().long().clamp_(0, 999)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * noise


def flow_loss(decoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
              timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted and the true velocity; `timesteps` are integers 0..999."""
    t = timesteps.to(x0.dtype) / 1000
    x_t = interpolate(x0, noise, t)
    v = decoder(x_t, timesteps.to(x0.dtype))
    return F.mse_loss(v.float(), (noise - x0).float())


def em_times(steps: int) -> list[float]:
    """t_0 = 1 > ... > t_{S-1} = 0.04 evenly spaced, then t_S = 0."""
    if steps < 2:
        return [1.0, 0.0]
    return [1.0 + (T_MIN - 1.0) * i / (steps - 1) for i in range(steps)] + [0.0]


def guided_velocity(velocity: VelocityFn, x: torch.Tensor, t: float, cfg: float) -> torch.Tensor:
    """v_uncond + cfg (v_cond - v_uncond). The reverse-SDE drift with w(t) = 2t is d = v - t * score,
    score = -((1 - t) v + x) / t, i.e. d = (2 - t) v + x: affine in v with the same x term in both
    branches, so guiding the velocity equals guiding the drift: d_u + cfg (d_c - d_u) = (2 - t) v_cfg + x."""
    v_cond, v_uncond = velocity(x, t)
    if v_uncond is None or cfg == 1.0:
        return v_cond
    return torch.lerp(v_uncond, v_cond, cfg)


@torch.no_grad()
def euler_maruyama(velocity: VelocityFn, noise: torch.Tensor, steps: int, cfg: float = 1.0,
                   scale_0: float = 1.0, scale_1: float = 1.0,
                   generator: Generators = None) -> torch.Tensor:
    """The paper's Euler-Maruyama sampler with scales (appendix F): `steps` network evaluations;
    scale_0 scales the drift, scale_1 the injected noise; the last step (0.04 -> 0) is plain Euler.
    The state is updated in place (one buffer, the caller's noise untouched) with every step's
    coefficients folded into Python floats: x <- (1 + a) x + a (2 - t) v_cfg, a = scale_0 dt.
    `generator` may be one generator per image, so that an image does not depend on its batch."""
    ts = em_times(steps)
    x = noise.clone()
    xi = torch.empty_like(x) if scale_1 != 0.0 else None
    for i in range(len(ts) - 1):
        t, dt = ts[i], ts[i + 1] - ts[i]
        v = guided_velocity(velocity, x, t, cfg)
        last = i == len(ts) - 2
        a = dt if last else scale_0 * dt
        x.mul_(1 + a).add_(v, alpha=a * (2 - t))
        if not last and xi is not None:
            draw_noise(xi, generator)
            x.add_(xi, alpha=scale_1 * math.sqrt(2 * t) * math.sqrt(abs(dt)))
    return x


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


@torch.no_grad()
def euler_ode(velocity: VelocityFn, noise: torch.Tensor, steps: int, cfg: float = 1.0
              ) -> torch.Tensor:
    """Deterministic Euler on the probability-flow ODE dx/dt = v, t: 1 -> 0 in uniform steps."""
    x = noise.clone()
    for t in ode_times(steps):
        x.add_(guided_velocity(velocity, x, t, cfg), alpha=-1.0 / steps)
    return x


def ode_times(steps: int) -> list[float]:
    return [1.0 - i / steps for i in range(steps)]


def network_times(sampler: str, steps: int) -> list[float]:
    """The times t at which the sampler evaluates the network, in order: lets a caller precompute
    everything that depends only on t (the time embedding) once per run."""
    return ode_times(steps) if sampler == "ode" else em_times(steps)[:-1]


def parse_cfg(value: float | str | Sequence[float], steps: int) -> list[float]:
    """One scale for every MRAR step, or one per step ("1,1.3,1.3,1.3")."""
    if isinstance(value, str):
        value = [float(v) for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)):
        return [float(value)] * steps
    values = [float(v) for v in value]
    if len(values) == 1:
        return values * steps
    if len(values) != steps:
        raise TransDiffError(f"`cfg` has {len(values)} values but there are {steps} MRAR steps")
    return values
