"""Shared helpers of the benchmarks: model construction, the same-run matmul peak, FLOP counting,
machine/load information. Run the benchmarks from the repository root."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transdiff_cli.core.device import resolve_device  # noqa: E402
from transdiff_cli.core.environment import collect  # noqa: E402
from transdiff_cli.core.errors import TransDiffError  # noqa: E402
from transdiff_cli.core.model.config import IMAGENET_GEOMETRY, preset  # noqa: E402
from transdiff_cli.core.model.transdiff import TransDiff  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="checkpoint (our folder format or the published .pth); else random weights")
    p.add_argument("--size", default="tiny", help="preset for random weights (tiny, S, B, L, H)")
    p.add_argument("--width", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--encoder-depth", type=int)
    p.add_argument("--decoder-depth", type=int)
    p.add_argument("--mrar", action="store_true", help="random-weight MRAR model (implied by --mode mrar)")
    p.add_argument("--precision", choices=list(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-size", type=int, default=None,
                   help="n of the n x n matmul timed for the peak (default 2048 on CPU, 8192 on GPU)")


def set_threads(n: int | None) -> int:
    # GEMM efficiency at these shapes depends on using every core: default to all of them.
    torch.set_num_threads(n or os.cpu_count() or 1)
    return torch.get_num_threads()


def bench_device(args: argparse.Namespace) -> torch.device:
    try:
        return resolve_device(args.device)
    except TransDiffError as e:
        raise SystemExit(f"error: {e}") from None


def random_model(args: argparse.Namespace, mrar: bool, device: torch.device | None = None) -> TransDiff:
    """Random weights at the requested size with ImageNet geometry, built directly in the target
    dtype on `device`. The zero-initialised output layer is re-drawn so velocities (and timings of
    anything data-dependent) are realistic."""
    config = preset(args.size, width=args.width, heads=args.heads, encoder_depth=args.encoder_depth,
                 decoder_depth=args.decoder_depth, mrar=mrar, **IMAGENET_GEOMETRY)
    torch.manual_seed(args.seed)
    model = build_in_dtype(config, DTYPES[args.precision], device or torch.device("cpu"))
    for p in model.decoder.final_layer.linear.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model.eval()


def build_in_dtype(config, dtype: torch.dtype, device: torch.device) -> TransDiff:
    """Construct the model with its parameters created in `dtype` on `device` from the start, so a
    float32 (or host) copy of a large model is never materialised (peak ~ weight bytes in `dtype`)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            return TransDiff(config)
    finally:
        torch.set_default_dtype(old)


def load_model(args: argparse.Namespace, mrar: bool, device: torch.device) -> TransDiff:
    if args.ckpt:
        from transdiff_cli.core.io.checkpoint import load_checkpoint
        from transdiff_cli.core.sampling.inference import prepare
        model = load_checkpoint(args.ckpt).model
        return prepare(model, device, args.precision)
    return random_model(args, mrar, device)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn: Callable[[], object], repeats: int, warmup: int = 1,
              device: torch.device = torch.device("cpu")) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def matmul_peak(dtype: torch.dtype, device: torch.device = torch.device("cpu"), repeats: int = 7,
                n: int | None = None) -> float:
    """GFLOP/s of a plain n x n matmul in `dtype`, timed in this process (median); n = 2048 on
    CPUs, 8192 on GPUs (large enough to saturate the tensor cores) unless given."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    c = torch.empty(n, n, dtype=dtype, device=device)
    times = time_runs(lambda: torch.mm(a, b, out=c), repeats, warmup=2, device=device)
    return 2 * n**3 / statistics.median(times) / 1e9


def _sdpa_cpu_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    # torch's FlopCounterMode has formulas for the CUDA attention kernels only; the CPU flash
    # kernel is 2 matmuls: QK^T and PV.
    b, h, s_q, d = q_shape
    s_k, d_v = k_shape[-2], v_shape[-1]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def _sdpa_cpu_bwd_flops(grad_out_shape, q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    return 2 * _sdpa_cpu_flops(q_shape, k_shape, v_shape)  # dV, dP, dQ, dK: 4 matmuls


def _linear_pointwise_flops(x_shape, *args, **kwargs) -> int:
    """mkldnn::_linear_pointwise(X, W, B, attr, ...) and its .binary(X, other, W, B, attr)."""
    w_shape = args[0] if isinstance(args[2], str) else args[1]
    rows = 1
    for n in x_shape[:-1]:
        rows *= n
    return 2 * rows * w_shape[0] * w_shape[1]  # weight (out, in)


def flop_counter() -> FlopCounterMode:
    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):  # the sampler's oneDNN fused linear
        mapping[torch.ops.mkldnn._linear_pointwise] = _linear_pointwise_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_bwd_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)  # formulas receive shapes


def count_flops(fn: Callable[[], object]) -> int:
    with flop_counter() as fc:
        fn()
    return fc.get_total_flops()


def machine_info(threads: int, device: torch.device = torch.device("cpu")) -> dict:
    """The machine a result was measured on: the `transdiff env` record under "env", plus the few
    fields the tables quote at the top level."""
    env = collect()
    cpu = env["cpu"]
    info = {"cpu": cpu["model"], "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "loadavg": [round(x, 2) for x in os.getloadavg()], "cpu_capability": cpu["torch_capability"],
            "native_bf16": cpu["native_bf16"], "fused_linear": cpu["fused_linear"],
            "cpu_flags": [f for f, present in cpu["isa"].items() if present], "env": env}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux: VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
