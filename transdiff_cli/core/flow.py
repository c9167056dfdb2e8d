"""Rectified flow, the math shared by training (the model's loss) and sampling (the samplers).

x_t = (1 - t) x0 + t eps for t in [0, 1] (t = 1 is pure noise), the network predicts the velocity
v = eps - x0, and its time input is 1000 t. Training draws t logit-normal, quantised to k / 1000
like the reference. It sits below the model and the samplers so neither imports the other for it
(docs/architecture.md#rectified-flow).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

TIME_SCALE = 1000  # the network's time input is TIME_SCALE * t

# velocity(x, t) -> (v_cond, v_uncond or None); t is a Python float in [0, 1]. The model builds one
# per run (with its caches); a sampler calls it at every network evaluation.
VelocityFn = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor | None]]


def sample_timesteps(n: int, device: torch.device | str, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Logit-normal times quantised like the reference: k = floor(1000 sigmoid(n)), n ~ N(0, 1)."""
    u = torch.randn(n, device=device, generator=generator)
    return (torch.sigmoid(u) * TIME_SCALE).floor().long().clamp_(0, TIME_SCALE - 1)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, with one t per row of x0."""
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / dt: the velocity the network learns, eps - x0."""
    return noise - x0


def flow_loss(decoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
              timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted and the true velocity; `timesteps` are integers 0..999."""
    t = timesteps.to(x0.dtype) / TIME_SCALE
    x_t = interpolate(x0, noise, t)
    v = decoder(x_t, timesteps.to(x0.dtype))
    return F.mse_loss(v.float(), velocity_target(x0, noise).float())
