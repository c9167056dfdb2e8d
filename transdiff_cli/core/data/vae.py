"""VAE tokenizers on diffusers' AutoencoderKL: the published LDM/MAR KL-16 checkpoint (converted
key by key, its architecture read off the tensor shapes) or any local diffusers folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import TransDiffError
from ..io.hub import local_path
from .tokenizer import Tokenizer

KL16_SCALE = 0.2325  # MAR's latent scale for kl16


class VAETokenizer(Tokenizer):
    """Images in [-1, 1] <-> latents of an AutoencoderKL; latents the model sees are scaled."""

    def __init__(self, vae: Any, kind: str, path: str, scale_factor: float, image_size: int = 256):
        self.vae = vae.eval().requires_grad_(False)
        self.kind, self.path, self.scale_factor = kind, path, float(scale_factor)
        config = vae.config
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.image_channels = int(config.in_channels)
        self.latent_channels = int(config.latent_channels)
        self.image_size = image_size

    @property
    def image_size(self) -> int:
        return self._image_size

    @image_size.setter
    def image_size(self, size: int) -> None:
        if size % self.downsample:
            raise TransDiffError(f"image size {size} is not a multiple of the VAE's downsampling factor "
                                 f"{self.downsample} (use `image_size`)")
        self._image_size = int(size)

    @property
    def latent_size(self) -> int:
        return self._image_size // self.downsample

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "image_size": self.image_size,
                "scale_factor": self.scale_factor}

    def to(self, device: torch.device | str) -> VAETokenizer:
        self.vae.to(device)
        return self

    @torch.no_grad()
    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1 and self.image_channels == 3:
            images = images.expand(-1, 3, -1, -1)  # grey data (digits) through an RGB VAE
        posterior = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist
        return torch.cat([posterior.mean, posterior.logvar], dim=1)

    @torch.no_grad()
    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.vae.dtype) / self.scale_factor
        return self.vae.decode(z).sample


def load_vae_tokenizer(spec: dict[str, Any], device: torch.device | str = "cpu") -> VAETokenizer:
    """`{"kind": "kl16" | "diffusers", "path": ..., ["image_size"], ["scale_factor"]}` -> tokenizer on device."""
    kind, path = spec["kind"], local_path(spec["path"])  # a Hub id: its cached file
    if kind == "kl16":
        vae = kl16_to_diffusers(path)
        scale = spec.get("scale_factor", KL16_SCALE)
    elif kind == "diffusers":
        vae = _load_diffusers_folder(path)
        scale = spec.get("scale_factor", vae.config.scaling_factor)
    else:
        raise TransDiffError(f"unknown VAE kind {kind!r}: use kl16:PATH or diffusers:DIR")
    tokenizer = VAETokenizer(vae, kind, str(spec["path"]), scale, int(spec.get("image_size", 256)))
    return tokenizer.to(device)


def _load_diffusers_folder(path: Path) -> Any:
    from diffusers import AutoencoderKL

    if not (path / "config.json").is_file():
        raise TransDiffError(f"diffusers VAE folder not found at {path}: pass `vae` diffusers:DIR with a local "
                             "AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors)")
    try:
        return AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # diffusers raises many kinds (OSError, ValueError, EnvironmentError...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TransDiffError(f"cannot load the diffusers VAE in {path}: {first}") from None


def _read_kl16(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TransDiffError(f"KL-16 VAE not found at {path}: download kl16.ckpt from the MAR release and pass "
                             "`vae` kl16:/path/to/kl16.ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors of every kind for a corrupt or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TransDiffError(f"cannot read the KL-16 VAE {path} (corrupt or not a checkpoint): {first}") from None
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):  # MAR saves {'model': ...}, LDM {'state_dict': ...}
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or "encoder.conv_in.weight" not in ckpt:
        raise TransDiffError(f"{path} is not a KL VAE checkpoint in the LDM/MAR layout (no encoder.conv_in.weight)")
    return ckpt


def _levels(sd: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def kl16_config(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """AutoencoderKL config inferred from an LDM-layout state dict: widths, levels, res blocks per level,
    latent channels and where attention sits (any level of the encoder or decoder, and the mid-blocks)."""
    n = _levels(sd, "encoder.down")
    widths = [sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(n)]
    layers = _levels(sd, "encoder.down.0.block")
    if _levels(sd, "decoder.up.0.block") != layers + 1:
        raise TransDiffError("KL VAE checkpoint: the decoder should have one more res-block per level than the encoder")
    z = sd["post_quant_conv.weight"].shape[0]
    if sd["encoder.conv_out.weight"].shape[0] != 2 * z or sd["decoder.conv_in.weight"].shape[1] != z:
        raise TransDiffError("KL VAE checkpoint: z_channels differs from embed_dim, which AutoencoderKL cannot hold")
    enc_attn = [any(k.startswith(f"encoder.down.{i}.attn.") for k in sd) for i in range(n)]
    # LDM numbers decoder levels from the highest resolution; diffusers' up blocks from the lowest.
    dec_attn = [any(k.startswith(f"decoder.up.{n - 1 - i}.attn.") for k in sd) for i in range(n)]
    return {
        "in_channels": sd["encoder.conv_in.weight"].shape[1],
        "out_channels": sd["decoder.conv_out.weight"].shape[0],
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in enc_attn],
        "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in dec_attn],
        "block_out_channels": widths,
        "layers_per_block": layers,
        "latent_channels": z,
        "norm_num_groups": 32,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in sd,
        "scaling_factor": KL16_SCALE,
    }


_RESNET = {"nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _rename(key: str, n: int) -> str:
    """One LDM key -> its diffusers AutoencoderKL name."""
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return key  # quant_conv / post_quant_conv keep their names
    rules = [
        (r"(down|up)\.(\d+)\.block\.(\d+)\.(\w+)\.", lambda m: f"{m[1]}_blocks.{_level(m, n)}.resnets.{m[3]}."
         f"{_RESNET.get(m[4], m[4])}."),
        (r"(down|up)\.(\d+)\.attn\.(\d+)\.(\w+)\.", lambda m: f"{m[1]}_blocks.{_level(m, n)}.attentions.{m[3]}."
         f"{_ATTN[m[4]]}."),
        (r"down\.(\d+)\.downsample\.", lambda m: f"down_blocks.{m[1]}.downsamplers.0."),
        (r"up\.(\d+)\.upsample\.", lambda m: f"up_blocks.{n - 1 - int(m[1])}.upsamplers.0."),
        (r"mid\.block_(\d)\.(\w+)\.", lambda m: f"mid_block.resnets.{int(m[1]) - 1}.{_RESNET.get(m[2], m[2])}."),
        (r"mid\.attn_1\.(\w+)\.", lambda m: f"mid_block.attentions.0.{_ATTN[m[1]]}."),
        (r"norm_out\.", lambda m: "conv_norm_out."),
    ]
    for pattern, repl in rules:
        new, count = re.subn(rf"^{pattern}", repl, rest)
        if count:
            return f"{part}.{new}"
    return key


def _level(m: re.Match, n: int) -> int:
    return int(m[2]) if m[1] == "down" else n - 1 - int(m[2])


def kl16_to_diffusers(path: Path) -> Any:
    """Load an LDM/MAR-layout KL VAE file into a diffusers AutoencoderKL (weights only, strict)."""
    from diffusers import AutoencoderKL

    sd = {k: v for k, v in _read_kl16(path).items()
          if k.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv")}  # drop LDM's loss.*
    try:
        config = kl16_config(sd)
    except KeyError as e:
        raise TransDiffError(f"{path}: incomplete KL VAE checkpoint (missing {e.args[0]})") from None
    n = len(config["block_out_channels"])
    vae = AutoencoderKL(**config)
    target = vae.state_dict()
    converted = {}
    for key, value in sd.items():
        new = _rename(key, n)
        if new in target and target[new].ndim == 2 and value.ndim == 4:
            value = value[:, :, 0, 0]  # LDM attention projections are 1x1 convs, diffusers' are Linear
        converted[new] = value
    missing = sorted(set(target) - set(converted))
    unexpected = sorted(set(converted) - set(target))
    if missing or unexpected:
        raise TransDiffError(f"{path}: KL VAE layout not understood (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    try:
        vae.load_state_dict(converted, strict=True)
    except RuntimeError as e:
        raise TransDiffError(f"{path}: KL VAE tensor shapes do not fit: {str(e).splitlines()[1].strip()}") from None
    return vae
