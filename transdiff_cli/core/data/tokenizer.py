"""The tokenizer: images <-> the latents the model is trained on, and the two that need no weights.

`encode_moments` (image -> posterior moments, mean and log-variance concatenated on the channel
axis), `draw_latents` (moments -> a scaled latent drawn from the posterior), `to_images` (scaled
latent -> image), the latent shape and the scale factor, and `spec()` (JSON, stored in checkpoints
so that `sample` can rebuild the tokenizer). The KL VAEs are in `vae`; building any tokenizer from
its spec is `tokenizer_spec`. "decode" is kept for the diffusion decoder (features -> latents).
"""

from __future__ import annotations

import warnings
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

    def draw_latents(self, moments: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw from the posterior, times the scale factor: what the model sees."""
        mean, logvar = moments.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * eps) * self.scale_factor

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Tokenizer:
        return self

    # the old names, kept for scripts (CHANGELOG, "Renamed")
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        warnings.warn("Tokenizer.decode is now Tokenizer.to_images", DeprecationWarning, stacklevel=2)
        return self.to_images(latents)

    def sample_latents(self, moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        warnings.warn("Tokenizer.sample_latents is now Tokenizer.draw_latents", DeprecationWarning, stacklevel=2)
        return self.draw_latents(moments, generator)


class PixelTokenizer(Tokenizer):
    """Identity: the latent is the image in [-1, 1]; the posterior is a point (exact round trip)."""

    kind = "pixels"

    def __init__(self, image_size: int, image_channels: int):
        self.image_size = self.latent_size = int(image_size)
        self.image_channels = self.latent_channels = int(image_channels)

    def spec(self) -> dict[str, Any]:
        return {"kind": "pixels", "image_size": self.image_size,
                "image_channels": self.image_channels, "scale_factor": 1.0}

    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images, torch.full_like(images, float("-inf"))], dim=1)

    def draw_latents(self, moments: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        return moments[:, : self.latent_channels].clone()

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1, 1)


class ScaledPosterior(Tokenizer):
    """Draws scaled latents from stored VAE moments without loading the VAE (training from cached
    latents needs only the scale factor); it cannot encode, nor turn latents into images."""

    kind = "posterior"

    def __init__(self, scale_factor: float):
        self.scale_factor = float(scale_factor)
