"""CPU kernel choice by capability: every branch (oneDNN fused linear, float32 products for bf16
weights on CPUs without native bf16, plain torch ops) is forced here on any machine; `auto` precision
and the emulated-bf16 warning follow the capability answer."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import BF16_REL_TOL, make_model, make_tiny, png
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.device import autocast_dtype, weights_dtype
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.model import cpu_kernels, layers
from transdiff_cli.core.model.layers import Scratch, fast_attention, fast_linear
from transdiff_cli.core.sampling.loop import sample_rounds

BRANCHES = ("fused", "fp32-products", "plain")


@pytest.fixture(autouse=True)
def fresh_answers():
    """Each test sees (and leaves) uncached capability answers."""
    for f in (cpu_kernels.native_bf16, cpu_kernels.fused_linear_supported, cpu_kernels.warn_if_emulated_bf16):
        f.cache_clear()
    yield
    for f in (cpu_kernels.native_bf16, cpu_kernels.fused_linear_supported, cpu_kernels.warn_if_emulated_bf16):
        f.cache_clear()


def really_fused(dtype: torch.dtype) -> bool:
    ok = cpu_kernels.fused_linear_supported(dtype)
    cpu_kernels.fused_linear_supported.cache_clear()
    return ok


def force(monkeypatch, branch: str, dtype: torch.dtype) -> None:
    """Make the kernel choice take `branch` for `dtype` (skip where this CPU cannot run it)."""
    if branch == "fused":
        if not really_fused(dtype):
            pytest.skip(f"this CPU has no oneDNN fused linear in {dtype}")
        return
    native = branch == "plain"  # plain bf16 ops are what a native-bf16 CPU without the fused kernel runs
    fp32_fused = really_fused(torch.float32) and not native
    monkeypatch.setattr(cpu_kernels, "native_bf16", lambda: native)
    monkeypatch.setattr(cpu_kernels, "fused_linear_supported", lambda d: d == torch.float32 and fp32_fused)


def test_probe_failure_means_unsupported(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("could not create a primitive descriptor for the inner product forward propagation")

    monkeypatch.setattr(cpu_kernels, "fused_linear", broken)
    monkeypatch.setattr(cpu_kernels, "native_bf16", lambda: True)
    assert not cpu_kernels.fused_linear_supported(torch.float32)
    assert not cpu_kernels.fused_linear_supported(torch.bfloat16)


def test_bf16_kernel_needs_native_bf16(monkeypatch):
    called = []
    monkeypatch.setattr(cpu_kernels, "native_bf16", lambda: False)
    monkeypatch.setattr(cpu_kernels, "fused_linear", lambda *a, **k: called.append(1))
    assert not cpu_kernels.fused_linear_supported(torch.bfloat16) and not called  # no probe call at all


def test_env_forces_fallback(monkeypatch):
    monkeypatch.setenv(cpu_kernels.KERNELS_ENV, "fallback")
    assert not cpu_kernels.fused_linear_supported(torch.float32)


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("branch", BRANCHES)
def test_fast_linear_each_branch(monkeypatch, branch, dtype, gelu):
    force(monkeypatch, branch, dtype)
    torch.manual_seed(0)
    m = torch.nn.Linear(24, 40).to(dtype)
    x = torch.randn(3, 5, 24).to(dtype)
    want = F.linear(x.float(), m.weight.float(), m.bias.float())
    want = F.gelu(want) if gelu else want
    with torch.no_grad():
        got = fast_linear(m, x, gelu=gelu)
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7 * want.abs().max()  # bf16: a few roundings
    assert (got.float() - want).abs().max() <= tol


def test_fp32_products_branch_does_not_run_bf16_gemms(monkeypatch):
    """Without native bf16 the bf16 weights are multiplied in float32 (ATen's emulated bf16 GEMM
    is ~7x slower than float32) and attention keeps SDPA."""
    force(monkeypatch, "fp32-products", torch.bfloat16)
    seen = []
    real = F.linear
    monkeypatch.setattr(layers.F, "linear", lambda x, w, b=None: seen.append(w.dtype) or real(x, w, b))
    m = torch.nn.Linear(8, 8).bfloat16()
    with torch.no_grad():
        fast_linear(m, torch.randn(2, 8).bfloat16())
    assert torch.bfloat16 not in seen
    assert not Scratch.wanted(torch.device("cpu"), torch.bfloat16, False)
    q = torch.randn(1, 2, 4, 8).bfloat16()
    assert torch.equal(fast_attention(q, q, q), F.scaled_dot_product_attention(q, q, q))


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("mrar,cfg", [(False, 1.5), (True, [1.0, 1.5, 1.5, 1.5])])
def test_bf16_sampling_close_to_fp32_each_branch(monkeypatch, branch, mrar, cfg):
    force(monkeypatch, branch, torch.bfloat16)
    torch.set_num_threads(1)
    labels = torch.tensor([0, 4])
    noise = torch.randn(2, 64, 4, generator=torch.Generator().manual_seed(4))
    kw = dict(cfg=cfg, sampling_steps=6, scale_1=0.0, noise=noise)
    ref = sample_rounds(make_model(mrar), labels, **kw)[-1]
    got = sample_rounds(make_model(mrar, torch.bfloat16), labels, **kw)[-1]
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref).abs().max() <= BF16_REL_TOL * ref.abs().max()


@pytest.mark.parametrize("native,want", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_follows_native_bf16(monkeypatch, native, want):
    monkeypatch.delenv("TRANSDIFF_PRECISION", raising=False)  # the hardware's answer, not the forced one
    monkeypatch.setattr(cpu_kernels, "native_bf16", lambda: native)
    assert weights_dtype(torch.device("cpu"), "auto") == want
    assert autocast_dtype(torch.device("cpu"), "auto") is None  # CPU training stays fp32


def test_auto_precision_on_gpu(monkeypatch):
    monkeypatch.delenv("TRANSDIFF_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert weights_dtype(torch.device("cuda"), "auto") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert weights_dtype(torch.device("cuda"), "auto") == torch.float32
    assert weights_dtype(torch.device("mps"), "auto") == torch.float32


def test_emulated_bf16_warns_once(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "native_bf16", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        weights_dtype(torch.device("cpu"), "bf16")
        autocast_dtype(torch.device("cpu"), "bf16")
    assert [w.category for w in caught] == [cpu_kernels.PerformanceWarning]
    assert "emulated" in str(caught[0].message)


def test_native_bf16_does_not_warn(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert weights_dtype(torch.device("cpu"), "bf16") == torch.bfloat16


def test_bad_precision_is_one_line():
    with pytest.raises(TransDiffError, match="unknown precision"):
        weights_dtype(torch.device("cpu"), "fp8")
    with pytest.raises(TransDiffError, match="needs a GPU"):
        weights_dtype(torch.device("cpu"), "fp16")


@pytest.mark.parametrize("branch", BRANCHES)
def test_cli_sample_bf16_each_branch(monkeypatch, tmp_path, branch):
    """`transdiff sample --precision bf16` writes the fp32 images within bf16 tolerance on every
    kind of CPU, and says once where bf16 is emulated."""
    force(monkeypatch, branch, torch.bfloat16)
    ck = make_tiny(tmp_path / "ck")
    runner = CliRunner()
    outs = {}
    for precision in ("fp32", "bf16"):
        r = runner.invoke(app, ["sample", "--ckpt", str(ck), "--class", "1,2", "--num", "2", "--precision", precision,
                                "--scale-1", "0", "--out", str(tmp_path / precision)])
        assert r.exit_code == 0, r.output
        outs[precision] = [png(p).astype(int) for p in sorted((tmp_path / precision).glob("0*.png"))]
        emulated = "emulated" in r.output
        assert emulated == (precision == "bf16" and branch == "fp32-products"), r.output
    assert len(outs["bf16"]) == 4
    for a, b in zip(outs["fp32"], outs["bf16"]):
        assert abs(a - b).max() <= 0.04 * 255  # BF16_REL_TOL of the [0, 255] range
