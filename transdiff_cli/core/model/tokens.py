"""Latent images <-> token sequences, channel-major inside a patch (c, then the p x p offsets)."""

from __future__ import annotations

import torch


def patchify(latent: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)(W/p), C*p*p)."""
    b, c, h, w = latent.shape
    x = latent.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # b, h', w', c, p, p
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, size: int) -> torch.Tensor:
    """(B, (size/p)^2, C*p*p) -> (B, C, size, size); inverse of `patchify`."""
    b = tokens.shape[0]
    g = size // p
    x = tokens.reshape(b, g, g, channels, p, p)
    x = x.permute(0, 3, 1, 4, 2, 5)  # b, c, h', p, w', p
    return x.reshape(b, channels, size, size)
