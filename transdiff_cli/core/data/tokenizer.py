"""The tokenizer interface: images <-> the latents the model is trained on.

`encode_moments` (image -> posterior moments, mean and log-variance concatenated on the channel
axis), `sample_latents` (moments -> scaled latent), `decode` (scaled latent -> image), the latent
shape and the scale factor, and `spec()` (JSON, stored in checkpoints so that `sample` can rebuild
the tokenizer). The implementations are in `tokenizers` (pixels) and `vae` (KL VAEs).
"""

from __future__ import annotations

from typing import Any

import torch


class Tokenizer:
    kind: str = ""
    image_size: int
    image_channels: int
    latent_channels: int
    latent_size: int
    scale_factor: float = 1.0

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C_img, H, W) in [-1, 1] -> (B, 2 C_lat, h, w): mean then log-variance."""
        raise NotImplementedError

    def sample_latents(self, moments: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw from the posterior, times the scale factor: what the model sees."""
        mean, logvar = moments.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * eps) * self.scale_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Tokenizer:
        return self
