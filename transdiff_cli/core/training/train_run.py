"""Running a training run (`train`, `finetune-mrar`; `distill` shares the run folder's steps): the
plan (run_plan: configs merged once and checked, the machine settled), the run folder with its lock
and the checkpoint it resumes from, then the trainer, which takes only settled values."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..distributed import DistInfo, barrier, cleanup
from ..errors import TransDiffError
from ..fs import FolderLock, ensure_dir
from ..io.checkpoint import Resume, load_resume, recover
from ..model.config import ModelConfig
from ..reporting import Reporter
from .run_dir import RunDir
from .run_plan import plan_run
from .run_request import RunRequest
from .trainer import Trainer, TrainResult

__all__ = ["RunRequest", "prepare", "run_training"]


def open_run_dir(root: str | Path, resume: bool | None, dist: DistInfo,
                 locks: contextlib.ExitStack | None) -> tuple[RunDir, bool]:
    """The run folder, locked by rank 0 (`locks` holds the lock) and cleared of an interrupted
    commit's leftovers; whether it holds a checkpoint to resume from (`resume` None: resume when
    it does; True: it must; False: it must not)."""
    run = RunDir(root)
    if dist.is_main:
        if locks is not None:  # one writer per run folder (rank 0 speaks for all)
            ensure_dir(run.root, "`run_dir`")
            locks.enter_context(FolderLock(run.root, "`run_dir`"))
        recover(run.checkpoints)
    barrier(dist)
    if not run.has_checkpoint():
        if resume is True:
            raise TransDiffError(f"`resume`: no checkpoint in {run.root} to resume from")
        return run, False
    if resume is False:
        raise TransDiffError(f"run folder {run.root} already holds checkpoints; pass another "
                             "`run_dir` (or `name`), or `resume` to continue it")
    return run, True


def resume_point(run: RunDir, resuming: bool, model_config: ModelConfig, dist: DistInfo,
                 reporter: Reporter) -> Resume | None:
    """The checkpoint the run continues from (None: it starts afresh); the metrics logged after it
    (all of them for a run killed before its first checkpoint) dropped."""
    resume = load_resume(run.root, model_config) if resuming else None
    if dist.is_main:
        run.truncate_metrics(resume.step if resume else 0)
        if resume:
            reporter.message(f"resuming {run.root} from step {resume.step}")
    return resume


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
    resume = resume_point(run, resuming, plan.model_config, dist, reporter)
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
