"""Checkpoints: our format (a folder) and the published TransDiff `.pth`, detected automatically.

Our folder: `config.json` (model config, tokenizer, class names, step, anything needed to sample),
`model.safetensors` and `ema.safetensors` (weights), `train_state.pt` (optimizer, schedule, RNG:
only for resuming). Folders are written under a temporary name and renamed, so a checkpoint on
disk is always complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, load_file, save_file

from ..errors import TransDiffError
from ..fs import os_error, write_text_atomic
from ..model.config import ModelConfig, preset
from ..model.convert import config_from_published, from_published_keys
from ..model.transdiff import TransDiff
from .hub import hub_file, hub_folder, is_hub_folder, is_hub_id, parse_hub_folder

CONFIG = "config.json"
MODEL = "model.safetensors"
EMA = "ema.safetensors"
TRAIN_STATE = "train_state.pt"
LATEST = "LATEST"
# what torch.load raises on a truncated, foreign or unsafe file
LOAD_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError,
               OSError, AttributeError, KeyError, IndexError)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (EMA weights unless asked otherwise) and its metadata."""

    model: TransDiff
    config: ModelConfig
    meta: dict[str, Any] = field(default_factory=dict)  # tokenizer, class_names, step, ...
    path: Path | None = None
    published: bool = False
    raw_model: dict[str, torch.Tensor] | None = None  # non-EMA weights (training resumes them)
    raw_ema: dict[str, torch.Tensor] | None = None

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")


# ----------------------------------------------------------------------------- writing
def _atomic_dir(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    return tmp


def _commit_dir(tmp: Path, final: Path) -> None:
    """Swap `tmp` in as `final`. Between the two renames only the `.old` copy holds the previous
    checkpoint: `resolve` finds it there, and `recover` puts it back after a kill."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(folder: str | Path, model_state: dict[str, torch.Tensor], config: ModelConfig,
                    meta: dict[str, Any] | None = None,
                    ema_state: dict[str, torch.Tensor] | None = None,
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint folder atomically; returns its path."""
    final = Path(folder)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = _atomic_dir(final)
    except OSError as e:
        raise os_error(e, final.parent) from None
    try:
        save_file(_contiguous(model_state), str(tmp / MODEL))
        if ema_state is not None:
            save_file(_contiguous(ema_state), str(tmp / EMA))
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
        doc = {"format": "transdiff-cli/1", "model": config.to_dict(), **(meta or {})}
        (tmp / CONFIG).write_text(json.dumps(doc, indent=1))  # last: a folder with it is complete
        _commit_dir(tmp, final)
    except OSError as e:
        raise os_error(e, final) from None
    except (RuntimeError, SafetensorError) as e:  # torch / safetensors hide ENOSPC in their text
        full = shutil.disk_usage(final.parent).free < 1 << 20
        why = "no space left on the device" if full else str(e).strip().splitlines()[0][:200]
        raise TransDiffError(f"cannot write {final}: {why}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def mark_latest(checkpoints_dir: Path, name: str) -> None:
    write_text_atomic(checkpoints_dir / LATEST, name + "\n")


def _hidden_copies(ckdir: Path, name: str = "*") -> list[Path]:
    """Complete checkpoint folders left by an interrupted commit: `.NAME.old-*` (the previous
    version) first, then `.NAME.tmp-*` (the new one, complete once its config is written)."""
    found = [d for kind in ("old", "tmp") for d in sorted(ckdir.glob(f".{name}.{kind}-*"))]
    return [d for d in found if d.is_dir() and (d / CONFIG).is_file() and (d / MODEL).is_file()]


def recover(checkpoints_dir: Path) -> None:
    """After a kill between the renames of a commit: put the hidden copy back under its name, then
    drop the other leftovers (each a full checkpoint). Only the run folder's lock holder calls it."""
    if not checkpoints_dir.is_dir():
        return
    for d in _hidden_copies(checkpoints_dir):
        name = d.name[1:].rsplit(".", 1)[0]
        if not (checkpoints_dir / name).exists():
            os.replace(d, checkpoints_dir / name)
    for d in checkpoints_dir.glob(".*"):
        if ".old-" in d.name or ".tmp-" in d.name:
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink(missing_ok=True)  # a LATEST being written when the run was killed


# ----------------------------------------------------------------------------- finding
def resolve(path: str | Path) -> Path:
    """A checkpoint folder or `.pth` file from what the user gave: the file itself, a checkpoint
    folder (an exported model folder is one), a run folder (its latest checkpoint), a `checkpoints/`
    folder, a Hub file (`hf://OWNER/REPO/PATH[@REVISION]`) or a Hub model folder
    (`hf://OWNER/REPO[@REVISION]`), both through the Hugging Face cache."""
    if is_hub_folder(path):
        p = hub_folder(path)
        if not (p / CONFIG).is_file() or not (p / MODEL).is_file():
            raise TransDiffError(f"{parse_hub_folder(path)} is not a model folder ({CONFIG} and {MODEL} expected; "
                                 "write one with `transdiff export`)")
        return p
    if is_hub_id(path):
        return hub_file(path)
    p = Path(path)
    if not p.exists():
        raise TransDiffError(f"checkpoint not found: {p}")
    if p.is_file():
        return p.parent if p.name in (CONFIG, MODEL, EMA) else p
    if (p / CONFIG).is_file():
        return p
    for ckdir in (p / "checkpoints", p):
        latest = ckdir / LATEST
        if latest.is_file():
            name = latest.read_text().strip()
            target = ckdir / name
            if (target / CONFIG).is_file():
                return target
            hidden = _hidden_copies(ckdir, name)  # a commit of this step was interrupted
            if hidden:
                return hidden[0]
        steps = sorted(d for d in ckdir.glob("step_*") if (d / CONFIG).is_file())
        if steps:
            return steps[-1]
        hidden = _hidden_copies(ckdir, "step_*")
        if hidden:
            return max(hidden, key=lambda d: d.name.split(".")[1])
    raise TransDiffError(f"no checkpoint in {p} (expected {CONFIG} or a checkpoints/ folder)")


def newest_run_checkpoint(runs: str | Path = "runs") -> Path:
    """The latest checkpoint of the most recently modified run under `runs/`."""
    root = Path(runs)
    runs_found = sorted((d for d in root.glob("*") if (d / "checkpoints").is_dir()),
                        key=lambda d: d.stat().st_mtime) if root.is_dir() else []
    for run in reversed(runs_found):
        try:
            return resolve(run)
        except TransDiffError:
            continue
    raise TransDiffError(f"no `ckpt` given and no trained run under {root}/ (train one with "
                         "`transdiff train`, or pass `ckpt` PATH)")


# ----------------------------------------------------------------------------- loading
def _utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:  # a file name with undecodable bytes (surrogates in Python)
        return False


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        if not _utf8(path):  # safetensors opens UTF-8 paths only; read the bytes ourselves
            return load(path.read_bytes())
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise TransDiffError(f"cannot read {path}: {e} (file corrupt or truncated?)") from e


def _first_line(e: Exception) -> str:
    """The line that says what went wrong (torch's weights_only errors open with boilerplate)."""
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(boiler)] or lines
    return useful[0][:200] if useful else type(e).__name__


def _torch_load_published(path: Path, mmap: bool = False) -> dict[str, Any]:
    """`mmap`: map the tensors instead of reading them (shapes only, for inspection)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ck = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():  # a class or function: what a payload needs
            raise TransDiffError(f"{path} holds code or objects that are not allowed in a checkpoint "
                                 "(only tensors and plain data are); it was not loaded for that "
                                 "reason") from None
        raise TransDiffError(f"{path} is not a readable checkpoint (truncated or not a "
                             f"PyTorch file?): {_first_line(e)}") from e
    except LOAD_ERRORS as e:
        raise TransDiffError(f"{path} is not a readable checkpoint (truncated or not a "
                             f"PyTorch file?): {_first_line(e)}") from e
    if not isinstance(ck, dict) or not ({"model", "model_ema"} & set(ck)):
        raise TransDiffError(f"{path} is not a TransDiff checkpoint (no 'model'/'model_ema' entry)")
    return ck


def _check_size(config: ModelConfig, size: str | None, path: Path) -> None:
    if size is None:
        return
    want = preset(size, latent_channels=config.latent_channels, latent_size=config.latent_size,
                  patch_size=config.patch_size, num_classes=config.num_classes)
    got = (config.width, config.encoder_depth, config.decoder_depth)
    exp = (want.width, want.encoder_depth, want.decoder_depth)
    if got != exp:
        raise TransDiffError(
            f"{path} does not match size {want.size}: it has width {got[0]}, encoder depth "
            f"{got[1]}, decoder depth {got[2]}; size {want.size} has {exp[0]}, {exp[1]}, {exp[2]}")


def check_fits(config: ModelConfig, shapes: dict[str, tuple[int, ...]], path: Path | str) -> None:
    """Whether tensors of these shapes load into the model of `config`, checked on the meta device
    (no weights allocated: fast even for H)."""
    with torch.device("meta"):
        own = TransDiff(config).state_dict()
    _check_state(own, shapes, path)


def _check_state(own: dict[str, torch.Tensor], state: dict[str, Any], path: Path | str) -> None:
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise TransDiffError(f"{path} does not fit the model config ({what}; "
                             f"{len(missing)} missing, {len(unexpected)} unexpected tensors)")
    for k, v in state.items():
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)
        if tuple(own[k].shape) != shape:
            raise TransDiffError(f"{path} does not fit the model config: {k} has shape "
                                 f"{shape}, the config needs {tuple(own[k].shape)}")


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], path: Path | str) -> TransDiff:
    """Instantiate the model and load `state` strictly, with a one-line error on any mismatch."""
    model = TransDiff(config)
    _check_state(model.state_dict(), state, path)
    model.load_state_dict(state)
    return model


def _folder_config(folder: Path) -> tuple[dict[str, Any], ModelConfig]:
    """A checkpoint folder's `config.json` and the model config it holds."""
    try:
        doc = json.loads((folder / CONFIG).read_text())
        return doc, ModelConfig.from_dict(doc["model"], where=str(folder / CONFIG))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TransDiffError(f"{folder / CONFIG} is not a valid checkpoint config: {e}") from e


def _folder_meta(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A folder's metadata; a tokenizer path relative to the folder (the VAE an exported folder
    bundles under `vae/`) made absolute, so the folder loads from anywhere."""
    meta = {k: v for k, v in doc.items() if k != "model"}
    tok = meta.get("tokenizer")
    if isinstance(tok, dict) and isinstance(tok.get("path"), str) and tok.get("bundled"):
        meta["tokenizer"] = {**tok, "path": str((folder / tok["path"]).absolute())}
    return meta


def load_checkpoint(path: str | Path, *, weights: str = "ema", size: str | None = None,
                    heads: int | None = None, device: str | torch.device = "cpu",
                    keep_raw: bool = False) -> Checkpoint:
    """Load our folder format or a published `.pth` (detected). `weights` is "ema" or "model";
    `size` checks the shapes against a named size; `heads` overrides the inferred head count
    of a published checkpoint whose size is not one of B/L/H."""
    if weights not in ("ema", "model"):
        raise TransDiffError(f"`weights` must be 'ema' or 'model', not {weights!r}")
    p = resolve(path)
    if p.is_file():
        ck = _torch_load_published(p)
        key = "model_ema" if weights == "ema" and "model_ema" in ck else "model"
        state = from_published_keys(ck[key])
        config = config_from_published(state, ck.get("args"), heads)
        _check_size(config, size, p)
        model = build_model(config, state, p)
        args = ck.get("args")
        meta = {"source": str(p), "epoch": ck.get("epoch"), "tokenizer": None,
                "published_args": vars(args) if args is not None else {}, "weights": key}
        raw = from_published_keys(ck["model"]) if keep_raw and "model" in ck else None
        raw_ema = (from_published_keys(ck["model_ema"])
                   if keep_raw and "model_ema" in ck else None)
        return Checkpoint(model.to(device), config, meta, p, True, raw, raw_ema)

    doc, config = _folder_config(p)
    _check_size(config, size, p)
    use_ema = weights == "ema" and (p / EMA).is_file()
    state = _load_safetensors(p / (EMA if use_ema else MODEL))
    model = build_model(config, state, p)
    meta = {**_folder_meta(doc, p), "weights": "ema" if use_ema else "model"}
    raw = _load_safetensors(p / MODEL) if keep_raw else None
    raw_ema = _load_safetensors(p / EMA) if keep_raw and (p / EMA).is_file() else None
    return Checkpoint(model.to(device), config, meta, p, False, raw, raw_ema)


@dataclass
class CheckpointInfo:
    """What a checkpoint is, read from its shapes and metadata without loading or allocating the
    weights (`--dry-run`)."""

    config: ModelConfig
    meta: dict[str, Any]
    path: Path
    published: bool
    parameters: int  # elements of the chosen weights (EMA unless asked otherwise)

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")


def inspect_checkpoint(path: str | Path, *, weights: str = "ema", size: str | None = None,
                       heads: int | None = None) -> CheckpointInfo:
    """Like `load_checkpoint`, but reads only shapes (memory-mapped `.pth`, safetensors headers)
    and checks them against the config on the meta device."""
    if weights not in ("ema", "model"):
        raise TransDiffError(f"`weights` must be 'ema' or 'model', not {weights!r}")
    p = resolve(path)
    if p.is_file():
        try:
            ck = _torch_load_published(p, mmap=True)
        except TransDiffError:  # a legacy (non-zip) file cannot be mapped: read it
            ck = _torch_load_published(p)
        key = "model_ema" if weights == "ema" and "model_ema" in ck else "model"
        state = from_published_keys(ck[key])
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        config = config_from_published(state, ck.get("args"), heads)
        args = ck.get("args")
        meta = {"source": str(p), "epoch": ck.get("epoch"), "tokenizer": None,
                "published_args": vars(args) if args is not None else {}}
        published = True
    else:
        doc, config = _folder_config(p)
        f = p / (EMA if weights == "ema" and (p / EMA).is_file() else MODEL)
        try:
            if _utf8(f):
                with safe_open(str(f), "pt") as st:
                    shapes = {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}
            else:
                shapes = {k: tuple(v.shape) for k, v in load(f.read_bytes()).items()}
        except (SafetensorError, OSError, ValueError) as e:
            raise TransDiffError(f"cannot read {f}: {e} (file corrupt or truncated?)") from e
        meta = _folder_meta(doc, p)
        published = False
    _check_size(config, size, p)
    check_fits(config, shapes, p)
    count = sum(math.prod(s) for s in shapes.values())
    return CheckpointInfo(config, meta, p, published, count)


def load_train_state(folder: Path) -> dict[str, Any] | None:
    f = Path(folder) / TRAIN_STATE
    if not f.is_file():
        return None
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as e:
        raise TransDiffError(f"cannot read training state {f}: {e}") from e


@dataclass
class Resume:
    """What a run continues from: its latest checkpoint's weights, EMA and training state (step,
    epoch, batch position, optimizer, RNG)."""

    folder: Path
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return self.state["step"]


def load_resume(run_root: Path, config: ModelConfig) -> Resume:
    """The latest checkpoint of a run folder (recovered beforehand by the lock holder), refused
    unless it was saved for the model of `config`, its weights fit that model and it holds a
    training state."""
    folder = resolve(run_root)
    _, saved = _folder_config(folder)
    if saved != config:
        raise TransDiffError(f"{folder} was trained with a different model config; pass another `run_dir`")
    model = _load_safetensors(folder / MODEL)
    check_fits(config, {k: tuple(v.shape) for k, v in model.items()}, folder)  # before any side effect
    state = load_train_state(folder)
    if state is None:
        raise TransDiffError(f"{folder} has no training state to resume from")
    ema = _load_safetensors(folder / EMA) if (folder / EMA).is_file() else model
    return Resume(folder, model, ema, state)
