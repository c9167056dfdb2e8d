"""Running a training run (`train`, `finetune-mrar`): the plan (run_plan: configs merged once and
checked, the machine settled), the run folder (run_dir: its lock and the checkpoint it resumes
from), then the trainer, which takes only settled values."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..distributed import DistInfo, cleanup
from ..reporting import Reporter
from .run_dir import open_run_dir
from .run_plan import plan_run
from .run_request import RunRequest
from .trainer import Trainer, TrainResult

__all__ = ["RunRequest", "prepare", "run_training"]


def prepare(req: RunRequest, locks: contextlib.ExitStack | None = None) -> tuple[Trainer, DistInfo]:
    """`locks` (rank 0) receives the run folder's lock, held until the caller closes it."""
    plan = plan_run(req)
    dist = plan.machine.dist
    run, resuming = open_run_dir(req.run_dir or Path("runs") / (req.name or plan.default_name), req.resume,
                                 dist, locks)
    if resuming:  # a folder holding another model, or a run started from another parent, is refused
        run.check_config({"model": plan.model_config.to_dict()})
        run.check_parent(plan.parent)
    reporter = req.reporter or Reporter()
    resume = run.resume_point(plan.model_config, dist.is_main, reporter)
    parent = {"parent": plan.parent} if plan.parent else {}
    meta = {"tokenizer": plan.data.tokenizer.spec(), "class_names": plan.class_names,
            "data": plan.train_config.data, **parent}
    if dist.is_main:
        run.create()
        run.write_config({"model": plan.model_config.to_dict(), "train": plan.train_config.to_dict(),
                          "command": " ".join(sys.argv), **parent})
    raw, ema = (None, None) if resume or plan.init_weights is None else plan.init_weights
    trainer = Trainer(plan.model_config, plan.train_config, plan.data, run, plan.machine, meta, raw, ema,
                      resume, reporter=reporter, progress=req.progress)
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
