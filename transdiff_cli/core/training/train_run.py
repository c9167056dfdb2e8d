"""Running a training run (`train`, `finetune-mrar`): the device and process group, the plan
(run_plan: configs merged once and checked), the run folder and its lock, then the trainer."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device
from ..distributed import DistInfo, cleanup, init_distributed
from ..errors import TransDiffError
from ..fs import FolderLock, ensure_dir
from .run_dir import RunDir
from .run_plan import RunPlan, plan_run
from .run_request import RunRequest
from .trainer import Trainer, TrainResult

__all__ = ["RunRequest", "prepare", "run_training"]


def open_run_dir(req: RunRequest, plan: RunPlan, dist: DistInfo,
                 locks: contextlib.ExitStack | None) -> tuple[RunDir, bool]:
    """The run folder, locked by rank 0; whether the trainer resumes from its own checkpoint. A
    folder holding another model, or a run started from another parent, is refused."""
    run = RunDir(req.run_dir or Path("runs") / (req.name or plan.default_name))
    if dist.is_main and locks is not None:  # one writer per run folder (rank 0 speaks for all)
        ensure_dir(run.root, "`run_dir`")
        locks.enter_context(FolderLock(run.root, "`run_dir`"))
    if not run.has_checkpoint():
        if req.resume is True:
            raise TransDiffError(f"`resume`: no checkpoint in {run.root} to resume from")
        return run, False
    if req.resume is False:
        raise TransDiffError(f"run folder {run.root} already holds checkpoints; pass another "
                             "`run_dir` (or `name`), or `resume` to continue it")
    run.check_config({"model": plan.model_config.to_dict()})
    run.check_parent(plan.parent)
    return run, True


def prepare(req: RunRequest, locks: contextlib.ExitStack | None = None) -> tuple[Trainer, DistInfo]:
    """`locks` (rank 0) receives the run folder's lock, held until the caller closes it."""
    device = resolve_device(req.device)
    dist = init_distributed(device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    plan = plan_run(req, device, dist.world_size, dist.is_main)
    run, resuming = open_run_dir(req, plan, dist, locks)
    parent = {"parent": plan.parent} if plan.parent else {}
    meta = {"tokenizer": plan.data.tokenizer.spec(), "class_names": plan.class_names,
            "data": plan.train_config.data, **parent}
    if dist.is_main:
        run.create()
        run.write_config({"model": plan.model_config.to_dict(), "train": plan.train_config.to_dict(),
                          "command": " ".join(sys.argv), **parent})
    raw, ema = (None, None) if resuming or plan.init_weights is None else plan.init_weights
    trainer = Trainer(plan.model_config, plan.train_config, plan.data, run, device, dist, meta, raw, ema,
                      reporter=req.reporter, progress=req.progress)
    return trainer, dist


def run_prepared(prepare_run: Callable[[Any, contextlib.ExitStack], tuple[Trainer, DistInfo]],
                 req: Any) -> TrainResult:
    """Prepare a run (holding its folder's lock), train it, and leave the process group."""
    with contextlib.ExitStack() as locks:
        trainer, dist = prepare_run(req, locks)
        try:
            return trainer.train()
        finally:
            cleanup(dist)


def run_training(req: RunRequest) -> TrainResult:
    return run_prepared(prepare, req)
