"""What a bug report needs: versions, devices, the CPU's ISA and kernels, what `auto` resolves to and
why, threads and cache folders (`transdiff env`; the benchmarks embed the same record).

Everything here is read locally; nothing touches the network.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from .device import PRECISION_ENV, explain_auto, resolve_device
from .model.cpu_kernels import KERNELS_ENV, fused_linear_supported, native_bf16

PACKAGES = ("torch", "torchvision", "diffusers", "timm", "torch-fidelity", "safetensors", "typer", "rich",
            "huggingface_hub", "numpy")
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and ISA flags from /proc/cpuinfo (Linux); elsewhere platform's answer."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), set()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / Arm
            flags = set(value.split())
    return name or platform.processor() or platform.machine(), flags


def _cuda() -> dict[str, Any]:
    info: dict[str, Any] = {"available": torch.cuda.is_available(), "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    try:
        nccl = torch.cuda.nccl.version() if torch.cuda.is_available() else None
        info["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
    except (AttributeError, RuntimeError):
        info["nccl"] = None
    info["devices"] = [{"index": i, "name": torch.cuda.get_device_name(i),
                        "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                        "bf16": torch.cuda.is_bf16_supported()}
                       for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return info


def _hub() -> dict[str, Any]:
    try:
        from huggingface_hub import constants
    except ImportError:
        return {"cache": None, "offline": None}
    return {"cache": str(constants.HF_HUB_CACHE), "offline": bool(constants.HF_HUB_OFFLINE)}


def collect() -> dict[str, Any]:
    """The whole record, JSON-serialisable."""
    from .eval.fid_reference import CACHE_ENV, default_cache_dir

    model, flags = _cpuinfo()
    device = resolve_device(None)
    mps = getattr(torch.backends, "mps", None)
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = None
    return {
        "transdiff": _version("transdiff-cli"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "cuda": _cuda(),
        "mps": bool(mps and mps.is_available()),
        "cpu": {
            "model": model,
            "isa": {f: f in flags for f in ISA_FLAGS},
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(),
            "fused_linear": {"fp32": fused_linear_supported(torch.float32),
                             "bf16": fused_linear_supported(torch.bfloat16)},
            KERNELS_ENV: os.environ.get(KERNELS_ENV),
        },
        "auto": {"device": str(device),
                 "device_why": ("CUDA is available" if device.type == "cuda" else
                                "MPS is available" if device.type == "mps" else "no CUDA or MPS device"),
                 "precision": explain_auto(device), PRECISION_ENV: os.environ.get(PRECISION_ENV)},
        "threads": {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
                    "cpu_count": os.cpu_count(), "affinity": affinity,
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "hub": _hub(),
        "reference_cache": {"folder": str(default_cache_dir()), CACHE_ENV: os.environ.get(CACHE_ENV)},
    }
