"""Getting a loaded model ready for generation: device, precision, optional torch.compile."""

from __future__ import annotations

import torch

from .errors import TransDiffError
from .model import TransDiff

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def prepare(model: TransDiff, device: torch.device, precision: str = "fp32",
            compile: bool = False) -> TransDiff:
    """Eval mode on `device`, weights held in the requested dtype (cast once, not per call)."""
    if precision not in PRECISIONS:
        raise TransDiffError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
    if precision == "fp16" and device.type == "cpu":
        raise TransDiffError("--precision fp16 needs a GPU; use bf16 on CPU")
    model = model.to(device=device, dtype=PRECISIONS[precision]).eval()
    if compile:
        model.decoder = torch.compile(model.decoder, dynamic=False)
    return model
