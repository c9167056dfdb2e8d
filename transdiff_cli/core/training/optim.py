"""Optimiser pieces of the paper's recipe: AdamW parameter groups, the lr schedule, and EMA."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .train_config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the encoder's matrices only: none on biases, norms (1-d tensors) and the
    diffusion decoder, as the paper's recipe says."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name.startswith("decoder."):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, train_config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # fused AdamW is one kernel per step on GPU (and supported on CPU in recent torch)
    return torch.optim.AdamW(param_groups(model, train_config.weight_decay), lr=train_config.peak_lr,
                             betas=(train_config.beta1, train_config.beta2), fused=device.type in ("cuda", "cpu"))


def lr_at(step: int, total: int, train_config: TrainConfig, warmup: int | None = None) -> float:
    """Linear warm-up (`warmup` steps; default train_config.warmup_steps) to the peak lr, then constant or
    cosine down to min_lr."""
    peak = train_config.peak_lr
    warmup = (train_config.warmup_steps or 0) if warmup is None else warmup
    if step < warmup:
        return peak * (step + 1) / warmup
    if train_config.schedule == "cosine":
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return train_config.min_lr + (peak - train_config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return peak


class EMA:
    """Exponential moving average of the parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, rate: float, warmup: bool = True):
        self.rate, self.warmup = rate, warmup
        self.params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def rate_at(self, step: int) -> float:
        return min(self.rate, (1 + step) / (10 + step)) if self.warmup else self.rate

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        named = dict(model.named_parameters())
        keys = list(self.params)
        ema = [self.params[k] for k in keys]
        cur = [named[k].detach().to(ema[0].dtype) for k in keys]
        torch._foreach_lerp_(ema, cur, 1.0 - self.rate_at(step))

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full model state dict holding the EMA parameters."""
        state = {k: v.detach() for k, v in model.state_dict().items()}
        state.update(self.params)
        return state

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for k in self.params:
            self.params[k].copy_(state[k])
