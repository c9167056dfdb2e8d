"""`SamplingOptions`: what a user asks of a sampling run, as one value from the edge (CLI flags,
API keywords, a sweep point) to `settings.sample_settings`. None means "the checkpoint's default"
(for a published file, the authors' table). Types are checked here, so a wrong type fails before any
work with a TypeError naming the argument (also one line on the command line)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import TransDiffError


class OptionTypeError(TransDiffError, TypeError):
    """A sampling option of the wrong type: a TypeError for the API, one line for the CLI."""


class OptionValueError(TransDiffError, ValueError):
    """A sampling option out of range: a ValueError for the API, one line for the CLI."""


@dataclass(frozen=True)
class SamplingOptions:
    mode: str | None = None  # "1step" or "mrar"
    rounds: int | None = None  # MRAR's K
    sampling_steps: int | Sequence[int] | str | None = None  # one count, or one per MRAR round ("8,8,8,50")
    cfg: float | Sequence[float] | str | None = None  # one guidance scale, or one per round
    cfg_interval: Sequence[float] | str | None = None  # guidance only for t in [lo, hi] ("0.1,0.8")
    sampler: str | None = None  # a name in `samplers.SAMPLERS`
    params: Mapping[str, Any] = field(default_factory=dict)  # the sampler's declared parameters

    @classmethod
    def build(cls, *, scale_0: float | None = None, scale_1: float | None = None,
              sampler_params: Mapping[str, Any] | None = None, **options: Any) -> SamplingOptions:
        """From keywords as the CLI and the API spell them: the Euler-Maruyama scales have their own
        names, every other sampler parameter goes in `sampler_params`."""
        if sampler_params is not None and not isinstance(sampler_params, Mapping):
            raise OptionTypeError(f"`sampler_params` must be a dict, not {type(sampler_params).__name__}")
        params = dict(sampler_params or {})
        for name, value in (("scale_0", scale_0), ("scale_1", scale_1)):
            if value is not None:
                params[name] = value
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        return cls(**options, params=params).checked()

    def with_values(self, values: Mapping[str, Any]) -> SamplingOptions:
        """These options with some replaced (a sweep point): option names or sampler parameters."""
        own = {f.name for f in fields(self)} - {"params"}
        params = {**self.params, **{k: v for k, v in values.items() if k not in own}}
        return replace(self, **{k: v for k, v in values.items() if k in own}, params=params).checked()

    def given(self) -> set[str]:
        """The names the user set (options and sampler parameters), for provenance."""
        out = {f.name for f in fields(self) if f.name != "params" and getattr(self, f.name) not in (None, "")}
        return out | set(self.params)

    def checked(self) -> SamplingOptions:
        """Raise OptionTypeError naming the first option of the wrong type."""
        _type("mode", self.mode, str)
        _type("sampler", self.sampler, str)
        _type("rounds", self.rounds, numbers.Integral)
        _numbers("sampling_steps", self.sampling_steps, numbers.Integral, "an int or a list of ints")
        _numbers("cfg", self.cfg, numbers.Real, "a number or a list of numbers")
        _numbers("cfg_interval", self.cfg_interval, numbers.Real, "a pair of numbers (lo, hi)")
        if not isinstance(self.params, Mapping):
            raise OptionTypeError(f"`sampler_params` must be a dict, not {type(self.params).__name__}")
        return self


def _type(name: str, value: Any, kind: type) -> None:
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise OptionTypeError(f"`{name}` must be {'an int' if kind is numbers.Integral else kind.__name__}, "
                              f"not {type(value).__name__} ({value!r})")


def _numbers(name: str, value: Any, kind: type, what: str) -> None:
    """None, a string (parsed later), one number of `kind`, or a sequence of them."""
    if value is None or isinstance(value, str):
        return
    items = value if isinstance(value, Sequence) else [value]
    if hasattr(value, "tolist") and not isinstance(value, Sequence):  # a tensor or array
        items = value.tolist()
        items = items if isinstance(items, list) else [items]
    if not all(isinstance(v, kind) and not isinstance(v, bool) for v in items):
        raise OptionTypeError(f"`{name}` must be {what}, not {value!r}")


def parse_numbers(name: str, value: Any, kind: type) -> list:
    """A comma-separated string or a sequence as a list of `kind` (int or float)."""
    if isinstance(value, str):
        try:
            return [kind(v.strip()) for v in value.replace(":", ",").split(",") if v.strip()]
        except ValueError:
            what = "integers" if kind is int else "numbers"
            raise OptionValueError(f"`{name}` {value!r} is not a comma-separated list of {what}") from None
    if hasattr(value, "tolist"):
        value = value.tolist()
    return [kind(v) for v in (value if isinstance(value, Sequence) else [value])]
