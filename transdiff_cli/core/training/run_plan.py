"""A run is planned once: presets, the YAML file and the flags merged into one `RunPlan`, every
value checked before anything is built (nanoGPT's configurator: overrides applied once, up front).

A start kind (fresh, `init_from` a 1-step checkpoint, possibly at another resolution, and
`finetune-mrar` from a 1-step checkpoint) only contributes its base configurations and its initial
weights; the machine (device, process group, precision, free memory) is settled once, as soon as
the training configuration is known. The precedence of every key, for all three (the same
table is in docs/configuration.md):

- every training key: flag > YAML > the start kind's preset table for the size (TRAIN_PRESETS;
  DECODER_FINETUNE_PRESETS for init-from, FINETUNE_PRESETS for finetune-mrar, at the source's
  size) > TrainConfig's default. Giving only `epochs` (or only `max_steps`) drops the preset's
  other one; the same for `warmup_epochs` / `warmup_steps`.
- `data`: flag > YAML > preset (fresh) or the source checkpoint's data (init-from, finetune-mrar).
- `vae`: flag > YAML > the source's `vae` when `data` is the source's > none. The same rule for
  all three kinds (fresh has no source).
- `image_size` (image folders): flag > YAML > the source's resolution (init-from) > none.
- every model key: flag > YAML > the size preset (fresh; `size`: flag > YAML > tiny) or the
  source's config (init-from, finetune-mrar).
- `latent_channels`, `latent_size`, `num_classes`: the data's (a fresh run's YAML value must
  agree with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..device import Machine, training_machine
from ..errors import TransDiffError
from ..io.checkpoint import load_checkpoint
from ..model.config import ModelConfig, preset
from ..reporting import Reporter
from .memory import check_fits_machine
from .run_request import RunRequest, UserConfig, read_user_config
from .train_config import DIGITS_EVAL, TrainConfig, train_defaults

GEOMETRY_KEYS = ("latent_channels", "latent_size", "num_classes")
SIZES = ("tiny", "S", "B", "L", "H")
Weights = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class RunPlan:
    """Everything a run needs, settled before anything is built; later stages take its parts."""

    model_config: ModelConfig
    train_config: TrainConfig
    init_weights: Weights | None  # (raw, EMA); None: a fresh model
    parent: str | None  # the checkpoint the run starts from
    data: Any  # the opened training data (its geometry fixed the model's)
    class_names: list[str]
    default_name: str
    machine: Machine  # where it runs: device, process group, autocast dtype, free memory


def plan_train(req: RunRequest) -> tuple[Fresh, UserConfig, TrainConfig]:
    """The start kind, the user's keys and the training configuration, checked: nothing is
    opened but the source checkpoint."""
    user = read_user_config(req)
    start = start_kind(req, user)
    train_dict = merge_train(start.train_base(), user.train)
    start.fill_train(train_dict, user.train)
    train_config = TrainConfig.from_dict(train_dict, user.train_sources)
    train_config.validate()
    return start, user, train_config


def plan_run(req: RunRequest) -> RunPlan:
    """The one merge: the start kind's base configs, the user's values on top, checked; then the
    machine settled, the data opened, the model's size checked against the machine and the initial
    weights built."""
    start, _, train_config = plan_train(req)
    machine = training_machine(req.device, train_config.precision)
    model_config, data = start.model_and_data(train_config, machine.device)
    check_fits_machine(model_config, train_config, machine.device, machine.dist.world_size, machine.memory)
    reporter = (req.reporter or Reporter()) if machine.dist.is_main else None
    init = start.init_weights(model_config, train_config, data, reporter)
    return RunPlan(model_config, train_config, init, start.parent, data, start.class_names(data, model_config),
                   start.default_name(train_config, model_config, data), machine)


def merge_train(base: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """Preset < user; a user who gives only `epochs` (or only `max_steps`) means it."""
    merged = {**base, **user}
    for one, other in (("epochs", "max_steps"), ("warmup_epochs", "warmup_steps")):
        for a, b in ((one, other), (other, one)):
            if a in user and b not in user:
                merged[b] = None
    return merged


def start_kind(req: RunRequest, user: UserConfig) -> Fresh:
    if req.finetune_from is not None:
        return FinetuneMrar(user, req.finetune_from)
    if req.init_from is not None:
        return InitFrom(user, req.init_from)
    return Fresh(user)


# ----------------------------------------------------------------------------- start kinds
class Fresh:
    """A fresh model: the size preset at the data's geometry, the preset table's training keys.
    `init_weights` gets a reporter for warnings on rank 0 (None elsewhere)."""

    parent: str | None = None

    def __init__(self, user: UserConfig):
        self.user = user
        preset(user.model.get("size") or "tiny")  # an unknown size, before anything is opened

    @property
    def size(self) -> str:
        return preset(self.user.model.get("size") or "tiny").size

    def train_base(self) -> dict[str, Any]:
        return fresh_train_base(self.size, self.user.train.get("data"))

    def fill_train(self, train: dict[str, Any], user_train: dict[str, Any]) -> None:
        if train.get("only_train_diff"):
            raise TransDiffError("`only_train_diff` needs `init_from` CKPT: the frozen encoder "
                                 "must come from a trained model")

    def model_and_data(self, train_config: TrainConfig, device: torch.device) -> tuple[ModelConfig, Any]:
        data = open_data(train_config, None, device)
        return fresh_model(self.user.model, self.user.model_sources, data), data

    def init_weights(self, model_config: ModelConfig, train_config: TrainConfig, data: Any,
                     reporter: Reporter | None) -> Weights | None:
        return None

    def class_names(self, data: Any, model_config: ModelConfig) -> list[str]:
        return _pad(list(data.class_names), model_config)

    def default_name(self, train_config: TrainConfig, model_config: ModelConfig, data: Any) -> str:
        return f"{data_name(train_config.data)}-{model_config.size}"


class _FromCheckpoint(Fresh):
    """A start from a 1-step checkpoint: its data and `vae` are the defaults (flag > YAML > the
    source's), training keys from the preset table of the source's size."""

    table: dict[str, bool] = {}

    def __init__(self, user: UserConfig, path: str):
        self.user, self.path = user, path
        self.src = load_checkpoint(path, weights="model", keep_raw=True)
        self.one = self.src.config
        self.parent = str(self.src.path)

    @property
    def size(self) -> str:
        return self.one.size if self.one.size in SIZES else "tiny"

    def train_base(self) -> dict[str, Any]:
        return train_defaults(self.size, **self.table)

    def fill_train(self, train: dict[str, Any], user_train: dict[str, Any]) -> None:
        if "data" in user_train:
            return
        if not self.src.meta.get("data"):
            raise TransDiffError(f"{self.path} does not say what data it was trained on: pass `data` "
                                 "(a latents folder or image folder)")
        train["data"] = self.src.meta["data"]
        if "vae" not in user_train:  # the tokenizer of the source's data, unless the user set one
            train["vae"] = (self.src.meta.get("train") or {}).get("vae")

    def model_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.user.model.items() if k not in GEOMETRY_KEYS and k != "size"}


class InitFrom(_FromCheckpoint):
    """`train --init-from CKPT`: the source's config at the data's resolution (the decoder position
    embedding grown to its grid), a fresh class embedding when the class count differs."""

    table = {"decoder_only": True}

    def __init__(self, user: UserConfig, path: str):
        super().__init__(user, path)
        self.parent = path  # as the user spelled it (config.yaml names it so)

    def fill_train(self, train: dict[str, Any], user_train: dict[str, Any]) -> None:
        from ..data.latents import is_latent_folder

        super().fill_train(train, user_train)
        src_size = (self.src.meta.get("tokenizer") or {}).get("image_size")
        if "image_size" not in user_train and src_size and not is_latent_folder(train["data"]):
            train["image_size"] = src_size  # same resolution unless asked otherwise

    def model_and_data(self, train_config: TrainConfig, device: torch.device) -> tuple[ModelConfig, Any]:
        from ..model import init_from as init

        data = open_data(train_config, None, device)
        overrides = self.model_overrides()
        if self.size in ("B", "L", "H"):  # the 512 recipe's diffusion_batch_mul
            overrides.setdefault("diffusion_batch_mul", 4)
        config = init.target_config(self.one, data.latent_channels, data.latent_size,
                                    len(data.class_names), **overrides)
        asked = self.user.model.get("size")
        if asked is not None:
            init.check_widths(self.one, preset(asked, latent_channels=self.one.latent_channels,
                                               latent_size=self.one.latent_size), self.path)
        init.check_widths(self.one, config, self.path)
        return config, data

    def init_weights(self, model_config: ModelConfig, train_config: TrainConfig, data: Any,
                     reporter: Reporter | None) -> Weights:
        from ..model import init_from as init

        classes, fresh = model_config.num_classes, None
        if classes != self.one.num_classes:
            if train_config.only_train_diff:
                raise TransDiffError(f"the data has {classes} classes but {self.path} "
                                     f"{self.one.num_classes}: `only_train_diff` keeps the class embedding "
                                     "frozen, so it cannot learn new classes (drop `only_train_diff`)")
            fresh = init.fresh_class_embedding(model_config, train_config.seed)
            if reporter is not None:
                reporter.warning(
                    f"the data has {classes} classes, {self.path} {self.one.num_classes}: "
                    "the class embedding starts afresh")
        raw = init.init_state(self.src.raw_model, model_config, self.path, fresh)
        ema = init.init_state(self.src.raw_ema or self.src.raw_model, model_config, self.path, fresh)
        if train_config.only_train_diff:
            raw = init.frozen_from(ema, raw)
        return raw, ema

    def default_name(self, train_config: TrainConfig, model_config: ModelConfig, data: Any) -> str:
        return f"{data_name(train_config.data)}-{model_config.size}-{data.tokenizer.image_size}"


class FinetuneMrar(_FromCheckpoint):
    """`finetune-mrar --from CKPT`: the 1-step model converted to MRAR (K distinct mask tokens,
    z_proj for the reference patches), raw weights and EMA converted alike."""

    table = {"finetune": True}

    def __init__(self, user: UserConfig, path: str):
        super().__init__(user, path)
        if self.one.mrar:
            raise TransDiffError(f"{path} is already an MRAR model; "
                                 "finetune-mrar starts from a 1-step checkpoint")

    def model_and_data(self, train_config: TrainConfig, device: torch.device) -> tuple[ModelConfig, Any]:
        from ..model.convert import mrar_config

        one = self.one
        config = mrar_config(one, **{k: v for k, v in self.model_overrides().items() if k != "mrar"})
        data = open_data(train_config, config.mrar_rounds, device)
        if (data.latent_channels, data.latent_size) != (one.latent_channels, one.latent_size):
            raise TransDiffError(
                f"the checkpoint expects latents {one.latent_channels}x{one.latent_size}x"
                f"{one.latent_size} but the data ({data.source}) has {data.latent_channels}x"
                f"{data.latent_size}x{data.latent_size}")
        if len(data.class_names) > one.num_classes:
            raise TransDiffError(f"the data has {len(data.class_names)} classes but the "
                                 f"checkpoint only {one.num_classes}")
        return config, data

    def init_weights(self, model_config: ModelConfig, train_config: TrainConfig, data: Any,
                     reporter: Reporter | None) -> Weights:
        from ..model.convert import init_mrar_from_1step

        def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            # the same fresh rows for weights and EMA where the slot count grows
            return init_mrar_from_1step(state, self.one, model_config,
                                        torch.Generator().manual_seed(train_config.seed))

        return convert(self.src.raw_model), convert(self.src.raw_ema or self.src.raw_model)

    def class_names(self, data: Any, model_config: ModelConfig) -> list[str]:
        names = list(data.class_names)
        if self.src.class_names and len(self.src.class_names) >= len(names):
            names = list(self.src.class_names)  # a published model may know more classes
        return _pad(names, model_config)

    def default_name(self, train_config: TrainConfig, model_config: ModelConfig, data: Any) -> str:
        return f"{data_name(train_config.data)}-{model_config.size}-mrar"


def data_name(data: str) -> str:
    p = Path(data)
    return p.name or p.parent.name if ("/" in data or p.exists()) else data


def open_data(train_config: TrainConfig, group_size: int | None, device: torch.device) -> Any:
    from ..data.training_data import open_training_data

    return open_training_data(train_config.data, vae=train_config.vae, image_size=train_config.image_size,
                              group_size=group_size, device=device,
                              groups=train_config.groups if group_size is not None else None)


def fresh_train_base(size: str, data: str | None) -> dict[str, Any]:
    base = train_defaults(size)
    if (data or base.get("data", TrainConfig.data)) == "digits" and size == "tiny":
        base.update(DIGITS_EVAL)  # the user's eval settings win; `eval_every` 0 turns it off
    return base


def fresh_model(user_model: dict[str, Any], sources: dict[str, str], data: Any) -> ModelConfig:
    """The size preset at the data's geometry, the user's keys on top."""
    size = user_model.get("size") or "tiny"
    have = {"latent_channels": data.latent_channels, "latent_size": data.latent_size}
    for key, value in have.items():
        if key in user_model and user_model[key] != value:
            raise TransDiffError(
                f"size {size} as configured needs {key} {user_model[key]}, but the data "
                f"({data.source}) has latents {data.latent_channels}x{data.latent_size}x"
                f"{data.latent_size}")
    geometry = dict(have, num_classes=len(data.class_names))
    over = {k: v for k, v in user_model.items() if k not in GEOMETRY_KEYS and k != "size"}
    return preset(size, sources=sources, **geometry, **over)


def _pad(names: list[str], model_config: ModelConfig) -> list[str]:
    return names + [f"class{i}" for i in range(len(names), model_config.num_classes)]
