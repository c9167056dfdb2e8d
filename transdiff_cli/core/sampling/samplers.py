"""The samplers of the rectified flow: objects that own their time grid and their update rule.

x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0, t runs from 1 (noise) to 0 (data).
A sampler is given a velocity function (`core.flow.VelocityFn`) and the initial noise; the model,
guidance batching and MRAR rounds are the caller's. `times` lists every time at which the network
is evaluated, in order (so NFE = len(times)), which lets a caller precompute everything that depends
only on t (the decoder's time modulation) once per run.

Each sampler is a frozen dataclass registered in `SAMPLERS`: `sampling_steps` (steps on its grid),
then its own parameters declared with `param` (type from the annotation, default, help, range), the
way a diffusers scheduler carries its config. Settings, the CLI (`--sampler-param NAME=VALUE`), the
API (`sampler_params=`) and `fid --sweep NAME=...` read those declarations, so a new parameter is a
field here; a new sampler is one class and its `@register`.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar

import torch

from ..errors import TransDiffError
from ..flow import VelocityFn
from . import grids
from .options import OptionTypeError, OptionValueError

Generators = torch.Generator | Sequence[torch.Generator] | None  # one, or one per image

T_MIN = 0.04  # last Euler-Maruyama time before the final deterministic step (paper, app. F)


def guided_velocity(velocity: VelocityFn, x: torch.Tensor, t: float, cfg: float) -> torch.Tensor:
    """v_uncond + cfg (v_cond - v_uncond). The reverse-SDE drift with w(t) = 2t is d = v - t * score,
    score = -((1 - t) v + x) / t, i.e. d = (2 - t) v + x: affine in v with the same x term in both
    branches, so guiding the velocity equals guiding the drift: d_u + cfg (d_c - d_u) = (2 - t) v_cfg + x.
    A velocity function that returns no unconditional branch (guidance off at t) gives v_cond."""
    v_cond, v_uncond = velocity(x, t)
    if v_uncond is None or cfg == 1.0:
        return v_cond
    return torch.lerp(v_uncond, v_cond, cfg)


def draw_noise(out: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal draws into `out` (the same draws as a fresh randn); with a list of
    generators, row i comes from generator i."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(out.shape, generator=generator, out=out)
    if len(generator) != out.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {out.shape[0]}")
    for row, g in zip(out, generator):
        torch.randn(row.shape, generator=g, out=row)
    return out


# --------------------------------------------------------------------------- declared parameters
@dataclass(frozen=True)
class Param:
    """A sampler parameter as declared on its class."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None

    def parse(self, text: str) -> Any:
        """The value of a command-line string (`--sampler-param NAME=VALUE`, `fid --sweep`)."""
        try:
            return self.check(self.type(text.strip()) if self.type is not str else text.strip())
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(self.type, "a string")
            raise OptionValueError(f"sampler parameter `{self.name}` {text!r} is not {kind}") from None

    def check(self, value: Any) -> Any:
        """`value` of the declared type (an int for a float) and within the declared range."""
        ok = isinstance(value, self.type) or (self.type is float and isinstance(value, int))
        if not ok or isinstance(value, bool):
            raise OptionTypeError(f"sampler parameter `{self.name}` must be {self.type.__name__}, "
                                   f"not {type(value).__name__} ({value!r})")
        if self.choices is not None and value not in self.choices:
            raise OptionValueError(f"sampler parameter `{self.name}` must be one of {', '.join(self.choices)}, "
                                 f"not {value!r}")
        if self.type in (int, float):
            value = self.type(value)
            if not math.isfinite(value) or (self.low is not None and value < self.low) or \
                    (self.high is not None and value > self.high):
                raise OptionValueError(f"sampler parameter `{self.name}` {value!r} is out of range: give a number "
                                     f"from {self.low:g} to {self.high:g}")
        return value


def param(default: Any, help: str, *, choices: Sequence[str] | None = None, low: float | None = None,
          high: float | None = None) -> Any:
    """Declare a sampler parameter: a dataclass field whose metadata the settings layer reads."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "low": low, "high": high}
    return field(default=default, metadata={"param": meta})


# --------------------------------------------------------------------------- samplers
class Sampler:
    """`sampling_steps` steps from t = 1 to t = 0. The state is updated in place (one buffer, the
    caller's noise untouched), in the noise's dtype. One evaluation per time in `times` unless a
    subclass overrides `__call__` (then `times` still lists every evaluation, in order)."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    sampling_steps: int

    @classmethod
    def params(cls) -> dict[str, Param]:
        """The declared parameters, by name (`sampling_steps` and internal fields excluded)."""
        hints = typing.get_type_hints(cls)
        out = {}
        for f in fields(cls):  # type: ignore[arg-type]
            meta = f.metadata.get("param")
            if meta is not None:
                kind = hints[f.name]
                out[f.name] = Param(f.name, kind, f.default, meta["help"], meta["choices"], meta["low"], meta["high"])
        return out

    @property
    def times(self) -> list[float]:
        """The times at which the network is evaluated, in order."""
        raise NotImplementedError

    @classmethod
    def steps_for_nfe(cls, nfe: int) -> int:
        """The most steps whose evaluations fit in a budget of `nfe` (at least one step)."""
        return max(1, nfe)

    @property
    def nfe(self) -> int:
        """Network evaluations per image (a guided pair batched together counts once)."""
        return len(self.times)

    def step(self, x: torch.Tensor, i: int, v: torch.Tensor, generator: Generators) -> torch.Tensor:
        """Update x in place from time times[i] to the next with the (guided) velocity v."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, velocity: VelocityFn, noise: torch.Tensor, cfg: float = 1.0,
                 generator: Generators = None) -> torch.Tensor:
        x = noise.clone()
        for i, t in enumerate(self.times):
            self.step(x, i, guided_velocity(velocity, x, t, cfg), generator)
        return x


SAMPLERS: dict[str, type[Sampler]] = {}


def register(cls: type[Sampler]) -> type[Sampler]:
    """Add a sampler class to `SAMPLERS` under its `name`."""
    SAMPLERS[cls.name] = cls
    return cls


@register
@dataclass(frozen=True)
class EulerMaruyama(Sampler):
    """The paper's Euler-Maruyama sampler with scales (appendix F): scale_0 scales the drift, scale_1
    the injected noise; the last step (0.04 -> 0) is plain Euler. Every step's coefficients are
    folded into Python floats: x <- (1 + a) x + a (2 - t) v_cfg (+ noise), a = scale_0 dt.
    `generator` may be one generator per image, so that an image does not depend on its batch."""

    sampling_steps: int
    scale_0: float = param(1.0, "drift scale", low=0.0, high=1e4)
    scale_1: float = param(1.0, "noise scale", low=0.0, high=1e4)
    name = "em"
    summary = "the paper's Euler-Maruyama with scales (1 evaluation per step)"

    @cached_property
    def grid(self) -> list[float]:
        """t_0 = 1 > ... > t_{S-1} = 0.04 evenly spaced, then t_S = 0."""
        s = self.sampling_steps
        if s < 2:
            return [1.0, 0.0]
        return [1.0 + (T_MIN - 1.0) * i / (s - 1) for i in range(s)] + [0.0]

    @cached_property
    def times(self) -> list[float]:
        return self.grid[:-1]

    def step(self, x: torch.Tensor, i: int, v: torch.Tensor, generator: Generators) -> torch.Tensor:
        ts = self.grid
        t, dt = ts[i], ts[i + 1] - ts[i]
        last = i == len(ts) - 2
        a = dt if last else self.scale_0 * dt
        x.mul_(1 + a).add_(v, alpha=a * (2 - t))
        if not last and self.scale_1 != 0.0:
            xi = draw_noise(torch.empty_like(x), generator)
            x.add_(xi, alpha=self.scale_1 * math.sqrt(2 * t) * math.sqrt(abs(dt)))
        return x


@dataclass(frozen=True)
class GridSampler(Sampler):
    """A sampler on one of `grids`' time grids, t_0 = 1 > ... > t_n = 0 (n = sampling_steps).
    `profile` is the measured curvature a `curvature` grid follows (filled in by the sampling loop)."""

    sampling_steps: int
    grid: str = param("uniform", "time grid: uniform, shifted or curvature", choices=grids.GRIDS)
    shift: float = param(3.0, "the shifted grid's s in t' = s t / (1 + (s - 1) t)", low=1e-3, high=1e3)
    profile: tuple[float, ...] | None = None

    @cached_property
    def grid_times(self) -> list[float]:
        n = self.sampling_steps
        if self.grid == "shifted":
            return grids.shifted(n, self.shift)
        if self.grid == "curvature":
            if self.profile is None:
                raise TransDiffError("the curvature grid needs a measured profile (`curvature.with_profile`)")
            return grids.density_grid(n, self.profile)
        return grids.uniform(n)

    @cached_property
    def deltas(self) -> list[float]:
        """The signed step sizes t_{i+1} - t_i (exactly -1/n on the uniform grid)."""
        if self.grid == "uniform":
            return [-1.0 / self.sampling_steps] * self.sampling_steps
        ts = self.grid_times
        return [b - a for a, b in zip(ts, ts[1:])]


@register
@dataclass(frozen=True)
class EulerODE(GridSampler):
    """Deterministic Euler on the probability-flow ODE dx/dt = v, t: 1 -> 0."""

    name = "ode"
    summary = "Euler on the probability-flow ODE (1 evaluation per step)"

    @cached_property
    def times(self) -> list[float]:
        return self.grid_times[:-1]

    def step(self, x: torch.Tensor, i: int, v: torch.Tensor, generator: Generators) -> torch.Tensor:
        return x.add_(v, alpha=self.deltas[i])


@register
@dataclass(frozen=True)
class Heun(GridSampler):
    """Heun's second-order method on the probability-flow ODE dx/dt = v(x, t), t: 1 -> 0 (EDM,
    Karras et al. 2022): with h = t_{i+1} - t_i,
        x' = x + h v(x, t_i),   x <- x + h/2 (v(x, t_i) + v(x', t_{i+1})),
    and the last step plain Euler. n steps cost 2n - 1 evaluations; the trapezoidal rule makes each
    step exact when v is linear in t along the path."""

    name = "heun"
    summary = "Heun (2nd order) on the probability-flow ODE (2 evaluations per step, the last 1)"

    @classmethod
    def steps_for_nfe(cls, nfe: int) -> int:
        return max(1, (nfe + 1) // 2)  # n steps cost 2n - 1

    @cached_property
    def times(self) -> list[float]:
        ts = self.grid_times
        n = len(ts) - 1
        return [u for i in range(n - 1) for u in (ts[i], ts[i + 1])] + [ts[n - 1]]

    @torch.no_grad()
    def __call__(self, velocity: VelocityFn, noise: torch.Tensor, cfg: float = 1.0,
                 generator: Generators = None) -> torch.Tensor:
        x = noise.clone()
        for i in range(self.sampling_steps):
            self.advance(velocity, x, i, cfg, generator)
        return x

    def advance(self, velocity: VelocityFn, x: torch.Tensor, i: int, cfg: float = 1.0,
                generator: Generators = None) -> torch.Tensor:
        """x (in place) from grid_times[i] to grid_times[i + 1]: a Heun step, the last plain Euler."""
        t, h = self.grid_times[i], self.deltas[i]
        d = guided_velocity(velocity, x, t, cfg)
        if i == self.sampling_steps - 1:
            return x.add_(d, alpha=h)
        d2 = guided_velocity(velocity, torch.add(x, d, alpha=h), self.grid_times[i + 1], cfg)
        return x.add_(d.add_(d2), alpha=h / 2)


@register
@dataclass(frozen=True)
class StochasticHeun(Heun):
    """The paper's reverse SDE with scales, integrated by the stochastic Heun method.

    Euler-Maruyama discretises dx = s0 f(x, t) dt + s1 g(t) dW (t: 1 -> 0, dt < 0) with the drift
    f = x + (2 - t) v(x, t) (see `guided_velocity`) and g(t) = sqrt(2 t). The noise does not depend
    on x, so Ito and Stratonovich agree and Heun's predictor-corrector applies with one shared draw
    dW = sqrt(|h|) xi per step (strong order 1, against EM's 1/2; the drift to second order):
        x'  = x + h s0 f(x, t_i)                                + s1 g_bar dW
        x  <- x + h/2 s0 (f(x, t_i) + f(x', t_{i+1}))          + s1 g_bar dW,
    g_bar = (g(t_i) + g(t_{i+1})) / 2, the trapezoidal rule for the noise's time dependence. The
    last step is a plain Euler step of the probability-flow ODE (x <- x + h v): deterministic, and
    exact on straight paths, where an SDE-drift step without its noise would not be."""

    scale_0: float = param(1.0, "drift scale", low=0.0, high=1e4)
    scale_1: float = param(1.0, "noise scale", low=0.0, high=1e4)
    name = "em-heun"
    summary = "the paper's SDE with scales by stochastic Heun (2 evaluations per step, the last 1)"

    def advance(self, velocity: VelocityFn, x: torch.Tensor, i: int, cfg: float = 1.0,
                generator: Generators = None) -> torch.Tensor:
        """x (in place) from grid_times[i] to grid_times[i + 1] (see the class)."""
        t, t1, h = self.grid_times[i], self.grid_times[i + 1], self.deltas[i]
        s0, s1 = self.scale_0, self.scale_1
        v = guided_velocity(velocity, x, t, cfg)
        if i == self.sampling_steps - 1:
            return x.add_(v, alpha=h)
        f = v.mul_(2 - t).add_(x)
        kick = None
        if s1 != 0.0:
            g_bar = (math.sqrt(2 * t) + math.sqrt(2 * t1)) / 2
            kick = draw_noise(torch.empty_like(x), generator).mul_(s1 * g_bar * math.sqrt(abs(h)))
        xp = torch.add(x, f, alpha=h * s0)
        if kick is not None:
            xp.add_(kick)
        f2 = guided_velocity(velocity, xp, t1, cfg).mul_(2 - t1).add_(xp)
        x.add_(f.add_(f2), alpha=h * s0 / 2)
        return x if kick is None else x.add_(kick)


def make_sampler(name: str, sampling_steps: int, **params: Any) -> Sampler:
    """The sampler called `name` with its declared parameters; parameters it does not declare are
    dropped (the checkpoint's scales mean nothing to the ODE)."""
    cls = SAMPLERS.get(name)
    if cls is None:
        raise OptionValueError(f"`sampler` must be one of {', '.join(SAMPLERS)}, not {name!r}")
    known = cls.params()
    extra = {k: v for k, v in params.items() if k == "profile" and issubclass(cls, GridSampler)}
    return cls(sampling_steps, **{k: v for k, v in params.items() if k in known}, **extra)
