"""What this CPU can run: native bfloat16 and oneDNN's fused linear, asked once and cached.

CPUs differ: with avx512_bf16 (or AMX) oneDNN runs bf16 GEMMs natively and its fused linear is the
fastest kernel; on AVX2-only CPUs oneDNN cannot build a bf16 inner-product primitive at all, and
ATen emulates bf16 (correct, but slower than float32). Every kernel choice below asks these
functions; tests monkeypatch them to force each branch on any machine.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

# Set to "fallback" to use only plain torch ops (debugging, or to rule the fused kernels out).
KERNELS_ENV = "TRANSDIFF_CPU_KERNELS"


class PerformanceWarning(UserWarning):
    """A requested setting works here but runs slower than the alternative."""


def fused_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, gelu: bool) -> torch.Tensor:
    # exact (erf) GELU in the GEMM epilogue, as nn.GELU()
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu" if gelu else "none", [], "none" if gelu else "")


@functools.cache
def native_bf16() -> bool:
    """True where the CPU computes bfloat16 natively (avx512_bf16 / AMX on x86, bf16 on Arm):
    torch's own query of oneDNN's ISA support."""
    query = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if query is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(query())
    except RuntimeError:
        return False


@functools.cache
def fused_linear_supported(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused linear runs in `dtype` on this CPU: one tiny probe call per dtype
    (the capability query alone does not cover every build), cached for the process."""
    if os.environ.get(KERNELS_ENV, "").lower() == "fallback":
        return False
    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available() \
            or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    if dtype == torch.bfloat16 and not native_bf16():
        return False
    x, w, b = torch.ones(2, 8, dtype=dtype), torch.ones(4, 8, dtype=dtype), torch.zeros(4, dtype=dtype)
    try:
        with torch.no_grad():
            y = fused_linear(x, w, b, gelu=False)
    except RuntimeError:  # "could not create a primitive descriptor ..." on CPUs without the ISA
        return False
    return bool(torch.equal(y.float(), torch.full((2, 4), 8.0)))


def inference_dtype(device: torch.device) -> torch.dtype:
    """The fastest dtype that is correct for sampling on `device` (`--precision auto`): bfloat16
    on GPUs that support it and on CPUs with native bf16, float32 elsewhere (emulated bf16 is
    slower than float32; MPS keeps float32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and native_bf16():
        return torch.bfloat16
    return torch.float32


@functools.cache
def warn_if_emulated_bf16() -> None:
    """Say once per process that CPU bf16 is emulated here (it still gives correct results)."""
    if not native_bf16():
        cap = torch.backends.cpu.get_cpu_capability()
        warnings.warn(f"this CPU ({cap}) has no native bfloat16: bf16 is emulated and runs slower than "
                      "fp32 here (results stay within bf16 tolerance); fp32 or auto is faster",
                      PerformanceWarning, stacklevel=3)
