"""Setting up a training run (used by `train` and `finetune-mrar`): configs merged in the order
size preset < YAML file < command-line flags, the data, the device and process group, the run
folder, and the initial weights (fresh, resumed, or converted from a 1-step checkpoint)."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device
from ..distributed import DistInfo, cleanup, init_distributed
from ..errors import TransDiffError
from ..fs import FolderLock, ensure_dir
from ..io.checkpoint import load_checkpoint
from ..model.config import ModelConfig, load_yaml_overrides, preset
from ..model.convert import init_mrar_from_1step, mrar_config
from ..reporting import Reporter
from .run_dir import RunDir
from .train_config import DIGITS_EVAL, TrainConfig, train_defaults
from .trainer import Trainer, TrainResult

GEOMETRY_KEYS = ("latent_channels", "latent_size", "num_classes")


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


def _split_yaml(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A config file has `model:` and `train:` sections, or flat keys sorted by which config
    knows them."""
    if "model" in doc or "train" in doc:
        return dict(doc.get("model") or {}), dict(doc.get("train") or {})
    model_keys = set(ModelConfig.__dataclass_fields__)
    model = {k: v for k, v in doc.items() if k in model_keys}
    train = {k: v for k, v in doc.items() if k not in model_keys}
    return model, train


def _merge_train(base: dict[str, Any], yaml_train: dict[str, Any],
                 cli_train: dict[str, Any]) -> dict[str, Any]:
    """Preset < YAML < flags; a user who gives only --epochs (or only --max-steps) means it."""
    user = {**yaml_train, **cli_train}
    merged = {**base, **user}
    if "epochs" in user and "max_steps" not in user:
        merged["max_steps"] = None
    if "max_steps" in user and "epochs" not in user:
        merged["epochs"] = None
    if "warmup_epochs" in user and "warmup_steps" not in user:
        merged["warmup_steps"] = None
    if "warmup_steps" in user and "warmup_epochs" not in user:
        merged["warmup_epochs"] = None
    return merged


def _data_name(data: str) -> str:
    p = Path(data)
    return p.name or p.parent.name if ("/" in data or p.exists()) else data


def _check_geometry(model_over: dict[str, Any], data: Any, size: str) -> None:
    have = {"latent_channels": data.latent_channels, "latent_size": data.latent_size}
    for key, value in have.items():
        if key in model_over and model_over[key] != value:
            raise TransDiffError(
                f"size {size} as configured needs {key} {model_over[key]}, but the data "
                f"({data.source}) has latents {data.latent_channels}x{data.latent_size}x"
                f"{data.latent_size}")


def _open_data(train_config: TrainConfig, group_size: int | None, device: torch.device) -> Any:
    from ..data.latents import open_training_data

    return open_training_data(train_config.data, vae=train_config.vae, image_size=train_config.image_size,
                              group_size=group_size, device=device,
                              groups=train_config.groups if group_size is not None else None)


def prepare(req: RunRequest, locks: contextlib.ExitStack | None = None) -> tuple[Trainer, DistInfo]:
    """`locks` (rank 0) receives the run folder's lock, held until the caller closes it."""
    device = resolve_device(req.device)
    dist = init_distributed(device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    doc = load_yaml_overrides(req.config_file)
    yaml_model, yaml_train = _split_yaml(doc)
    cli_train = {k: v for k, v in (req.train_overrides or {}).items() if v is not None}
    cli_model = {k: v for k, v in (req.model_overrides or {}).items() if v is not None}

    init_state = init_ema = None
    parent: dict[str, Any] = {}
    if req.finetune_from is None and req.init_from is not None:
        train_config, data, model_config, init_state, init_ema = _init_from(
            req, yaml_model, yaml_train, cli_train, cli_model, device, dist.is_main)
        parent = {"parent": req.init_from}
        default_name = f"{_data_name(train_config.data)}-{model_config.size}-{data.tokenizer.image_size}"
    elif req.finetune_from is None:
        size = req.size or yaml_model.get("size") or "tiny"
        base = train_defaults(preset(size).size)
        merged = _merge_train(base, yaml_train, cli_train)
        if merged.get("data", TrainConfig.data) == "digits" and preset(size).size == "tiny":
            merged = {**DIGITS_EVAL, **merged}  # the user's eval settings win; --eval-every 0 turns it off
        train_config = TrainConfig.from_dict(merged)
        train_config.validate()
        if train_config.only_train_diff:
            raise TransDiffError("`only_train_diff` needs `init_from` CKPT: the frozen encoder "
                                 "must come from a trained model")
        data = _open_data(train_config, None, device)
        model_over = {**yaml_model, **cli_model}
        _check_geometry(model_over, data, size)
        geometry = dict(latent_channels=data.latent_channels, latent_size=data.latent_size,
                        num_classes=len(data.class_names))
        model_over.pop("size", None)
        model_config = preset(size, **{**geometry, **{k: v for k, v in model_over.items()
                                                   if k not in GEOMETRY_KEYS}})
        default_name = f"{_data_name(train_config.data)}-{model_config.size}"
    else:
        src = load_checkpoint(req.finetune_from, weights="model", keep_raw=True)
        one = src.config
        if one.mrar:
            raise TransDiffError(f"{req.finetune_from} is already an MRAR model; "
                                 "finetune-mrar starts from a 1-step checkpoint")
        base = train_defaults(one.size if one.size in ("tiny", "S", "B", "L", "H") else "tiny",
                              finetune=True)
        data_default = src.meta.get("data")
        train_dict = _merge_train(base, yaml_train, cli_train)
        if "data" not in {**yaml_train, **cli_train}:
            if not data_default:
                raise TransDiffError(f"{req.finetune_from} does not say what data it was trained "
                                     "on: pass `data` (a latents folder or image folder)")
            train_dict["data"] = data_default
            train_dict.setdefault("vae", None)
            if src.meta.get("train", {}).get("vae") and "vae" not in cli_train:
                train_dict["vae"] = src.meta["train"]["vae"]
        train_config = TrainConfig.from_dict(train_dict)
        train_config.validate()
        mcfg = mrar_config(one, **{k: v for k, v in {**yaml_model, **cli_model}.items()
                                   if k not in GEOMETRY_KEYS and k != "mrar"})
        data = _open_data(train_config, mcfg.mrar_steps, device)
        if (data.latent_channels, data.latent_size) != (one.latent_channels, one.latent_size):
            raise TransDiffError(
                f"the checkpoint expects latents {one.latent_channels}x{one.latent_size}x"
                f"{one.latent_size} but the data ({data.source}) has {data.latent_channels}x"
                f"{data.latent_size}x{data.latent_size}")
        if len(data.class_names) > one.num_classes:
            raise TransDiffError(f"the data has {len(data.class_names)} classes but the "
                                 f"checkpoint only {one.num_classes}")
        model_config = mcfg
        # the EMA is converted like the weights (the same fresh rows where the slot count grows)
        init_state = init_mrar_from_1step(src.raw_model, one, mcfg, torch.Generator().manual_seed(train_config.seed))
        init_ema = init_mrar_from_1step(src.raw_ema or src.raw_model, one, mcfg,
                                        torch.Generator().manual_seed(train_config.seed))
        parent = {"parent": str(src.path)}
        default_name = f"{_data_name(train_config.data)}-{model_config.size}-mrar"

    run = RunDir(req.run_dir or Path("runs") / (req.name or default_name))
    if dist.is_main and locks is not None:  # one writer per run folder (rank 0 speaks for all)
        ensure_dir(run.root, "`run_dir`")
        locks.enter_context(FolderLock(run.root, "`run_dir`"))
    if run.has_checkpoint():
        if req.resume is False:
            raise TransDiffError(f"run folder {run.root} already holds checkpoints; pass another "
                                 "`run_dir` (or `name`), or `resume` to continue it")
        run.check_config({"model": model_config.to_dict()})
        init_state = init_ema = None  # the trainer resumes from the run's own checkpoint
    elif req.resume is True:
        raise TransDiffError(f"`resume`: no checkpoint in {run.root} to resume from")
    class_names = list(data.class_names)
    if req.finetune_from is not None and src.class_names and len(src.class_names) >= len(class_names):
        class_names = list(src.class_names)
    # a published model may know more classes than the fine-tuning data names
    class_names += [f"class{i}" for i in range(len(class_names), model_config.num_classes)]
    meta = {"tokenizer": data.tokenizer.spec(), "class_names": list(class_names),
            "data": train_config.data, **parent}
    if dist.is_main:
        run.create()
        run.write_config({"model": model_config.to_dict(), "train": train_config.to_dict(),
                          "command": " ".join(sys.argv), **parent})
    trainer = Trainer(model_config, train_config, data, run, device, dist, meta, init_state, init_ema,
                      reporter=req.reporter, progress=req.progress)
    return trainer, dist


def _init_from(req: RunRequest, yaml_model: dict[str, Any], yaml_train: dict[str, Any],
               cli_train: dict[str, Any], cli_model: dict[str, Any], device: torch.device,
               is_main: bool) -> tuple[TrainConfig, Any, ModelConfig, dict, dict]:
    """`train --init-from CKPT`: the run's configs, data and initial weights (raw, EMA) from a
    checkpoint, at the data's resolution (the decoder position embedding grown to its grid)."""
    from ..data.latents import is_latent_folder
    from ..model import init_from as init

    src = load_checkpoint(req.init_from, weights="model", keep_raw=True)
    one = src.config
    size = one.size if one.size in ("tiny", "S", "B", "L", "H") else "tiny"
    user_train = {**yaml_train, **cli_train}
    train_dict = _merge_train(train_defaults(size, decoder_only=True), yaml_train, cli_train)
    if "data" not in user_train:  # default: the data the checkpoint was trained on
        if not src.meta.get("data"):
            raise TransDiffError(f"{req.init_from} does not say what data it was trained on: "
                                 "pass `data`")
        train_dict["data"] = src.meta["data"]
        if "vae" not in user_train:
            train_dict["vae"] = (src.meta.get("train") or {}).get("vae")
    src_size = (src.meta.get("tokenizer") or {}).get("image_size")
    if "image_size" not in user_train and src_size and not is_latent_folder(train_dict["data"]):
        train_dict["image_size"] = src_size  # same resolution unless asked otherwise
    train_config = TrainConfig.from_dict(train_dict)
    train_config.validate()
    data = _open_data(train_config, None, device)
    overrides = {k: v for k, v in {**yaml_model, **cli_model}.items()
                 if k not in GEOMETRY_KEYS and k != "size"}
    if size in ("B", "L", "H"):  # the 512 recipe's diffusion_batch_mul
        overrides.setdefault("diffusion_batch_mul", 4)
    classes = len(data.class_names)
    config = init.target_config(one, data.latent_channels, data.latent_size, classes, **overrides)
    asked = req.size or yaml_model.get("size")
    if asked is not None:
        init.check_widths(one, preset(asked, latent_channels=one.latent_channels,
                                      latent_size=one.latent_size), req.init_from)
    init.check_widths(one, config, req.init_from)
    fresh = None
    if classes != one.num_classes:
        if train_config.only_train_diff:
            raise TransDiffError(f"the data has {classes} classes but {req.init_from} "
                                 f"{one.num_classes}: `only_train_diff` keeps the class embedding "
                                 "frozen, so it cannot learn new classes (drop `only_train_diff`)")
        fresh = init.fresh_class_embedding(config, train_config.seed)
        if is_main:
            (req.reporter or Reporter()).warning(f"the data has {classes} classes, {req.init_from} "
                                                 f"{one.num_classes}: the class embedding starts afresh")
    raw = init.init_state(src.raw_model, config, req.init_from, fresh)
    ema = init.init_state(src.raw_ema or src.raw_model, config, req.init_from, fresh)
    if train_config.only_train_diff:
        raw = init.frozen_from(ema, raw)
    return train_config, data, config, raw, ema


def run_training(req: RunRequest) -> TrainResult:
    with contextlib.ExitStack() as locks:
        trainer, dist = prepare(req, locks)
        try:
            return trainer.train()
        finally:
            cleanup(dist)
