"""Rectified flow: the training loss (the samplers are `samplers`).

x_t = (1 - t) x0 + t eps, the network predicts the velocity v = eps - x0, t in [0, 1],
and the network's time input is 1000 t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


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
