"""Rectified flow: the training loss and the samplers. All of the flow math lives here.

x_t = (1 - t) x0 + t eps, the network predicts the velocity v = eps - x0, t in [0, 1],
and the network's time input is 1000 t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import TransDiffError

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


def drift(v: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """Reverse-SDE drift with diffusion coefficient w(t) = 2t: d = v - t * score,
    score = -((1 - t) v + x) / t."""
    score = -((1 - t) * v + x) / t
    return v - t * score


def guided_drift(velocity: VelocityFn, x: torch.Tensor, t: float, cfg: float) -> torch.Tensor:
    v_cond, v_uncond = velocity(x, t)
    d = drift(v_cond, x, t)
    if v_uncond is None or cfg == 1.0:
        return d
    d_uncond = drift(v_uncond, x, t)
    return d_uncond + cfg * (d - d_uncond)


@torch.no_grad()
def euler_maruyama(velocity: VelocityFn, noise: torch.Tensor, steps: int, cfg: float = 1.0,
                   scale_0: float = 1.0, scale_1: float = 1.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's Euler-Maruyama sampler with scales (appendix F): `steps` network evaluations;
    scale_0 scales the drift, scale_1 the injected noise; the last step (0.04 -> 0) is plain Euler."""
    ts = em_times(steps)
    x = noise
    for i in range(len(ts) - 1):
        t, dt = ts[i], ts[i + 1] - ts[i]
        d = guided_drift(velocity, x, t, cfg)
        if i < len(ts) - 2:
            x = x + scale_0 * dt * d
            if scale_1 != 0.0:
                xi = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
                x = x + scale_1 * math.sqrt(2 * t) * math.sqrt(abs(dt)) * xi
        else:
            x = x + dt * d
    return x


@torch.no_grad()
def euler_ode(velocity: VelocityFn, noise: torch.Tensor, steps: int, cfg: float = 1.0
              ) -> torch.Tensor:
    """Deterministic Euler on the probability-flow ODE dx/dt = v, t: 1 -> 0 in uniform steps."""
    x = noise
    for i in range(steps):
        t, dt = 1.0 - i / steps, -1.0 / steps
        v_cond, v_uncond = velocity(x, t)
        v = v_cond if v_uncond is None or cfg == 1.0 else v_uncond + cfg * (v_cond - v_uncond)
        x = x + dt * v
    return x


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
        raise TransDiffError(f"--cfg has {len(values)} values but there are {steps} MRAR steps")
    return values
