"""Sampling settings resolved in one place: the user's `SamplingOptions` checked against the
checkpoint, with every other setting taken from the checkpoint's defaults (`eval_settings`), and each
setting's provenance kept for printing. Names as in the paper: `rounds` is MRAR's K, `sampling_steps`
the sampler's steps per round, `cfg` the classifier-free guidance scale(s). The sampler's own
parameters come from its class's declarations (`samplers.param`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import TransDiffError
from ..model.config import ModelConfig
from ..schema import MAX_SAMPLING_STEPS
from ..validate import check_scale
from .eval_settings import CHECKPOINT, FLAG, SettingDefaults, checkpoint_defaults
from .options import OptionValueError, SamplingOptions, parse_numbers
from .samplers import SAMPLERS, Sampler, make_sampler

MODES = ("1step", "mrar")
SAMPLER_DEFAULT = "sampler default"
COMPUTED = "computed"
REFERENCE_STEPS = 10  # the diversity measure's MRAR references: features, not pictures


@dataclass
class SampleSettings:
    mode: str  # "1step" or "mrar"
    rounds: int  # MRAR rounds K actually run (1 in 1-step mode)
    cfg: list[float]  # one guidance scale per round
    sampling_steps: int | list[int]  # steps per round: one count, or one per round
    sampler: str = "em"
    params: dict[str, Any] = field(default_factory=dict)  # the sampler's declared parameters
    cfg_interval: list[float] | None = None  # guidance only for t in [lo, hi]; None: at every t
    sources: dict[str, str] = field(default_factory=dict)  # setting -> flag / checkpoint / table

    @property
    def scale_0(self) -> float | None:
        return self.params.get("scale_0")

    @property
    def scale_1(self) -> float | None:
        return self.params.get("scale_1")

    def round_steps(self) -> list[int]:
        s = self.sampling_steps
        return list(s) if isinstance(s, list) else [s] * self.rounds

    def samplers(self) -> list[Sampler]:
        """One sampler per round (the same object for equal step counts)."""
        made: dict[int, Sampler] = {}
        for s in self.round_steps():
            if s not in made:
                made[s] = make_sampler(self.sampler, s, **self.params)
        return [made[s] for s in self.round_steps()]

    def make_sampler(self) -> Sampler:
        """The first round's sampler (1-step decoding: fuse, `pipe.decode`)."""
        return self.samplers()[0]

    def guided(self, k: int, t: float) -> bool:
        """Whether round k's network evaluation at time t runs the unconditional rows too."""
        if self.cfg[k] == 1.0:
            return False
        lo, hi = self.cfg_interval or (0.0, 1.0)
        return lo <= t <= hi

    def cost(self) -> dict[str, int | None]:
        """Network evaluations per image (NFE; a guided pair in one batch counts once) and the rows
        they compute per image (2 for a guided evaluation, 1 otherwise), over all rounds. None while
        a curvature grid is not yet measured (its times decide which steps are guided)."""
        try:
            samplers = self.samplers()
            times = [s.times for s in samplers]
        except TransDiffError:
            return {"nfe": None, "rows": None}
        rows = sum(2 if self.guided(k, t) else 1 for k, ts in enumerate(times) for t in ts)
        return {"nfe": sum(len(ts) for ts in times), "rows": rows}

    def to_dict(self) -> dict[str, Any]:
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()}
        return {"mode": self.mode, "rounds": self.rounds, "cfg": list(self.cfg),
                "sampling_steps": self.sampling_steps, "sampler": self.sampler, **params,
                "cfg_interval": self.cfg_interval, **self.cost(), "sources": dict(self.sources)}


def sample_settings(config: ModelConfig, options: SamplingOptions | None = None, *,
                    warnings: list[str] | None = None, defaults: SettingDefaults | None = None,
                    **keywords: Any) -> SampleSettings:
    """`options` (or the same as keywords: mode, rounds, sampling_steps, cfg, cfg_interval, sampler,
    scale_0, scale_1, sampler_params) checked against the checkpoint; anything not given comes from
    `defaults` (`eval_settings.checkpoint_defaults`; None: the config's own stored settings). Each
    setting's provenance is kept in `sources`. `warnings` collects notes to print."""
    if options is None:
        options = SamplingOptions.build(**keywords)
    elif keywords:
        raise TypeError(f"give options or keywords, not both ({', '.join(keywords)})")
    o = options.checked()
    notes = warnings if warnings is not None else []
    d = defaults or checkpoint_defaults(config, published=False)
    given = o.given()
    src = {k: v for k, v in d.sources.items() if k not in ("scale_0", "scale_1")}
    mode, rounds = _mode_rounds(config, o, src, notes)
    sampler = o.sampler or d.sampler
    if sampler not in SAMPLERS:
        raise OptionValueError(f"`sampler` must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    scales = _cfg(o.cfg, d.cfg, rounds, mode)
    steps = _steps(o.sampling_steps, d.sampling_steps, rounds, mode)
    params = _params(sampler, o.params, d, src, notes)
    interval = _interval(o.cfg_interval)
    src["cfg_interval"] = FLAG if interval is not None else "tool default (every step)"
    src["nfe"] = src["rows"] = COMPUTED
    for name in given & {"cfg", "sampling_steps", "sampler"}:
        src[name] = FLAG
    return SampleSettings(mode, rounds, scales, steps, sampler, params, interval, src)


def checkpoint_settings(ck: Any, options: SamplingOptions | None = None, **keywords: Any) -> SampleSettings:
    """`sample_settings` for a Checkpoint or CheckpointInfo (anything with `config` and `published`):
    published files get the authors' evaluation table for their size, never their saved args. An
    exported folder's settings also say where the export took them from ("checkpoint: published table ...")."""
    defaults = checkpoint_defaults(ck.config, ck.published)
    exported = ((getattr(ck, "meta", None) or {}).get("evaluation") or {}).get("sources") or {}
    for name, origin in exported.items():
        if defaults.sources.get(name) == CHECKPOINT and origin != CHECKPOINT:
            defaults.sources[name] = f"{CHECKPOINT}: {origin}"
    return sample_settings(ck.config, options, defaults=defaults, **keywords)


def reference_settings(ck: Any, options: SamplingOptions) -> SampleSettings:
    """The settings of the diversity measure's MRAR references: cheap (REFERENCE_STEPS sampler steps)
    unless `sampling_steps` is given; the same for the CLI and the API."""
    if options.sampling_steps is not None:
        return checkpoint_settings(ck, options)
    settings = checkpoint_settings(ck, options.with_values({"sampling_steps": REFERENCE_STEPS}))
    settings.sources["sampling_steps"] = f"diversity default ({REFERENCE_STEPS})"
    return settings


def _mode_rounds(config: ModelConfig, o: SamplingOptions, src: dict[str, str], notes: list[str]) -> tuple[str, int]:
    src["mode"] = FLAG if o.mode else CHECKPOINT
    mode = o.mode or ("mrar" if config.mrar else "1step")
    if mode not in MODES:
        raise OptionValueError(f"`mode` must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "mrar" and not config.mrar:
        raise OptionValueError("`mode` mrar needs an MRAR checkpoint; this one is a 1-step model "
                             "(fine-tune it with `transdiff finetune-mrar`, or use `mode` 1step)")
    rounds = o.rounds
    if mode == "mrar":
        src["rounds"] = CHECKPOINT if rounds is None else FLAG
        rounds = config.mrar_rounds if rounds is None else int(rounds)
        if not 1 <= rounds <= config.mrar_rounds:
            raise OptionValueError(f"`rounds` {rounds}: the checkpoint was trained with {config.mrar_rounds} "
                                 f"MRAR rounds; choose 1-{config.mrar_rounds}")
        return mode, rounds
    if rounds is not None:
        notes.append(f"`rounds` {rounds} is ignored in 1-step mode")
    src["rounds"] = "1-step mode"
    return mode, 1  # an MRAR checkpoint in 1-step mode: its first round only


def _cfg(cfg: Any, default: list[float], rounds: int, mode: str) -> list[float]:
    given = cfg not in (None, "")
    scales = parse_cfg(default[:rounds], rounds) if not given else _parse_cfg(cfg, rounds, mode)
    for v in scales:  # nan / inf would give black images, 1e308 overflows float32
        try:
            check_scale(v, "`cfg`" if given else "the checkpoint's cfg")
        except TransDiffError as e:
            raise OptionValueError(str(e)) from None
    return scales


def _steps(value: Any, default: int, rounds: int, mode: str) -> int | list[int]:
    """One step count for every round, or one per MRAR round; each from 1 to MAX_SAMPLING_STEPS."""
    if value in (None, ""):
        counts = [default]
    else:
        counts = parse_numbers("sampling_steps", value, int)
    for s in counts:
        if s < 1:
            raise OptionValueError(f"`sampling_steps` must be at least 1, not {s}")
        if s > MAX_SAMPLING_STEPS:
            raise OptionValueError(f"`sampling_steps` {s} is out of range: at most {MAX_SAMPLING_STEPS} steps "
                                   "per round")
    if len(counts) == 1:
        return counts[0]
    if mode == "1step":
        raise OptionValueError(f"`sampling_steps` {value!r} gives a list, but 1-step sampling has one round "
                               "(per-round counts are for `mode` mrar)")
    if len(counts) != rounds:
        raise OptionValueError(f"`sampling_steps` {value!r} has {len(counts)} counts: give one or {rounds} "
                               "(one per MRAR round)")
    return counts


def _params(sampler: str, given: dict[str, Any], d: SettingDefaults, src: dict[str, str],
            notes: list[str]) -> dict[str, Any]:
    """The sampler's declared parameters: the user's, else the checkpoint's (its stored Euler-Maruyama
    scales), else the declaration's default."""
    declared = SAMPLERS[sampler].params()
    for name in given:
        if name not in declared:
            if not any(name in cls.params() for cls in SAMPLERS.values()):
                known = ", ".join(sorted({p for cls in SAMPLERS.values() for p in cls.params()}))
                raise OptionValueError(f"unknown sampler parameter `{name}` (known: {known})")
            notes.append(f"`{name}` is ignored by the {sampler} sampler (it takes: {', '.join(declared) or 'none'})")
    from_checkpoint = {"scale_0": d.scale_0, "scale_1": d.scale_1}
    out: dict[str, Any] = {}
    for name, p in declared.items():
        if name in given:
            value, src[name] = given[name], FLAG
            out[name] = p.parse(value) if isinstance(value, str) and p.type is not str else p.check(value)
        elif name in from_checkpoint:
            out[name], src[name] = p.check(from_checkpoint[name]), d.sources[name]
        else:
            out[name], src[name] = p.default, SAMPLER_DEFAULT
    return out


def _interval(value: Any) -> list[float] | None:
    if value in (None, ""):
        return None
    lo_hi = parse_numbers("cfg_interval", value, float)
    if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0:
        raise OptionValueError(f"`cfg_interval` {value!r}: give two times lo,hi with 0 <= lo <= hi <= 1")
    return lo_hi


def _parse_cfg(cfg: str | float | Sequence[float], rounds: int, mode: str) -> list[float]:
    try:
        values = parse_cfg(cfg, rounds)
    except OptionValueError as e:
        if mode == "1step":
            raise OptionValueError(f"`cfg` {cfg!r} gives a list, but 1-step sampling takes one scale "
                                   "(per-round lists are for `mode` mrar)") from e
        raise OptionValueError(f"`cfg` {cfg!r} has the wrong length: give one scale or {rounds} "
                               f"(one per MRAR round)") from e
    except ValueError as e:
        raise OptionValueError(f"`cfg` {cfg!r} is not a number or a comma-separated list of numbers") from e
    return values


def parse_cfg(value: float | str | Sequence[float], rounds: int) -> list[float]:
    """One scale for every MRAR round, or one per round ("1,1.3,1.3,1.3")."""
    if isinstance(value, str):
        value = [float(v) for v in value.split(",") if v.strip()]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (int, float)):
        return [float(value)] * rounds
    values = [float(v) for v in value]
    if len(values) == 1:
        return values * rounds
    if len(values) != rounds:
        raise OptionValueError(f"`cfg` has {len(values)} values but there are {rounds} MRAR rounds")
    return values
