"""The optimised sampler (cache=True: per-run condition keys/values and time schedule, folded adaLN,
in-place updates, oneDNN kernels, CFG-shared block 0) must give the plain path's result."""

import shutil

import pytest
import torch
from conftest import BF16_REL_TOL, make_model

from transdiff_cli.core.model.layers import Scratch, attend_heads_, split_heads_kv
from transdiff_cli.core.model.transdiff import TransDiff
from transdiff_cli.core.sampling.inference import prepare
from transdiff_cli.core.sampling.loop import sample_rounds
from transdiff_cli.core.sampling.samplers import EulerMaruyama, EulerODE

FP32_TOL = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread avoids OpenMP hand-offs that dominate (and, on a busy shared
    machine, stall) every small op."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def reference_em(model: TransDiff, c: torch.Tensor, noise: torch.Tensor, steps: int, cfg: float,
                 scale_0: float, scale_1: float, gen: torch.Generator | None) -> torch.Tensor:
    """The paper's Euler-Maruyama loop written out literally (score form, drift per branch)."""
    b = noise.shape[0]
    ts = EulerMaruyama(steps).grid
    x = noise
    for i in range(len(ts) - 1):
        t, dt = ts[i], ts[i + 1] - ts[i]
        xin = torch.cat([x, x]) if cfg != 1.0 else x
        v = model.decoder(xin, torch.full((xin.shape[0],), 1000.0 * t), c=c if cfg != 1.0 else c[:b])

        def drift(v_, x_=x, t_=t):  # the score form, per branch: d = v - t * score (w(t) = 2t)
            score = -((1 - t_) * v_ + x_) / t_
            return v_ - t_ * score
        d = drift(v[:b]) if cfg == 1.0 else drift(v[b:]) + cfg * (drift(v[:b]) - drift(v[b:]))
        if i < len(ts) - 2:
            x = x + scale_0 * dt * d
            if scale_1:
                x = x + scale_1 * (2 * t) ** 0.5 * abs(dt) ** 0.5 * torch.randn(x.shape, generator=gen)
        else:
            x = x + dt * d
    return x


@pytest.mark.parametrize("cfg", [1.0, 1.5, 3.0])
def test_1step_fast_equals_literal_reference(cfg):
    model = make_model(False)
    labels = torch.tensor([0, 3, 4])
    noise = torch.randn(3, 64, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb = model.class_embedding(labels)
        c = model.condition(model.features(torch.cat([emb, model.class_embedding(labels, null=True)])))
        want = model.to_latent(reference_em(model, c, noise, 7, cfg, 0.9, 0.8, torch.Generator().manual_seed(5)))
    got = sample_rounds(model, labels, cfg=cfg, sampling_steps=7, scale_0=0.9, scale_1=0.8, noise=noise,
                        generator=torch.Generator().manual_seed(5))[-1]
    assert (got - want).abs().max() <= FP32_TOL


@pytest.mark.parametrize("mrar,cfg", [(False, 1.0), (False, 2.0), (True, [1.0, 1.5, 2.0, 1.25]),
                                      (True, 1.7)])
@pytest.mark.parametrize("sampler", ["em", "ode"])
def test_fast_equals_plain_path(mrar, cfg, sampler):
    model = make_model(mrar)
    labels = torch.tensor([1, 2])
    noise = torch.randn(2, 64, 4, generator=torch.Generator().manual_seed(2))
    kw = dict(cfg=cfg, sampling_steps=6, scale_0=0.87, scale_1=0.91, noise=noise, sampler=sampler)
    fast_steps = sample_rounds(model, labels, cache=True, generator=torch.Generator().manual_seed(3), **kw)
    plain_steps = sample_rounds(model, labels, cache=False, generator=torch.Generator().manual_seed(3), **kw)
    fast, plain = fast_steps[-1], plain_steps[-1]
    assert (fast - plain).abs().max() <= FP32_TOL
    for a, b in zip(fast_steps, plain_steps):  # every MRAR round, not only the last
        assert (a - b).abs().max() <= FP32_TOL
    assert torch.equal(noise, torch.randn(2, 64, 4, generator=torch.Generator().manual_seed(2)))  # untouched


@pytest.mark.parametrize("mrar,cfg", [(False, 1.5), (True, [1.0, 1.5, 1.5, 1.5])])
def test_bf16_close_to_fp32(mrar, cfg):
    model = make_model(mrar)
    model16 = make_model(mrar, torch.bfloat16)
    labels = torch.tensor([0, 4])
    noise = torch.randn(2, 64, 4, generator=torch.Generator().manual_seed(4))
    kw = dict(cfg=cfg, sampling_steps=10, scale_1=0.0, noise=noise)
    ref = sample_rounds(model, labels, **kw)[-1]
    got = sample_rounds(model16, labels, **kw)[-1]
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref).abs().max() <= BF16_REL_TOL * ref.abs().max()


def test_attend_heads_equals_sdpa():
    """The CPU bf16 attention (one head at a time, reused scores buffer, softmax in place),
    checked in float32 where it must be exact: self-attention from strided qkv thirds and
    cross-attention from the per-head condition layout, with buffers reused across shapes."""
    gen = torch.Generator().manual_seed(0)
    r, n, heads, d = 3, 10, 2, 8
    scratch = Scratch()
    for nk in (10, 4, 7):
        q, k, v = (torch.randn(r, heads, m, d, generator=gen) for m in (n, nk, nk))
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(r, n, heads * d)
        out = torch.empty(r, n, heads * d)
        got = attend_heads_(out, q.transpose(1, 2).reshape(r, n, heads * d), split_heads_kv(k, v), scratch)
        assert got is out
        assert (got - want).abs().max() <= FP32_TOL


@pytest.mark.parametrize("mrar,cfg", [(False, 1.0), (False, 2.0), (True, [1.0, 1.5, 1.5, 2.0])])
def test_scratch_path_equals_plain_in_fp32(monkeypatch, mrar, cfg):
    """The bf16 CPU fast path's wiring (per-head keys/values, scratch buffers reused across CFG
    copies, MRAR rounds of growing condition length) run in float32 equals the plain path."""
    monkeypatch.setattr(Scratch, "wanted", staticmethod(lambda *args: True))
    model = make_model(mrar)
    labels = torch.tensor([1, 3])
    noise = torch.randn(2, 64, 4, generator=torch.Generator().manual_seed(5))
    kw = dict(cfg=cfg, sampling_steps=6, scale_1=0.0, noise=noise)
    fast = sample_rounds(model, labels, **kw)[-1]
    plain = sample_rounds(model, labels, cache=False, **kw)[-1]
    assert (fast - plain).abs().max() <= FP32_TOL


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler")
def test_compiled_step_equals_plain_path():
    """`--compile` (torch.compile of the decoder step, ~5 s here) gives the plain path's result."""
    model = make_model(False)
    labels = torch.tensor([1, 3])
    noise = torch.randn(2, 64, 4, generator=torch.Generator().manual_seed(6))
    kw = dict(cfg=1.5, sampling_steps=4, scale_1=0.0, noise=noise)
    plain = sample_rounds(model, labels, cache=False, **kw)[-1]
    prepare(model, torch.device("cpu"), "fp32", compile=True)
    assert (sample_rounds(model, labels, **kw)[-1] - plain).abs().max() <= FP32_TOL


def test_schedule_matches_time_embedding():
    """The per-run folded modulation reproduces LN(x)(1 + scale) + shift of the plain block."""
    model = make_model(False)
    dec = model.decoder
    ts = torch.tensor([1000.0, 520.0, 40.0])
    sched = dec.schedule(ts, torch.float32)
    x = torch.randn(2, 64, 64)
    _, tproj = dec.time_embed(ts, torch.float32)
    blk = dec.res_blocks[0]
    for i in range(3):
        shift1, scale1 = (blk.scale_shift_table + tproj[i:i + 1]).unbind(1)[:2]
        want = blk.norm1(x) * (1 + scale1) + shift1
        got = torch.nn.functional.layer_norm(x, (64,), sched[i][0][0], sched[i][0][1], 1e-6)
        assert (got - want).abs().max() <= 1e-5


def test_sampler_objects_own_their_grid_and_update():
    """Euler-Maruyama evaluates at 1 .. 0.04 evenly then steps to 0 (paper, app. F); the ODE's
    uniform Euler steps carry noise exactly to x0 under the constant true velocity eps - x0."""
    em = EulerMaruyama(5, scale_0=1.0, scale_1=0.0)
    assert em.times == pytest.approx([1.0, 0.76, 0.52, 0.28, 0.04]) and em.grid[-1] == 0.0
    assert EulerMaruyama(1).times == [1.0]
    ode = EulerODE(4)
    assert ode.times == [1.0, 0.75, 0.5, 0.25]
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    out = ode(lambda x, t: (eps - x0, None), eps)
    assert (out - x0).abs().max() <= FP32_TOL
    # guidance mixes the two branches' velocities: v_u + cfg (v_c - v_u)
    guided = ode(lambda x, t: (eps - x0, torch.zeros_like(x0)), eps, cfg=2.0)
    assert (guided - (eps - 2 * (eps - x0))).abs().max() <= FP32_TOL
