"""Sampling settings resolved in one place: the user's options checked against the checkpoint, with
every other setting taken from the checkpoint's defaults (`eval_settings`), and each setting's
provenance kept for printing. Names as in the paper: `rounds` is MRAR's K, `sampling_steps` the
sampler's network evaluations per image, `cfg` the classifier-free guidance scale(s)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import TransDiffError
from ..model.config import ModelConfig
from ..validate import check_scale
from .eval_settings import CHECKPOINT, FLAG, SettingDefaults, checkpoint_defaults
from .samplers import SAMPLERS, Sampler, make_sampler

MODES = ("1step", "mrar")


@dataclass
class SampleSettings:
    mode: str  # "1step" or "mrar"
    rounds: int  # MRAR rounds K actually run (1 in 1-step mode)
    cfg: list[float]  # one guidance scale per round
    sampling_steps: int
    scale_0: float
    scale_1: float
    sampler: str = "em"
    sources: dict[str, str] = field(default_factory=dict)  # setting -> flag / checkpoint / table

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def make_sampler(self) -> Sampler:
        return make_sampler(self.sampler, self.sampling_steps, self.scale_0, self.scale_1)


def sample_settings(config: ModelConfig, *, mode: str | None = None, rounds: int | None = None,
                    sampling_steps: int | None = None, cfg: str | float | Sequence[float] | None = None,
                    scale_0: float | None = None, scale_1: float | None = None, sampler: str | None = None,
                    warnings: list[str] | None = None, defaults: SettingDefaults | None = None) -> SampleSettings:
    """The user's options checked against the checkpoint; anything not given comes from `defaults`
    (`eval_settings.checkpoint_defaults`; None: the config's own stored settings). Each setting's
    provenance is kept in `sources`. `warnings` collects notes to print."""
    notes = warnings if warnings is not None else []
    d = defaults or checkpoint_defaults(config, published=False)
    src = dict(d.sources)
    src["mode"] = FLAG if mode else CHECKPOINT
    mode = mode or ("mrar" if config.mrar else "1step")
    if mode not in MODES:
        raise TransDiffError(f"`mode` must be one of {', '.join(MODES)}, not {mode!r}")
    if sampler is not None and sampler not in SAMPLERS:
        raise TransDiffError(f"`sampler` must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    if mode == "mrar" and not config.mrar:
        raise TransDiffError("`mode` mrar needs an MRAR checkpoint; this one is a 1-step model "
                             "(fine-tune it with `transdiff finetune-mrar`, or use `mode` 1step)")
    if mode == "mrar":
        src["rounds"] = CHECKPOINT if rounds is None else FLAG
        rounds = config.mrar_steps if rounds is None else rounds
        if not 1 <= rounds <= config.mrar_steps:
            raise TransDiffError(f"`rounds` {rounds}: the checkpoint was trained with {config.mrar_steps} "
                                 f"MRAR rounds; choose 1-{config.mrar_steps}")
    else:
        if rounds is not None:
            notes.append(f"`rounds` {rounds} is ignored in 1-step mode")
        rounds = 1  # an MRAR checkpoint in 1-step mode: its first round only
        src["rounds"] = "1-step mode"
    if cfg is None or cfg == "":
        scales = parse_cfg(d.cfg[:rounds], rounds)
    else:
        scales = _parse_cfg(cfg, rounds, mode)
    s = d.sampling_steps if sampling_steps is None else sampling_steps
    if s < 1:
        raise TransDiffError(f"`sampling_steps` must be at least 1, not {s}")
    for v in scales:  # nan / inf would give black images, 1e308 overflows float32
        check_scale(v, "`cfg`" if cfg not in (None, "") else "the checkpoint's cfg")
    s0 = check_scale(d.scale_0 if scale_0 is None else scale_0, "`scale_0`")
    s1 = check_scale(d.scale_1 if scale_1 is None else scale_1, "`scale_1`")
    for name, given in (("cfg", cfg not in (None, "")), ("scale_0", scale_0 is not None),
                        ("scale_1", scale_1 is not None), ("sampling_steps", sampling_steps is not None),
                        ("sampler", sampler is not None)):
        if given:
            src[name] = FLAG
    return SampleSettings(mode, rounds, scales, s, s0, s1, sampler or d.sampler, src)


def checkpoint_settings(ck: Any, **options: Any) -> SampleSettings:
    """`sample_settings` for a Checkpoint or CheckpointInfo (anything with `config` and `published`):
    published files get the authors' evaluation table for their size, never their saved args. An
    exported folder's settings also say where the export took them from ("checkpoint: published table ...")."""
    defaults = checkpoint_defaults(ck.config, ck.published)
    exported = ((getattr(ck, "meta", None) or {}).get("evaluation") or {}).get("sources") or {}
    for name, origin in exported.items():
        if defaults.sources.get(name) == CHECKPOINT and origin != CHECKPOINT:
            defaults.sources[name] = f"{CHECKPOINT}: {origin}"
    return sample_settings(ck.config, defaults=defaults, **options)


def _parse_cfg(cfg: str | float | Sequence[float], rounds: int, mode: str) -> list[float]:
    try:
        values = parse_cfg(cfg, rounds)
    except ValueError as e:
        raise TransDiffError(f"`cfg` {cfg!r} is not a number or a comma-separated list of numbers") from e
    except TransDiffError as e:
        if mode == "1step":
            raise TransDiffError(f"`cfg` {cfg!r} gives a list, but 1-step sampling takes one scale "
                                 "(per-round lists are for `mode` mrar)") from e
        raise TransDiffError(f"`cfg` {cfg!r} has the wrong length: give one scale or {rounds} "
                             f"(one per MRAR round)") from e
    return values


def parse_cfg(value: float | str | Sequence[float], rounds: int) -> list[float]:
    """One scale for every MRAR round, or one per round ("1,1.3,1.3,1.3")."""
    if isinstance(value, str):
        value = [float(v) for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)):
        return [float(value)] * rounds
    values = [float(v) for v in value]
    if len(values) == 1:
        return values * rounds
    if len(values) != rounds:
        raise TransDiffError(f"`cfg` has {len(values)} values but there are {rounds} MRAR rounds")
    return values
