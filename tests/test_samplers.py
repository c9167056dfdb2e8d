"""The few-step samplers: their grids and updates (exact where the solution is known), guidance on an
interval (no unconditional rows off it), per-round step counts, NFE accounting, and the registry."""

import math

import pytest
import torch

from transdiff_cli.core.model.config import preset
from transdiff_cli.core.model.transdiff import TransDiff
from transdiff_cli.core.sampling import grids
from transdiff_cli.core.sampling.curvature import measure_curvature, with_profile
from transdiff_cli.core.sampling.loop import run_sampler, sample_rounds
from transdiff_cli.core.sampling.samplers import SAMPLERS, EulerODE, Heun, StochasticHeun, make_sampler
from transdiff_cli.core.sampling.settings import sample_settings

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def tiny_model(mrar=False) -> TransDiff:
    config = preset("tiny", width=32, heads=2, encoder_depth=1, decoder_depth=1, num_classes=3,
                    latent_channels=1, latent_size=4, patch_size=1, buffer_size=4, mrar=mrar, cfg=2.0)
    torch.manual_seed(0)
    model = TransDiff(config).eval()
    with torch.no_grad():
        for p in model.decoder.final_layer.parameters():
            p.normal_(std=0.1)
    return model


# ------------------------------------------------------------------ grids
def test_grids():
    assert grids.uniform(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert grids.shifted(4, 1.0) == pytest.approx(grids.uniform(4))
    s = grids.shifted(4, 3.0)
    assert s[0] == 1.0 and s[-1] == 0.0 and s[2] == pytest.approx(0.75)  # 3 * .5 / (1 + 2 * .5)
    assert all(a > b for a, b in zip(s, s[1:]))
    assert grids.density_grid(4, [1.0] * 8) == pytest.approx(grids.uniform(4))
    # all the weight in the high-noise half (t > 0.5): most steps go there
    g = grids.density_grid(8, [1.0] * 4 + [0.0] * 4, floor=0.0)
    assert g[0] == 1.0 and g[-1] == 0.0 and g[-2] == pytest.approx(1 - 7 / 16) and all(a > b for a, b in zip(g, g[1:]))
    assert EulerODE(4, grid="shifted", shift=3.0).times == pytest.approx(s[:-1])


# ------------------------------------------------------------------ updates
def test_heun_grid_and_nfe():
    h = Heun(4)
    assert h.times == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25] and h.nfe == 7  # 2n - 1
    assert Heun(1).times == [1.0] and StochasticHeun(3).nfe == 5


def test_heun_exact_on_a_velocity_linear_in_t():
    """dx/dt = a + b t: each Heun step (the trapezoidal rule) is exact; the last step is plain Euler."""
    a, b = torch.randn(2, 5), torch.randn(2, 5)
    x1 = torch.randn(2, 5)
    sampler = Heun(5, grid="shifted", shift=2.0)
    out = sampler(lambda x, t: (a + b * t, None), x1)
    ts = sampler.grid_times
    t_last = ts[-2]
    exact = x1 + a * (t_last - 1.0) + b * (t_last ** 2 - 1.0) / 2  # the solution at t_{n-1}
    want = exact + (0.0 - t_last) * (a + b * t_last)
    assert (out - want).abs().max() <= TOL
    # a straight path (the true velocity eps - x0 of one data point) is carried exactly to x0
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    for name in ("ode", "heun"):
        assert (make_sampler(name, 3)(lambda x, t: (eps - x0, None), eps) - x0).abs().max() <= TOL


def test_heun_is_second_order():
    """dx/dt = x (x depends on the state): the error at t = 0 shrinks ~4x per halving of the step
    (Euler: ~2x)."""
    x1 = torch.ones(1)
    exact = math.exp(-1.0)

    def err(cls, n):
        return abs(cls(n)(lambda x, t: (x.clone(), None), x1).item() - exact)

    assert err(Heun, 16) / err(Heun, 32) > 3.5
    assert err(EulerODE, 16) / err(EulerODE, 32) < 2.5


def test_stochastic_heun_step():
    """The noise: one draw shared by predictor and corrector, scaled by s1 (g(t_i) + g(t_i+1)) / 2
    sqrt|h|; without noise the drift f = x + (2 - t) v is integrated to second order; the last step is
    the probability-flow Euler step."""
    x = torch.randn(4, 3)
    sh = StochasticHeun(4, scale_0=0.0, scale_1=0.7)
    got = sh.advance(lambda x, t: (torch.zeros_like(x), None), x.clone(), 1, generator=torch.Generator().manual_seed(5))
    t, t1 = 0.75, 0.5
    xi = torch.randn(4, 3, generator=torch.Generator().manual_seed(5))
    want = x + xi * 0.7 * (math.sqrt(2 * t) + math.sqrt(2 * t1)) / 2 * math.sqrt(0.25)
    assert (got - want).abs().max() <= TOL
    # deterministic drift, v = c constant: dx/dt = x + (2 - t) c from t0 to t0 + h; local error O(h^3)
    c = torch.tensor([0.3])

    def one_step_error(n):
        s = StochasticHeun(n, scale_1=0.0)
        t0, h = s.grid_times[0], s.deltas[0]
        out = s.advance(lambda x, t: (c.expand_as(x).clone(), None), torch.ones(1), 0)
        # exact: x(t) = e^{t - t0} (x0 - c (t0 - 1)) + c (t - 1)   [solves x' = x + (2 - t) c]
        tt = t0 + h
        return abs(out.item() - (math.exp(tt - t0) * (1 - c.item() * (t0 - 1)) + c.item() * (tt - 1)))

    assert one_step_error(8) / one_step_error(16) > 6.0
    last = StochasticHeun(2).advance(lambda x, t: (x / t, None), torch.ones(2), 1)  # v = x / t: data at 0
    assert last.abs().max() <= TOL


# ------------------------------------------------------------------ guidance interval and NFE
class CountingModel:
    """model.velocity's contract with a record of the rows each evaluation computes."""

    def __init__(self):
        self.calls = []

    def velocity(self, c, batch, guided, times):
        assert c.shape[0] == (2 * batch if guided else batch)  # the null rows only when guided

        def v(x, t):
            self.calls.append((t, c.shape[0]))
            assert times is None or t in times
            out = torch.zeros(c.shape[0], *x.shape[1:])
            return (out[:batch], out[batch:]) if guided else (out, None)

        return v


@pytest.mark.parametrize("name", ["ode", "heun", "em-heun", "em"])
def test_guidance_off_interval_computes_no_null_rows(name):
    settings = sample_settings(tiny_model().config, sampler=name, sampling_steps=5, cfg=2.0, cfg_interval=(0.3, 0.8))
    sampler = settings.make_sampler()
    model, b = CountingModel(), 3
    run_sampler(model, torch.zeros(2 * b, 4, 8), torch.zeros(b, 4, 1), sampler, 2.0, interval=settings.cfg_interval)
    assert [t for t, _ in model.calls] == sampler.times
    for t, rows in model.calls:
        assert rows == (2 * b if 0.3 <= t <= 0.8 else b)
    cost = settings.cost()
    assert cost["nfe"] == len(model.calls) == sampler.nfe
    assert cost["rows"] * b == sum(rows for _, rows in model.calls) < 2 * b * sampler.nfe


def test_interval_rows_through_the_real_decoder():
    """The fast (cached) and the plain path agree with an interval, Heun's intermediate times
    included, and the decoder sees B rows off the interval, 2B on it."""
    model = tiny_model()
    labels, noise = torch.tensor([0, 2]), torch.randn(2, 16, 1, generator=torch.Generator().manual_seed(1))
    kw = dict(sampler="heun", sampling_steps=4, cfg=3.0, cfg_interval="0.4,0.9", noise=noise)
    rows = []
    step = model.decoder.forward_step

    def counting(x, *args, **kwargs):
        rows.append(x.shape[0] * args[2])  # x is B rows; `copies` duplicates them for guidance
        return step(x, *args, **kwargs)

    model.decoder.forward_step = counting
    fast = sample_rounds(model, labels, cache=True, **kw)[-1]
    plain = sample_rounds(model, labels, cache=False, **kw)[-1]
    assert (fast - plain).abs().max() <= TOL
    settings = sample_settings(model.config, sampler="heun", sampling_steps=4, cfg=3.0, cfg_interval="0.4,0.9")
    assert sum(rows) == 2 * settings.cost()["rows"] and len(rows) == settings.cost()["nfe"] == 7
    assert sorted(set(rows)) == [2, 4]


def test_per_round_steps():
    model = tiny_model(mrar=True)
    settings = sample_settings(model.config, sampling_steps="2,2,3,5", cfg=1.0, sampler="heun")
    assert settings.round_steps() == [2, 2, 3, 5] and settings.sampling_steps == [2, 2, 3, 5]
    assert [s.nfe for s in settings.samplers()] == [3, 3, 5, 9] and settings.cost() == {"nfe": 20, "rows": 20}
    calls = []
    step = model.decoder.forward_step
    model.decoder.forward_step = lambda x, *a, **k: calls.append(x.shape[0]) or step(x, *a, **k)
    out = sample_rounds(model, torch.tensor([0, 1]), settings)
    assert len(out) == 4 and len(calls) == 20
    with pytest.raises(ValueError, match="one or 4"):
        sample_settings(model.config, sampling_steps=[2, 3])
    with pytest.raises(ValueError, match="1-step sampling has one round"):
        sample_settings(tiny_model().config, sampling_steps="2,3")


# ------------------------------------------------------------------ curvature grid
def test_curvature_grid_is_measured_and_recorded():
    model = tiny_model()
    curv = measure_curvature(model, 2.0, images=2, steps=8)
    assert len(curv) == 8 and all(math.isfinite(c) and c >= 0 for c in curv)
    settings = sample_settings(model.config, sampler="heun", sampling_steps=3, sampler_params={"grid": "curvature"})
    assert settings.cost()["nfe"] is None  # the grid is not known before the measurement
    with_profile(model, settings)
    assert len(settings.params["profile"]) == 32 and settings.cost()["nfe"] == 5
    ts = settings.make_sampler().grid_times
    assert ts[0] == 1.0 and ts[-1] == 0.0 and all(a > b for a, b in zip(ts, ts[1:]))
    assert settings.to_dict()["profile"] == list(settings.params["profile"])
    assert sample_rounds(model, torch.tensor([1]), settings)[-1].isfinite().all()


# ------------------------------------------------------------------ registry
def test_registry_declares_parameters():
    assert {"em", "ode", "heun", "em-heun"} <= set(SAMPLERS)
    for name, cls in SAMPLERS.items():
        assert cls.name == name and cls.summary
        for p in cls.params().values():
            assert p.help and p.check(p.default) == p.default
        assert make_sampler(name, 3).nfe == len(make_sampler(name, 3).times)
    with pytest.raises(ValueError, match="out of range"):
        sample_settings(tiny_model().config, sampler="heun", sampler_params={"shift": -1.0})
    with pytest.raises(ValueError, match="one of uniform"):
        sample_settings(tiny_model().config, sampler="heun", sampler_params={"grid": "bent"})
    with pytest.raises(TypeError, match="`shift` must be float"):
        sample_settings(tiny_model().config, sampler="heun", sampler_params={"shift": [1]})
    notes = []
    s = sample_settings(tiny_model().config, sampler="ode", scale_0=0.5, warnings=notes)
    assert "scale_0" not in s.params and "ignored by the ode sampler" in notes[0]
