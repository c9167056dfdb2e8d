"""`distill`: a few-step decoder student from a teacher checkpoint (docs/distillation.md says why).

Objective: segment-wise trajectory matching (progressive distillation in one round, as in
Salimans & Ho 2022 / PeRFlow). The teacher's guided probability-flow ODE is run with many steps
from seeded noise (`teacher_pool`); on the student's uniform grid t_k = 1 - k / K the student
learns, at the teacher's state x_k, the velocity whose one Euler step lands on the teacher's next
state: v* = (x_k - x_{k+1}) / (t_k - t_{k+1}). Sampled with the plain Euler ODE at K steps, the
student then retraces the teacher's K segments: K network evaluations instead of 100.

Guidance is distilled in at one scale (the teacher's own cfg unless given): the targets are guided
velocities and the student sees only the conditional branch, so it needs no null rows (half the
batch). The student is an ordinary TransDiff whose defaults say: sampler "ode", K steps, cfg 1.

Only the diffusion decoder trains: the AR encoder, class, null and condition embeddings stay the
teacher's (EMA) weights, so the semantic features, `fuse` and `diversity` are unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from ..data.training_data import TrainingData
from ..device import training_machine
from ..distributed import DistInfo
from ..errors import TransDiffError
from ..io.checkpoint import load_checkpoint
from ..model.config import ModelConfig
from ..model.transdiff import TransDiff
from ..reporting import Reporter
from ..sampling.inference import open_tokenizer
from ..sampling.inference import prepare as prepare_model
from .run_dir import open_run_dir
from .run_plan import merge_train
from .run_request import RunRequest, read_user_config
from .teacher_pool import PoolSpec, TeacherPool, build_pool
from .train_config import TrainConfig
from .train_run import run_prepared
from .trainer import Trainer, TrainResult

STUDENT_SAMPLER = "ode"

# Per size: the student's optimiser run and the pool. tiny: run on digits (docs/distillation.md).
# S-H: not run here; scaled from tiny (about 60 passes over the pool, the MRAR fine-tune's lr) and
# labelled as starting points in the docs.
DISTILL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(train=dict(batch_size=128, base_lr=1e-3, warmup_steps=20, max_steps=300, ema_rate=0.99,
                            ema_warmup=False, ckpt_every=100), pool_size=2048, teacher_steps=40),
    "S": dict(train=dict(batch_size=256, base_lr=4e-4, warmup_steps=100, max_steps=4000, ema_rate=0.999,
                         ema_warmup=False, ckpt_every=1000), pool_size=65536, teacher_steps=100),
    **{s: dict(train=dict(batch_size=1024, lr=5e-5, warmup_steps=500, max_steps=20000, ema_rate=0.9999,
                          ema_warmup=False, ckpt_every=2000, grid_classes=8), pool_size=320_000, teacher_steps=100)
       for s in ("B", "L", "H")},
}


@dataclass
class DistillRequest:
    run: RunRequest  # the trainer's options (run folder, optimiser, devices, evaluation)
    teacher: str
    vae: str | None = None  # tokenizer of a published teacher (kl16:PATH)
    student_steps: int = 4
    teacher_steps: int | None = None
    cfg: str | float | list[float] | None = None  # guidance distilled in (default: the teacher's)
    pool_size: int | None = None


class TrajectoryMatching(torch.nn.Module):
    """The student's loss on a batch of teacher states: mean squared error between its velocity at
    (x_k, t_k) and the teacher's segment velocity (x_k - x_{k+1}) / (t_k - t_{k+1}), every segment
    of every round. The condition comes from the frozen encoder (no gradient, no class dropout,
    dropout off): the features the student will see at sampling time."""

    def __init__(self, model: TransDiff, student_steps: int):
        super().__init__()
        self.model, self.k = model, student_steps

    def conditions(self, states: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        m = self.model
        encoder_modes = [blk.training for blk in m.encoder_blocks]
        for blk in m.encoder_blocks:  # the teacher's features: no dropout in the frozen encoder
            blk.eval()
        try:
            with torch.no_grad():
                emb = m.class_embedding(labels, drop=torch.zeros_like(labels, dtype=torch.bool))
                if not m.config.mrar:
                    return [m.condition(m.features(emb))]
                rounds = states.shape[1]
                refs = [m.to_latent(states[:, r, -1]) for r in range(rounds - 1)]
                feats = m.features(emb, m.references(refs))
                r = m.config.ref_tokens
                return [m.condition(feats[:, :(j + 1) * r]) for j in range(rounds)]
        finally:
            for blk, mode in zip(m.encoder_blocks, encoder_modes):
                blk.train(mode)

    def forward(self, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, rounds, k1 = states.shape[:3]
        k = k1 - 1
        if k != self.k:
            raise TransDiffError(f"the pool holds {k}-step trajectories, the student takes {self.k}")
        t = 1.0 - torch.arange(k, device=states.device, dtype=states.dtype) / k
        losses = []
        for r, c in enumerate(self.conditions(states, labels)):
            s = states[:, r]
            x = s[:, :-1].flatten(0, 1)
            target = ((s[:, :-1] - s[:, 1:]) * k).flatten(0, 1)
            v = self.model.decoder(x, (1000.0 * t).repeat(b), c=c.repeat_interleave(k, dim=0))
            losses.append(F.mse_loss(v.float(), target.float()))
        return torch.stack(losses).mean()


class DistillTrainer(Trainer):
    """The trainer (checkpoints, resume, DDP, EMA, evaluation) with the trajectory-matching loss."""

    def __init__(self, *args: Any, student_steps: int, **kwargs: Any):
        self.student_steps = student_steps
        super().__init__(*args, **kwargs)
        if not hasattr(self, "objective"):  # `_parallel` made it under torchrun
            self.objective = TrajectoryMatching(self.model, student_steps)

    def _parallel(self) -> DDP:
        self.objective = TrajectoryMatching(self.model, self.student_steps)
        return DDP(self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _loss(self, net: torch.nn.Module, latents: torch.Tensor, labels: torch.Tensor, micro: int) -> torch.Tensor:
        return (self.ddp or self.objective)(latents, labels)


def student_config(teacher: ModelConfig, student_steps: int) -> ModelConfig:
    """The teacher's config with the student's sampling defaults: guidance distilled in (cfg 1, no
    null rows), `student_steps` Euler ODE steps."""
    return dataclasses.replace(teacher, cfg=1.0, mrar_cfg=[], scale_0=1.0, scale_1=1.0,
                               sampling_steps=student_steps, sampler=STUDENT_SAMPLER)


def _teacher_cfg(req: DistillRequest, config: ModelConfig, published: bool) -> tuple[float, ...]:
    from ..sampling.eval_settings import checkpoint_defaults
    from ..sampling.settings import parse_cfg

    rounds = config.mrar_rounds if config.mrar else 1
    if req.cfg is None or req.cfg == "":
        scales = checkpoint_defaults(config, published).cfg[:rounds]
    else:
        try:
            scales = parse_cfg(req.cfg, rounds)
        except ValueError:
            raise TransDiffError(f"`cfg` {req.cfg!r} is not a number or a comma-separated list") from None
    return tuple(float(s) for s in scales)


def prepare(req: DistillRequest, locks: contextlib.ExitStack | None = None) -> tuple[DistillTrainer, DistInfo]:
    run_req = req.run
    if req.student_steps < 1:
        raise TransDiffError(f"`student_steps` must be at least 1, not {req.student_steps}")
    src = load_checkpoint(req.teacher, weights="ema")
    teacher_config = src.config
    if teacher_config.sampler == STUDENT_SAMPLER and src.meta.get("distill"):
        raise TransDiffError(f"{req.teacher} is already a distilled student; distill from its teacher "
                             f"({src.meta['distill'].get('teacher')})")
    size = teacher_config.size if teacher_config.size in DISTILL_PRESETS else "tiny"
    preset = DISTILL_PRESETS[size]
    user = read_user_config(run_req)  # YAML, then flags; each value's type and range checked
    if user.model:
        raise TransDiffError("`distill` keeps the teacher's model config; a config file may only have a "
                             "`train:` section")
    train_dict = merge_train(dict(preset["train"]), user.train)
    train_dict.update(only_train_diff=True, data=src.meta.get("data") or "teacher",
                      grid_sampling_steps=None, vae=req.vae)
    train_config = TrainConfig.from_dict(train_dict)
    train_config.validate()
    machine = training_machine(run_req.device, train_config.precision)
    device, dist = machine.device, machine.dist
    teacher_steps = req.teacher_steps or preset["teacher_steps"]
    if teacher_steps < 1 or teacher_steps % req.student_steps:
        raise TransDiffError(f"`teacher_steps` {teacher_steps} must be a positive multiple of `student_steps` "
                             f"{req.student_steps}: the student's grid points are teacher steps")
    model_config = student_config(teacher_config, req.student_steps)
    cfg = _teacher_cfg(req, teacher_config, src.published)
    pool_size = req.pool_size or preset["pool_size"]
    if pool_size < train_config.batch_size:
        raise TransDiffError(f"`pool_size` {pool_size} is smaller than `batch_size` {train_config.batch_size}")
    spec = PoolSpec(teacher=str(src.path), teacher_step=src.meta.get("step"), cfg=cfg,
                    teacher_steps=teacher_steps, student_steps=req.student_steps, size=pool_size,
                    rounds=len(cfg), seed=train_config.seed, chunk_size=min(1024, pool_size))
    tokenizer = open_tokenizer(src, req.vae, device)
    teacher_name = src.path.parent.parent.name if src.path.parent.name == "checkpoints" else src.path.stem
    root = run_req.run_dir or Path("runs") / (run_req.name or f"{teacher_name}-distill{req.student_steps}")
    run, resuming = open_run_dir(root, run_req.resume, dist, locks)
    distill_doc = {"teacher": str(src.path), "objective": "trajectory matching (teacher Euler ODE segments)",
                   "cfg": list(cfg), "teacher_steps": teacher_steps, "student_steps": req.student_steps,
                   "pool_size": pool_size}
    init = {k: v.detach().clone() for k, v in src.model.state_dict().items()}  # teacher EMA
    if resuming:
        run.check_config({"model": model_config.to_dict(), "distill": distill_doc}, keys=("model", "distill"))
    reporter = run_req.reporter or Reporter()
    teacher = prepare_model(src.model, device, "fp32")
    if dist.is_main:
        reporter.message(f"teacher pool: {pool_size} trajectories of {teacher_steps} guided Euler ODE steps "
                         f"(cfg {', '.join(f'{c:g}' for c in cfg)}) into {run.root / 'teacher_pool'}")
    bar = reporter.progress("teacher pool", pool_size // dist.world_size, 0, unit="traj") \
        if (run_req.progress and dist.is_main) else contextlib.nullcontext(None)
    done = [0]
    with bar as progress:
        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0])
        build_pool(run.root / "teacher_pool", spec, teacher, dist, tick)
    del teacher
    pool = TeacherPool(run.root / "teacher_pool", spec)
    class_names = src.class_names or [f"class{i}" for i in range(teacher_config.num_classes)]
    data = TrainingData(pool, class_names, tokenizer, teacher_config.latent_channels, teacher_config.latent_size,
                        f"teacher pool of {req.teacher}")
    meta = {"tokenizer": tokenizer.spec(), "data": train_config.data, "parent": str(src.path),
            "distill": distill_doc, **({"class_names": src.class_names} if src.class_names else {})}
    if dist.is_main:
        run.create()
        run.write_config({"model": model_config.to_dict(), "train": train_config.to_dict(), "distill": distill_doc,
                          "command": " ".join(sys.argv), "parent": str(src.path)})
    resume = run.resume_point(model_config, dist.is_main, reporter)
    trainer = DistillTrainer(model_config, train_config, data, run, machine, meta, init, init, resume,
                             reporter=reporter, progress=run_req.progress, student_steps=req.student_steps)
    return trainer, dist


def run_distill(req: DistillRequest) -> TrainResult:
    return run_prepared(prepare, req)
