"""What the user asked for: the command's options (`RunRequest`) and the keys they set in the YAML
file and as flags (`UserConfig`), each with where it came from, checked against the schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..reporting import Reporter
from ..schema import FLAG, MODEL_SCHEMA, TRAIN_SCHEMA, check_config
from .config_file import read_config_file


@dataclass
class RunRequest:
    """What the user asked for on the command line (None = not given)."""

    size: str | None = None
    config_file: str | None = None
    train_overrides: dict[str, Any] | None = None
    model_overrides: dict[str, Any] | None = None
    run_dir: str | None = None
    name: str | None = None
    device: str | None = None
    resume: bool | None = None  # None: resume when the run folder has a checkpoint
    finetune_from: str | None = None
    init_from: str | None = None  # start from this checkpoint's weights (train --init-from)
    progress: bool = True
    reporter: Reporter | None = None  # messages and the progress bar (default: plain lines, no bar)


@dataclass
class UserConfig:
    """The keys the user set (YAML, then flags on top) and where each came from."""

    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    model_sources: dict[str, str] = field(default_factory=dict)
    train_sources: dict[str, str] = field(default_factory=dict)


def read_user_config(req: RunRequest) -> UserConfig:
    """YAML, then flags; every value's type and range checked before anything is opened."""
    f = read_config_file(req.config_file)
    user = UserConfig(dict(f.model), dict(f.train), dict(f.model_lines), dict(f.train_lines))
    if "sample_steps" in user.train:  # grid_sampling_steps's old name
        user.train.setdefault("grid_sampling_steps", user.train.pop("sample_steps"))
        user.train_sources.setdefault("grid_sampling_steps", user.train_sources.pop("sample_steps", ""))
    for values, sources, given in ((user.train, user.train_sources, req.train_overrides),
                                   (user.model, user.model_sources, req.model_overrides)):
        flags = {k: v for k, v in (given or {}).items() if v is not None}
        values.update(flags)
        sources.update({k: FLAG for k in flags})
    if req.size is not None:
        user.model["size"], user.model_sources["size"] = req.size, FLAG
    user.train = check_config(user.train, TRAIN_SCHEMA, "training", user.train_sources)
    user.model = check_config(user.model, MODEL_SCHEMA, "model", user.model_sources)
    return user


def merge_train(base: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """Preset < user; a user who gives only `epochs` (or only `max_steps`) means it."""
    merged = {**base, **user}
    for one, other in (("epochs", "max_steps"), ("warmup_epochs", "warmup_steps")):
        for a, b in ((one, other), (other, one)):
            if a in user and b not in user:
                merged[b] = None
    return merged


