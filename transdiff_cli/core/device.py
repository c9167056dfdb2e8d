"""Device choice: CUDA when present, else MPS, else CPU; an explicit `--device` wins."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .distributed import DistInfo, init_distributed
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
_NAMES = {dtype: name for name, dtype in PRECISIONS.items()}

# What `auto` resolves to, for every command and the API (auto, fp32, bf16, fp16). A flag or an
# argument other than auto wins; unset or auto = decided by the hardware, as below. CI runs the
# CLI and API tests once more with the other answer, so no test depends on the host.
PRECISION_ENV = "TRANSDIFF_PRECISION"


def _canonical(precision: str, where: str) -> str:
    name = _ALIASES.get(str(precision).strip().lower(), str(precision).strip().lower())
    if name != "auto" and name not in PRECISIONS:
        raise TransDiffError(f"{where}: unknown precision {precision!r} (auto, fp32, bf16 or fp16)")
    return name


def forced_precision() -> str | None:
    """The precision $TRANSDIFF_PRECISION gives `auto`, or None when unset or auto."""
    value = os.environ.get(PRECISION_ENV, "")
    if not value.strip():
        return None
    name = _canonical(value, f"${PRECISION_ENV}")
    return None if name == "auto" else name


def _check_precision(precision: str, device: torch.device) -> str:
    name = _canonical(precision, "`precision`")
    if name == "auto":
        name = forced_precision() or "auto"
    if name == "fp16" and device.type == "cpu":
        raise TransDiffError("`precision` fp16 needs a GPU; use bf16 or auto on CPU")
    if name == "bf16" and device.type == "cpu":
        warn_if_emulated_bf16()
    return name


def weights_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype sampling holds the weights in; auto = $TRANSDIFF_PRECISION if set, else the
    fastest correct one for the device."""
    name = _check_precision(precision, device)
    return inference_dtype(device) if name == "auto" else PRECISIONS[name]


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The training autocast dtype for `precision` (fp32 -> None; auto: $TRANSDIFF_PRECISION if
    set, else bf16 on GPU and fp32 elsewhere)."""
    name = _check_precision(precision, device)
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return None if name == "fp32" else PRECISIONS[name]


def explain_auto(device: torch.device) -> dict[str, str]:
    """What `auto` resolves to on `device` for sampling and for training, and why (`transdiff env`)."""
    forced = forced_precision()
    if forced:
        why = f"${PRECISION_ENV}={os.environ[PRECISION_ENV]}"
        return {"sampling": forced, "training": forced, "why": why}
    sampling = _NAMES[inference_dtype(device)]
    if device.type == "cuda":
        why = "CUDA: bf16 where the GPU supports it" + ("" if sampling == "bf16" else " (this one does not)")
    elif device.type == "cpu":
        why = ("CPU with native bf16 (avx512_bf16/AMX or Arm bf16): oneDNN runs bf16 GEMMs natively"
               if sampling == "bf16" else "CPU without native bf16: emulated bf16 is slower than fp32")
    else:
        why = f"{device.type}: fp32"
    return {"sampling": sampling, "training": "bf16" if device.type == "cuda" else "fp32", "why": why}


def available_memory(device: torch.device) -> int | None:
    """Bytes free on `device`: the GPU's free memory, the host's MemAvailable (or free pages) for
    the CPU; None when unknown. Batch, shard and model-size checks ask this before allocating."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Machine:
    """Where a training run executes, settled once before anything is built: the device (this
    rank's GPU under torchrun), the process group, the autocast dtype and the free memory."""

    device: torch.device
    dist: DistInfo
    autocast: torch.dtype | None  # None: fp32
    memory: int | None  # bytes free on the device when the run started (None: unknown)


def training_machine(requested: str | None, precision: str) -> Machine:
    """Resolve the device, join torchrun's process group (if any) and fix the training precision."""
    device = resolve_device(requested)
    dist = init_distributed(device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    return Machine(device, dist, autocast_dtype(device, precision), available_memory(device))
