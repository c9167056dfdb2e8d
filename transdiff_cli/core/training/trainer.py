"""The trainer behind `train`, `finetune-mrar` and `distill` (which overrides `_loss`): one loop
for 1-step and MRAR models, on one CPU or on many GPUs under torchrun (DDP).

Randomness (noise, times, class dropout) is drawn for the *global* batch from a generator seeded
by (seed, step, micro-step), and every rank takes its slice; data order is a seeded permutation
per epoch, sliced the same way. So a run's result does not depend on how the batch is split across
processes, and a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from .. import flow
from ..data.images import save_grid
from ..device import Machine
from ..distributed import all_reduce_mean, barrier
from ..errors import TransDiffError
from ..io.checkpoint import Resume, mark_latest, recover, save_checkpoint
from ..model.config import ModelConfig
from ..model.transdiff import TransDiff
from ..reporting import Reporter, Update
from ..sampling.loop import sample_rounds
from .optim import EMA, lr_at, make_optimizer
from .run_dir import RunDir
from .train_config import TrainConfig

DUMP_GRADS_ENV = "TRANSDIFF_DUMP_FIRST_GRADS"  # file to save the first step's gradients to


@dataclass
class TrainResult:
    step: int
    checkpoint: Path | None
    stopped_early: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True  # rank 0: the process that reports


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to save a checkpoint and stop at the next step boundary."""

    def __init__(self) -> None:
        self.raised: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.raised = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def global_draws(model_config: ModelConfig, global_batch: int, rank_slice: slice, seed: int,
                 step: int, micro: int, device: torch.device, dtype: torch.dtype,
                 dropout: bool) -> dict[str, Any]:
    """Noise, timesteps and the class-dropout mask for this rank's slice of the global batch."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 1009 + micro) % (2**63))
    m = model_config.diffusion_batch_mul
    images = model_config.mrar_rounds if model_config.mrar else 1
    drop = None
    if dropout and model_config.label_drop_prob > 0:
        drop = (torch.rand(global_batch, device=device, generator=g)
                < model_config.label_drop_prob)[rank_slice]
    noise, times = [], []
    shape = (m, global_batch, model_config.num_tokens, model_config.token_dim)
    for _ in range(images):
        n = torch.randn(shape, device=device, generator=g, dtype=dtype)
        t = flow.sample_timesteps(m * global_batch, device, generator=g).view(m, global_batch)
        noise.append(n[:, rank_slice].reshape(-1, *shape[2:]))
        times.append(t[:, rank_slice].reshape(-1))
    if not model_config.mrar:
        return {"noise": noise[0], "timesteps": times[0], "drop": drop}
    return {"noise": noise, "timesteps": times, "drop": drop}


def epoch_indices(n: int, seed: int, epoch: int, per_step: int, micro_batch: int, world: int,
                  rank: int) -> list[int]:
    """This rank's sample indices for one epoch: a seeded permutation cut into global steps of
    `per_step` samples; inside each micro-batch rank r takes the r-th contiguous slice."""
    g = torch.Generator().manual_seed((seed * 7919 + epoch) % (2**63))
    perm = torch.randperm(n, generator=g).tolist()
    local = micro_batch // world
    out: list[int] = []
    for start in range(0, len(perm) - per_step + 1, per_step):
        for mb in range(start, start + per_step, micro_batch):
            out.extend(perm[mb + rank * local: mb + (rank + 1) * local])
    return out


def _collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    latents = torch.stack([torch.as_tensor(b[0]) for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    return latents, labels


class Trainer:
    """Everything it needs is settled before: the configs, the opened data, the run folder (locked),
    the machine, and the weights it starts from (`init_state`/`init_ema`) or `resume`s."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, data: Any, run: RunDir,
                 machine: Machine, meta: dict[str, Any],
                 init_state: dict[str, torch.Tensor] | None = None,
                 init_ema: dict[str, torch.Tensor] | None = None,
                 resume: Resume | None = None,
                 reporter: Reporter | None = None, progress: bool = True):
        train_config.validate()
        self.model_config, self.train_config, self.data, self.run = model_config, train_config, data, run
        device, dist = machine.device, machine.dist
        self.device, self.dist, self.meta = device, dist, meta
        self.reporter = reporter or Reporter()
        self.show_progress = progress and dist.is_main
        world = dist.world_size
        if train_config.batch_size % (world * train_config.grad_accum):
            raise TransDiffError(f"`batch_size` {train_config.batch_size} must be divisible by processes "
                                 f"({world}) x `grad_accum` ({train_config.grad_accum})")
        self.micro_batch = train_config.batch_size // train_config.grad_accum  # global micro-batch
        self.local_batch = self.micro_batch // world
        n = len(data.dataset)
        if n < train_config.batch_size:
            raise TransDiffError(f"the data has {n} samples, fewer than `batch_size` "
                                 f"{train_config.batch_size}")
        self.steps_per_epoch = n // train_config.batch_size
        self.total = train_config.max_steps if train_config.max_steps is not None else \
            math.ceil(train_config.epochs * self.steps_per_epoch)
        self.warmup_steps = train_config.warmup_for(self.steps_per_epoch)

        torch.manual_seed(train_config.seed)  # same initial weights on every rank and every rerun
        self.model = TransDiff(model_config)
        if init_state is not None:
            self.model.load_state_dict(init_state)
        if not model_config.mrar:  # 1-step: z_proj's output is overwritten by the mask token
            self.model.z_proj.requires_grad_(False)
        # only_train_diff: encoder, class and condition embeddings frozen (docs/architecture.md#recipes)
        if train_config.only_train_diff:
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.startswith("decoder."))
        self.model.to(device)
        self.ema = EMA(self.model, train_config.ema_rate, train_config.ema_warmup)
        if init_ema is not None:
            self.ema.load({k: v.to(device) for k, v in init_ema.items()})
        self.opt = make_optimizer(self.model, train_config, device)
        self.step, self.epoch, self.batch_pos = 0, 0, 0
        self.resumed_from: Path | None = None
        if resume is not None:
            self._resume(resume)
        self.ddp = self._parallel() if dist.enabled else None
        self.autocast_dtype = machine.autocast
        self.evaluator = None
        if train_config.eval_every:  # quality during training (FID of the EMA model)
            from .train_eval import TrainingEvaluator

            self.evaluator = TrainingEvaluator(train_config, model_config, data.tokenizer, dist, device, run)
        self.tb = None
        if train_config.tensorboard and dist.is_main:
            from .tensorboard_log import TensorBoardLog

            self.tb = TensorBoardLog(run.root / "tensorboard")

    # ------------------------------------------------------------------ state
    def _resume(self, resume: Resume) -> None:
        """Continue exactly where the checkpoint stopped: weights, EMA, optimizer, position, RNG."""
        state = resume.state
        self.model.load_state_dict(resume.model)  # checked to fit by load_resume
        self.ema.load({k: v.to(self.device) for k, v in resume.ema.items()})
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.batch_pos = state["step"], state["epoch"], state["batch_pos"]
        self.resumed_from = resume.folder
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    def save(self) -> Path | None:
        """Rank 0 writes weights, EMA and the training state to a new step folder atomically."""
        path = None
        if self.dist.is_main:
            name = f"step_{self.step:07d}"
            train_state = {
                "step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos,
                "optimizer": self.opt.state_dict(), "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(self.device)
                if self.device.type == "cuda" else None,
                "world_size": self.dist.world_size,
            }
            meta = dict(self.meta, step=self.step, train=self.train_config.to_dict())
            path = save_checkpoint(self.run.checkpoints / name, self.model.state_dict(),
                                   self.model_config, meta, ema_state=self.ema.state_dict(self.model),
                                   train_state=train_state)
            mark_latest(self.run.checkpoints, name)
            recover(self.run.checkpoints)  # drops hidden leftovers of interrupted commits
            self._prune()
        barrier(self.dist)
        return path

    def _prune(self) -> None:
        steps = sorted(self.run.checkpoints.glob("step_*"))
        for old in steps[:-self.train_config.keep_last] if self.train_config.keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)

    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """A grid of EMA samples (rows = classes), seeded so grids of different steps compare."""
        if not self.dist.is_main:
            return None
        with torch.random.fork_rng(devices=[]):  # building a model must not move the run's RNG
            model = TransDiff(self.model_config).to(self.device)
        model.load_state_dict(self.ema.state_dict(self.model))
        model.eval()
        k = min(self.train_config.grid_classes, self.model_config.num_classes)
        labels = torch.arange(k, device=self.device).repeat_interleave(self.train_config.grid_per_class)
        g = torch.Generator(device=self.device).manual_seed(self.train_config.seed)
        latents = sample_rounds(model, labels, generator=g, sampling_steps=self.train_config.grid_sampling_steps)[-1]
        images = self.data.tokenizer.to_images(latents.float())
        path = save_grid(images, self.run.samples / f"step_{self.step:07d}.png",
                         nrow=self.train_config.grid_per_class)
        save_grid(images, self.run.samples / "latest.png", nrow=self.train_config.grid_per_class)
        if self.tb is not None:
            self.tb.image("samples", path, self.step)
        return path

    def evaluate(self) -> None:
        """FID (+ IS or class fidelity) of the EMA model: every rank draws its share."""
        row = self.evaluator(self.ema.state_dict(self.model), self.step)
        if row is not None:
            extra = f", class fidelity {row['class_fidelity']:.3f}" if "class_fidelity" in row else \
                (f", IS {row['inception_score']:.2f}" if row.get("inception_score") is not None else "")
            self.reporter.message(f"step {self.step}: FID {row['fid']:.3f}{extra} ({row['eval_images']} EMA "
                               f"images, {row['eval_seconds']} s)")
            if self.tb is not None:
                self.tb.scalars(row, "eval/")

    def _missed_evaluation(self) -> bool:
        """A resumed run whose checkpoint step is an evaluation step without an FID row in the
        metrics (rank 0 reads them and tells every rank, since all of them draw images)."""
        every = self.train_config.eval_every
        if self.evaluator is None or self.resumed_from is None or not every or self.step % every:
            return False
        missing = self.dist.is_main and not any(
            r["step"] == self.step and "fid" in r for r in self.run.read_metrics())
        flag = all_reduce_mean(torch.tensor([1.0 if missing else 0.0], device=self.device), self.dist)
        return flag.item() > 0

    # ------------------------------------------------------------------ loop
    def _parallel(self) -> DDP:
        """The module DDP runs (a subclass with another objective wraps that instead)."""
        return DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _loss(self, net: torch.nn.Module, latents: torch.Tensor, labels: torch.Tensor, micro: int) -> torch.Tensor:
        """The flow-matching loss of one micro-batch, with this rank's slice of the global draws."""
        rank_slice = slice(self.dist.rank * self.local_batch, (self.dist.rank + 1) * self.local_batch)
        draws = global_draws(self.model_config, self.micro_batch, rank_slice, self.train_config.seed, self.step,
                             micro, self.device, torch.float32, dropout=True)
        return net(latents, labels, **draws)

    def _loader(self) -> DataLoader:
        idx = epoch_indices(len(self.data.dataset), self.train_config.seed, self.epoch, self.train_config.batch_size,
                            self.micro_batch, self.dist.world_size, self.dist.rank)
        per_step_local = self.local_batch * self.train_config.grad_accum
        idx = idx[self.batch_pos * per_step_local:]
        return DataLoader(self.data.dataset, batch_size=self.local_batch, sampler=idx,
                          drop_last=True, collate_fn=_collate, num_workers=self.train_config.num_workers,
                          pin_memory=self.device.type == "cuda")

    def _micro_step(self, latents: torch.Tensor, labels: torch.Tensor, micro: int) -> torch.Tensor:
        net = self.ddp or self.model
        sync = self.ddp is None or micro == self.train_config.grad_accum - 1
        ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()
        amp = torch.autocast(self.device.type, dtype=self.autocast_dtype) \
            if self.autocast_dtype else contextlib.nullcontext()
        with ctx:
            with amp:
                loss = self._loss(net, latents, labels, micro)
            (loss / self.train_config.grad_accum).backward()
        return loss.detach()

    def train(self) -> TrainResult:
        train_config = self.train_config
        if self.dist.is_main:
            self.run.create()
        barrier(self.dist)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        start_step, t0 = self.step, time.time()
        if self._missed_evaluation():  # killed between checkpoint N and its evaluation
            self.evaluate()
        window: list[torch.Tensor] = []
        window_t, window_start = time.time(), self.step
        last_ckpt: Path | None = None
        stopped = None
        bar = self.reporter.progress("training", self.total, self.step, unit="img/s",
                                     fields={"loss": float("nan"), "lr": 0.0, "ips": 0.0}) \
            if self.show_progress else contextlib.nullcontext(None)
        with _StopFlag() as stop, bar as progress:
            while self.step < self.total and stopped is None:
                it = iter(self._loader())
                steps_left_in_epoch = self.steps_per_epoch - self.batch_pos
                for _ in range(min(steps_left_in_epoch, self.total - self.step)):
                    losses = []
                    for micro in range(train_config.grad_accum):
                        latents, labels = next(it)
                        latents = latents.to(self.device, non_blocking=True)
                        labels = labels.to(self.device, non_blocking=True)
                        losses.append(self._micro_step(latents, labels, micro))
                    if self.step == 0 and DUMP_GRADS_ENV in os.environ and self.dist.is_main:
                        self._dump_grads(Path(os.environ[DUMP_GRADS_ENV]))
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, train_config.grad_clip)
                    lr = lr_at(self.step, self.total, train_config, self.warmup_steps)
                    for group in self.opt.param_groups:
                        group["lr"] = lr
                    self.opt.step()
                    self.opt.zero_grad(set_to_none=True)
                    self.ema.update(self.model, self.step)
                    self.step += 1
                    self.batch_pos += 1
                    window.append(torch.stack([torch.stack(losses).mean(), grad_norm.float()]))
                    boundary = self.step % train_config.log_every == 0 or self.step == self.total
                    if stop.raised and not self.dist.enabled:
                        boundary = True
                    if boundary:
                        stopped = self._log(window, window_t, window_start, lr, progress, stop)
                        window, window_t, window_start = [], time.time(), self.step
                        if stopped:
                            break
                    if self.step % train_config.ckpt_every == 0 and self.step < self.total:
                        last_ckpt = self.save()
                        if train_config.sample_every is None:
                            self.sample_grid()
                    if train_config.sample_every and self.step % train_config.sample_every == 0:
                        self.sample_grid()
                    if self.evaluator is not None and self.step % train_config.eval_every == 0:
                        self.evaluate()
                if self.batch_pos >= self.steps_per_epoch:
                    self.epoch += 1
                    self.batch_pos = 0
        if self.step == start_step and self.resumed_from is not None:
            last_ckpt = self.resumed_from  # a finished run: its final checkpoint stays untouched
        elif self.step != start_step or last_ckpt is None:
            last_ckpt = self.save()
        grid = self.sample_grid()
        if self.dist.is_main:
            self.run.plot_loss()
        if self.tb is not None:
            self.tb.close()
        elapsed = time.time() - t0
        summary = {"step": self.step, "total_steps": self.total, "seconds": round(elapsed, 1),
                   "images_per_s": round((self.step - start_step) * train_config.batch_size
                                         / max(elapsed, 1e-9), 2),
                   "checkpoint": str(last_ckpt) if last_ckpt else None,
                   "grid": str(grid) if grid else None, "stopped_by": stopped}
        return TrainResult(self.step, last_ckpt, stopped is not None, summary, self.dist.is_main)

    def _dump_grads(self, path: Path) -> None:
        """Debugging aid: the first step's (all-reduced) gradients, to compare process layouts."""
        grads = {k: p.grad.detach().cpu().clone() for k, p in self.model.named_parameters()
                 if p.grad is not None}
        torch.save(grads, path)

    def _log(self, window: list[torch.Tensor], t_start: float, step_start: int, lr: float,
             progress: Update | None, stop: _StopFlag) -> str | None:
        """Read the window's losses (the only host sync), check them, write metrics; returns why
        the run must stop, if it must."""
        vals = torch.stack(window)
        vals = all_reduce_mean(vals, self.dist)
        flag = torch.tensor([1.0 if stop.raised else 0.0], device=self.device)
        flag = all_reduce_mean(flag, self.dist)
        vals = vals.cpu()
        dt = max(time.time() - t_start, 1e-9)
        ips = (self.step - step_start) * self.train_config.batch_size / dt
        if not torch.isfinite(vals[:, 0]).all():
            bad = step_start + int((~torch.isfinite(vals[:, 0])).nonzero()[0]) + 1
            latest = self.run.checkpoints / "LATEST"
            keep = latest.read_text().strip() if latest.is_file() else "none yet"
            raise TransDiffError(f"the loss became non-finite at step {bad}; stopped without "
                                 f"saving (last good checkpoint: {keep}); try a lower `lr`")
        if self.dist.is_main:
            rows = [{"step": step_start + i + 1, "loss": float(v[0]), "grad_norm": float(v[1]),
                     "lr": lr, "images_per_s": round(ips, 2), "epoch": self.epoch}
                    for i, v in enumerate(vals)]
            self.run.append_metrics(rows)
            if self.tb is not None:
                for row in rows:
                    self.tb.scalars(row, "train/")
            if progress is not None:
                progress(self.step, loss=float(vals[:, 0].mean()), lr=lr, ips=ips)
        if flag.item() > 0:
            return stop.raised or "signal"
        return None
