"""What the user asked for: the command's options (`RunRequest`), the YAML file (`config`: its
`model:` and `train:` sections, or flat keys sorted by which configuration knows them, with the
line of every key) and the keys set there and as flags (`UserConfig`), each with where it came
from ("cfg.yaml:3" or the command line), checked against the schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import TransDiffError
from ..reporting import Reporter
from ..schema import FLAG, MODEL_SCHEMA, TRAIN_SCHEMA, check_config, with_new_keys


@dataclass
class ConfigFile:
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    model_lines: dict[str, str] = field(default_factory=dict)  # key -> "file:line"
    train_lines: dict[str, str] = field(default_factory=dict)


def _lines(node: Any, path: Path) -> dict[str, str]:
    """Each key of a mapping node -> "path:line" (PyYAML's marks count from 0)."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: f"{path}:{k.start_mark.line + 1}" for k, _ in node.value
            if isinstance(k, yaml.ScalarNode)}


def read_config_file(path: str | Path | None) -> ConfigFile:
    if path is None:
        return ConfigFile()
    p = Path(path)
    if not p.is_file():
        raise TransDiffError(f"config file not found: {p}")
    try:
        text = p.read_text()
        data = yaml.safe_load(text) or {}
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except UnicodeDecodeError as e:
        raise TransDiffError(f"config file {p} is not text (UTF-8): byte {e.start}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise TransDiffError(f"config file {p}{at} is not valid YAML: "
                             f"{getattr(e, 'problem', None) or str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise TransDiffError(f"config file {p} must hold a mapping (`model:` / `train:` sections), "
                             f"not a {type(data).__name__}")
    lines = _lines(root, p)
    if "model" in data or "train" in data:
        sections = {k: v for k, v in root.value} if isinstance(root, yaml.MappingNode) else {}
        nodes = {k.value: v for k, v in sections.items() if isinstance(k, yaml.ScalarNode)}
        out = ConfigFile()
        for name in ("model", "train"):
            section = data.get(name)
            if section is None:
                continue
            if not isinstance(section, dict):
                raise TransDiffError(f"`{name}` ({lines.get(name, p)}) must be a mapping of "
                                     f"{name} keys, not a {type(section).__name__}")
            setattr(out, name, with_new_keys(dict(section)))
            setattr(out, f"{name}_lines", with_new_keys(_lines(nodes.get(name), p)))
        extra = sorted(set(data) - {"model", "train"})
        if extra:
            raise TransDiffError(f"config file {p}: unknown section {extra[0]!r} "
                                 f"({lines.get(extra[0], p)}); use `model:` and `train:`")
        return out
    data, lines = with_new_keys(data), with_new_keys(lines)
    model = {k: v for k, v in data.items() if k in MODEL_SCHEMA}
    train = {k: v for k, v in data.items() if k not in MODEL_SCHEMA}
    return ConfigFile(model, train, {k: lines[k] for k in model if k in lines},
                      {k: lines[k] for k in train if k in lines})


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
