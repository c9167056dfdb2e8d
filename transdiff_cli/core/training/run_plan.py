"""A run is planned once: presets, the YAML file and the flags merged into one `RunPlan`, every
value checked before anything is built (nanoGPT's configurator: overrides applied once, up front).

A start kind (fresh, `init_from`, `finetune-mrar`; start_kinds.py) only contributes its base
configurations and its initial weights. The precedence of every key, for all three (the same
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
from typing import Any

import torch

from ..model.config import ModelConfig
from .memory import check_fits_machine
from .run_request import RunRequest, UserConfig, merge_train, read_user_config
from .start_kinds import Fresh, start_kind
from .train_config import TrainConfig


@dataclass
class RunPlan:
    model_config: ModelConfig
    train_config: TrainConfig
    init_weights: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None  # (raw, EMA)
    parent: str | None  # the checkpoint the run starts from
    data: Any  # the opened training data (its geometry fixed the model's)
    class_names: list[str]
    default_name: str


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


def plan_run(req: RunRequest, device: torch.device, world_size: int = 1,
             is_main: bool = True) -> RunPlan:
    """The one merge: the start kind's base configs, the user's values on top, checked, then the
    data opened, the model's size checked against the machine and the initial weights built."""
    start, _, train_config = plan_train(req)
    model_config, data = start.model_and_data(train_config, device)
    check_fits_machine(model_config, train_config, device, world_size)
    init = start.init_weights(model_config, train_config, data, is_main)
    return RunPlan(model_config, train_config, init, start.parent, data,
                   start.class_names(data, model_config), start.default_name(train_config, model_config, data))
