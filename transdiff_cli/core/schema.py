"""The typed schema of the model and training configurations: every key's type and allowed range.

A configuration is checked key by key before a dataclass is built from it, whatever it came from
(a size preset, a YAML file, a flag, a run folder's config.yaml or a checkpoint's config.json).
A bad value is one line that names the key, the value and where it came from. Relations between
keys (heads divide the width, the warm-up is shorter than the run, ...) are checked by the
configurations themselves (`ModelConfig.validate`, `TrainConfig.validate`), which use `fail` to
word them the same way. docs/configuration.md lists the same table for users.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import TransDiffError
from .validate import SCALE_MAX, SEED_MAX

# where a value came from, keyed by config key: FLAG (the command line or an API argument) or a
# file ("cfg.yaml:3"); keys without an entry came from a preset or a default
Sources = Mapping[str, str]
FLAG = "the command line"

# keys renamed so that each word has one meaning (docs/architecture.md#words), old -> new: YAML files,
# run folders and checkpoints written before a rename still read
RENAMED_KEYS = {"sample_steps": "grid_sampling_steps", "mrar_steps": "mrar_rounds"}


def with_new_keys(values: Any) -> Any:
    """A mapping with each old key spelt as its new name (the new name wins when both are given);
    anything else is returned as it is, for the checks to refuse."""
    if not isinstance(values, Mapping) or not RENAMED_KEYS.keys() & values.keys():
        return values
    out = {RENAMED_KEYS.get(k, k): v for k, v in values.items() if k in RENAMED_KEYS}
    out.update({k: v for k, v in values.items() if k not in RENAMED_KEYS})
    return out


@dataclass(frozen=True)
class Spec:
    """One key: its type (int, float, str, bool or "floats" for a list of floats), whether None is
    allowed, and its range (`low`/`high` inclusive; `above`: strictly greater) or choices."""

    kind: Any
    optional: bool = False
    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None  # strictly less
    choices: tuple[str, ...] = ()

    def rule(self) -> str:
        """The allowed values in words (for messages and docs/configuration.md)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        name = {int: "an integer", float: "a number", str: "a text", bool: "true or false",
                "floats": "a list of numbers"}[self.kind]
        def show(v: float) -> str:
            return str(int(v)) if self.kind is int else f"{v:g}"

        parts = []
        if self.above is not None:
            parts.append(f"> {show(self.above)}")
        if self.low is not None:
            parts.append(f">= {show(self.low)}")
        if self.below is not None:
            parts.append(f"< {show(self.below)}")
        if self.high is not None:
            parts.append(f"<= {show(self.high)}")
        return name + (" " + " and ".join(parts) if parts else "")


def _pos(optional: bool = False) -> Spec:
    return Spec(int, optional, low=1)


def _rate() -> Spec:
    return Spec(float, low=0, below=1)


SCALE = Spec(float, low=0, high=SCALE_MAX)
MAX_SAMPLING_STEPS = 10_000  # per round: far past any useful count, far below what a time grid can hold

MODEL_SCHEMA: dict[str, Spec] = {
    "size": Spec(str),
    "width": _pos(), "heads": _pos(), "encoder_depth": _pos(), "decoder_depth": _pos(),
    "decoder_width": _pos(True),
    "mlp_ratio": Spec(float, above=0, high=64),
    "num_classes": _pos(), "buffer_size": Spec(int, True, low=0),
    "latent_channels": _pos(), "latent_size": _pos(), "patch_size": _pos(True),
    "condition_slots": _pos(True),
    "mrar": Spec(bool), "mrar_rounds": Spec(int, low=1, high=64), "ref_patch_size": _pos(True),
    "label_drop_prob": Spec(float, low=0, high=1), "attn_dropout": _rate(), "proj_dropout": _rate(),
    "diffusion_batch_mul": Spec(int, low=1, high=64), "grad_checkpointing": Spec(bool),
    "cfg": SCALE, "scale_0": SCALE, "scale_1": SCALE,
    "sampling_steps": Spec(int, low=1, high=MAX_SAMPLING_STEPS),
    "mrar_cfg": Spec("floats", low=0, high=SCALE_MAX),
    "sampler": Spec(str, True),  # a registered sampler's name, checked where the settings are resolved
}

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16")
TRAIN_SCHEMA: dict[str, Spec] = {
    "data": Spec(str), "vae": Spec(str, True), "image_size": _pos(True),
    "batch_size": _pos(), "grad_accum": _pos(),
    "base_lr": Spec(float, above=0, high=10), "lr": Spec(float, True, above=0, high=10),
    "schedule": Spec(str, choices=("constant", "cosine")),
    "warmup_steps": Spec(int, True, low=0), "warmup_epochs": Spec(float, True, low=0),
    "min_lr": Spec(float, low=0, high=10), "weight_decay": Spec(float, low=0, high=10),
    "beta1": _rate(), "beta2": _rate(), "grad_clip": Spec(float, above=0),
    "ema_rate": _rate(), "ema_warmup": Spec(bool),
    "max_steps": _pos(True), "epochs": Spec(float, True, above=0),
    "precision": Spec(str, choices=PRECISIONS), "seed": Spec(int, low=0, high=SEED_MAX),
    "log_every": _pos(), "ckpt_every": _pos(), "sample_every": Spec(int, True, low=0),
    "keep_last": Spec(int, low=0), "num_workers": Spec(int, low=0, high=256),
    "grid_classes": _pos(), "grid_per_class": _pos(),
    "grid_sampling_steps": Spec(int, True, low=1, high=MAX_SAMPLING_STEPS),
    "eval_every": Spec(int, True, low=0), "eval_images": _pos(), "eval_ref": Spec(str, True),
    "eval_features": Spec(str, choices=("inception", "digits")),
    "eval_inception_weights": Spec(str, True), "tensorboard": Spec(bool),
    "only_train_diff": Spec(bool), "groups": Spec(str, True),
}


def named(key: str, value: Any, sources: Sources | None) -> str:
    """"`lr` -1.0 (from the command line)": a key, its value and where it came from."""
    where = (sources or {}).get(key)
    shown = repr(value) if isinstance(value, str) else _show(value)
    # a parameter in backticks (the CLI shows its flag); a file's key as the file spells it
    name = f"`{key}`" if where in (None, FLAG) else key
    return f"{name} {shown}{f' (from {where})' if where else ''}"


def fail(key: str, value: Any, sources: Sources | None, why: str) -> TransDiffError:
    """The one-line error for `key`: "`lr` -1.0 (from the command line) must be > 0"."""
    return TransDiffError(f"{named(key, value, sources)} {why}")


def _show(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return f"{type(value).__name__} {str(value)[:60]}"
    return str(value)


def _number(key: str, value: Any, spec: Spec, sources: Sources | None, kind: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(key, value, sources, f"must be {spec.rule()}, not a {type(value).__name__}")
    if kind is int and isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise fail(key, value, sources, f"must be {spec.rule()}")
        value = int(value)
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise fail(key, value, sources, f"must be a finite number ({spec.rule()})")
    if ((spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high)
            or (spec.above is not None and value <= spec.above)
            or (spec.below is not None and value >= spec.below)):
        raise fail(key, value, sources, f"is out of range: must be {spec.rule()}")
    return value


def check_value(key: str, value: Any, spec: Spec, sources: Sources | None = None) -> Any:
    """`value` converted to the key's type (an integral float to int, an int to float), or a
    one-line error."""
    if value is None:
        if spec.optional:
            return None
        raise fail(key, value, sources, f"must be {spec.rule()}, not empty")
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise fail(key, value, sources, "must be true or false")
        return value
    if spec.kind is str:
        if not isinstance(value, str) or (not value and not spec.optional):
            raise fail(key, value, sources, f"must be {spec.rule()}")
        if spec.choices and value not in spec.choices:
            raise fail(key, value, sources, f"must be {spec.rule()}")
        return value
    if spec.kind == "floats":
        if not isinstance(value, (list, tuple)):
            raise fail(key, value, sources, f"must be {spec.rule()}")
        return [_number(key, v, Spec(float, low=spec.low, high=spec.high), sources, float) for v in value]
    return _number(key, value, spec, sources, spec.kind)


def check_keys(values: Any, schema: Mapping[str, Spec], what: str, sources: Sources | None = None,
               where: str | None = None) -> None:
    """`values` is a mapping of known keys. `where` names the whole mapping (a file)."""
    at = f" in {where}" if where else ""
    if not isinstance(values, Mapping):
        raise TransDiffError(f"the {what} config{at} must be a mapping of keys to values, "
                             f"not a {type(values).__name__}")
    unknown = sorted(str(k) for k in values if k not in schema)
    if unknown:
        src = (sources or {}).get(unknown[0]) or where
        raise TransDiffError(f"unknown {what} config key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(unknown)}{f' (from {src})' if src else ''}")


def check_config(values: Any, schema: Mapping[str, Spec], what: str, sources: Sources | None = None,
                 where: str | None = None) -> dict[str, Any]:
    """Every key of `values` known and of the right type and range; returns the converted dict."""
    check_keys(values, schema, what, sources, where)
    if where:  # every key not traced further came from the file
        sources = {**{k: where for k in values}, **(sources or {})}
    return {k: check_value(k, v, schema[k], sources) for k, v in values.items()}
