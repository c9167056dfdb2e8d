"""Opening a checkpoint and its tokenizer for generation, and getting the model ready: device,
precision, optional torch.compile."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from ..data.tokenizer import Tokenizer
from ..data.tokenizer_spec import load_tokenizer
from ..device import weights_dtype
from ..errors import TransDiffError
from ..io.checkpoint import Checkpoint, load_checkpoint, newest_run_checkpoint
from ..model.transdiff import TransDiff


def prepare(model: TransDiff, device: torch.device, precision: str = "auto",
            compile: bool = False) -> TransDiff:
    """Eval mode on `device`, weights held in the requested dtype (cast once, not per call);
    `auto` picks the fastest correct dtype for the device."""
    model = model.to(device=device, dtype=weights_dtype(device, precision)).eval()
    if compile:
        compile_decoder(model, device)
    return model


def compile_decoder(model: TransDiff, device: torch.device) -> None:
    """torch.compile the decoder's sampling step (the only per-step work). The module itself is
    not replaced, so state-dict keys stay unchanged; the plain path (cache=False) stays eager."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise TransDiffError("`compile` on CPU needs a C++ compiler (g++ or clang++) on PATH; "
                             "install one or run without `compile`")
    dec = model.decoder
    if getattr(dec, "_compiled_step", False):
        return
    compiled = torch.compile(dec.forward_step, dynamic=False)

    def forward_step(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as e:  # dynamo/inductor failures surface at the first call
            if type(e).__module__.startswith("torch._"):
                raise TransDiffError(f"`compile` failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                                     "run without `compile`") from e
            raise

    dec.forward_step = forward_step
    dec._compiled_step = True


# --------------------------------------------------------------------------- opening a checkpoint
def open_checkpoint(ckpt: str | Path | None, *, weights: str = "ema", size: str | None = None,
                    device: torch.device, precision: str = "auto", compile: bool = False) -> Checkpoint:
    """Load `ckpt` (default: the newest run under runs/) and ready its model for generation."""
    path = newest_run_checkpoint("runs") if ckpt is None else ckpt
    ck = load_checkpoint(path, weights=weights, size=size, device="cpu")
    ck.model = prepare(ck.model, device, precision, compile)
    return ck


def tokenizer_spec(ck: Any, vae: str | None) -> Any:
    """`--vae` if given, else the tokenizer the checkpoint names (published files name none)."""
    spec: Any = vae if vae else ck.meta.get("tokenizer")
    if spec is None:
        raise TransDiffError(f"{ck.path} does not say which tokenizer it was trained with (published "
                             "checkpoints do not): pass `vae` kl16:PATH (the KL-16 VAE checkpoint)")
    return spec


def open_tokenizer(ck: Checkpoint, vae: str | None, device: torch.device) -> Tokenizer:
    """`--vae` if given, else the tokenizer the checkpoint was trained with; its latents must be the
    model's."""
    spec = tokenizer_spec(ck, vae)
    mc = ck.config
    tok = load_tokenizer(spec, image_size=mc.latent_size, image_channels=mc.latent_channels, device=device)
    got = getattr(tok, "latent_channels", mc.latent_channels)
    if got != mc.latent_channels:
        raise TransDiffError(f"the tokenizer gives {got}-channel latents but the model was trained on "
                             f"{mc.latent_channels}-channel latents: wrong `vae`?")
    if getattr(tok, "image_channels", 3) not in (1, 3):
        raise TransDiffError(f"tokenizer {spec!r} turns these {mc.latent_channels}-channel latents into "
                             f"{tok.image_channels}-channel arrays, not images: pass `vae` kl16:PATH")
    return tok
