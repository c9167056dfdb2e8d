"""Building a tokenizer from its spec (the interface and the weightless ones are in `tokenizer`).

- `pixels`: no VAE, the image is the latent (small built-in datasets on CPU).
- `kl16:PATH`: the published LDM/MAR KL-16 VAE, mapped onto diffusers' AutoencoderKL.
- `diffusers:DIR`: any local diffusers AutoencoderKL folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import TransDiffError
from ..io.hub import is_hub_id, normalize
from . import vae
from .tokenizer import PixelTokenizer, ScaledPosterior, Tokenizer


def parse_tokenizer_spec(spec: str | dict[str, Any]) -> dict[str, Any]:
    """A CLI string ("pixels", "kl16:PATH", "diffusers:DIR") or a stored spec -> a spec dict whose
    path, if any, is absolute (so that specs stored in manifests and checkpoints compare equal)."""
    if isinstance(spec, str):
        kind, _, arg = spec.partition(":")
        spec_d: dict[str, Any] = {"kind": kind}
        if arg:
            spec_d["path"] = arg
    else:
        spec_d = dict(spec)
    if spec_d.get("path") and is_hub_id(spec_d["path"]):
        spec_d["path"] = normalize(spec_d["path"])  # resolved to the cached file when loaded
    elif spec_d.get("path"):
        spec_d["path"] = str(Path(spec_d["path"]).expanduser().absolute())
    if spec_d.get("kind") in ("kl16", "diffusers") and not spec_d.get("path"):
        raise TransDiffError(f"`vae` {spec_d['kind']} needs a path: {spec_d['kind']}:/path/to/"
                             + ("kl16.ckpt" if spec_d["kind"] == "kl16" else "vae_folder"))
    return spec_d


def same_tokenizer(a: str | dict[str, Any], b: str | dict[str, Any]) -> bool:
    """Whether two specs name the same weights (sizes and scale factors are not compared)."""
    pa, pb = parse_tokenizer_spec(a), parse_tokenizer_spec(b)
    return pa.get("kind") == pb.get("kind") and pa.get("path") == pb.get("path")


def scaled_posterior(spec: dict[str, Any]) -> Tokenizer:
    """What `draw_latents` needs of the tokenizer named by `spec`, without its weights."""
    if spec.get("kind") == "pixels":
        return PixelTokenizer(spec["image_size"], spec["image_channels"])
    return ScaledPosterior(spec["scale_factor"])


def load_tokenizer(spec: str | dict[str, Any], *, image_size: int | None = None,
                   image_channels: int | None = None,
                   device: torch.device | str = "cpu") -> Tokenizer:
    """Build a tokenizer from a CLI string ("pixels", "kl16:PATH", "diffusers:DIR") or a stored
    spec dict. `pixels` takes its size and channels from the data; a VAE takes `image_size` from
    the data when the spec does not fix it."""
    spec_d = parse_tokenizer_spec(spec)
    kind = spec_d.get("kind")
    if kind == "pixels":
        size = spec_d.get("image_size", image_size)
        ch = spec_d.get("image_channels", image_channels)
        if size is None or ch is None:
            raise TransDiffError("the pixels tokenizer needs the image size and channels")
        return PixelTokenizer(size, ch)
    if kind in ("kl16", "diffusers"):
        if image_size is not None and "image_size" not in spec_d:
            spec_d["image_size"] = image_size
        return vae.load_vae_tokenizer(spec_d, device=device)
    raise TransDiffError(f"unknown tokenizer {spec!r}: use pixels, kl16:PATH or diffusers:DIR")
