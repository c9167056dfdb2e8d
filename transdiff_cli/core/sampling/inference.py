"""Getting a loaded model ready for generation: device, precision, optional torch.compile."""

from __future__ import annotations

import shutil

import torch

from ..device import weights_dtype
from ..errors import TransDiffError
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
