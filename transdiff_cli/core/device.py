"""Device choice: CUDA when present, else MPS, else CPU; an explicit `--device` wins."""

from __future__ import annotations

import os

import torch

from .errors import TransDiffError


def resolve_device(requested: str | None = None) -> torch.device:
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError as e:
        raise TransDiffError(f"unknown device {requested!r} (use cpu, cuda, cuda:N or mps)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TransDiffError(f"--device {requested}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TransDiffError(f"--device {requested}: only {torch.cuda.device_count()} "
                                 "CUDA device(s) present")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                  and torch.backends.mps.is_available()):
        raise TransDiffError(f"--device {requested}: MPS is not available on this machine")
    return dev


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for `precision` (fp32 -> None)."""
    if precision in ("fp32", "float32"):
        return None
    if precision in ("bf16", "bfloat16"):
        return torch.bfloat16
    if precision in ("fp16", "float16"):
        if device.type == "cpu":
            raise TransDiffError("--precision fp16 needs a GPU; use bf16 on CPU")
        return torch.float16
    raise TransDiffError(f"unknown precision {precision!r} (fp32, bf16 or fp16)")
