"""Device choice: CUDA when present, else MPS, else CPU; an explicit `--device` wins."""

from __future__ import annotations

import os

import torch

from .errors import TransDiffError
from .model.cpu_kernels import inference_dtype, warn_if_emulated_bf16


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
            raise TransDiffError(f"`device` {requested}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TransDiffError(f"`device` {requested}: only {torch.cuda.device_count()} "
                                 "CUDA device(s) present")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                  and torch.backends.mps.is_available()):
        raise TransDiffError(f"`device` {requested}: MPS is not available on this machine")
    return dev


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _check_precision(precision: str, device: torch.device) -> str:
    name = _ALIASES.get(precision, precision)
    if name != "auto" and name not in PRECISIONS:
        raise TransDiffError(f"unknown precision {precision!r} (auto, fp32, bf16 or fp16)")
    if name == "fp16" and device.type == "cpu":
        raise TransDiffError("`precision` fp16 needs a GPU; use bf16 or auto on CPU")
    if name == "bf16" and device.type == "cpu":
        warn_if_emulated_bf16()
    return name


def weights_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype sampling holds the weights in; auto = the fastest correct one for the device."""
    name = _check_precision(precision, device)
    return inference_dtype(device) if name == "auto" else PRECISIONS[name]


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The training autocast dtype for `precision` (fp32 -> None; auto: bf16 on GPU, else fp32)."""
    name = _check_precision(precision, device)
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return None if name == "fp32" else PRECISIONS[name]
