"""The teacher's trajectories that `distill` trains its student on.

Trajectory i starts from the noise of image i (seeded by (seed, i), as in `sample`), has class
i mod C, and follows the teacher's guided probability-flow ODE (Euler, `teacher_steps` steps). Only
its states at the student's grid t_k = 1 - k / K (k = 0..K) are kept: K + 1 states per MRAR round.
For MRAR every round reuses the same initial noise and takes the teacher's earlier rounds as its
references, as sampling does.

The pool is written in chunks, each atomically by the rank that drew it (chunk j by rank
j mod world), so a killed run keeps its finished chunks and a torchrun job splits the work. A
`pool.json` beside the chunks names what the pool was drawn with; a pool of other settings is refused.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from ..distributed import DistInfo, barrier
from ..errors import TransDiffError
from ..fs import write_text_atomic
from ..model.transdiff import TransDiff
from ..sampling.loop import run_sampler
from ..sampling.samplers import EulerODE, Generators, Sampler
from ..sampling.seeding import initial_noise

POOL_FILE = "pool.json"


@dataclass(frozen=True)
class PoolSpec:
    """What a pool is drawn with; a resumed run must ask for the same."""

    teacher: str  # the teacher checkpoint's path
    teacher_step: int | None  # its training step (our checkpoints), to notice a retrained teacher
    cfg: tuple[float, ...]  # the teacher's guidance, one scale per MRAR round
    teacher_steps: int
    student_steps: int
    size: int  # trajectories
    rounds: int  # MRAR rounds (1: a 1-step teacher)
    seed: int
    chunk_size: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cfg"] = list(self.cfg)
        return d

    @property
    def chunks(self) -> int:
        return math.ceil(self.size / self.chunk_size)


class Recorder(Sampler):
    """Runs `inner` and keeps the state at every `every`-th step and at the end."""

    def __init__(self, inner: Sampler, every: int):
        self.inner, self.every, self.states = inner, every, []
        self.sampling_steps = inner.sampling_steps
        self.name = inner.name

    @property
    def times(self) -> list[float]:
        return self.inner.times

    def step(self, x: torch.Tensor, i: int, v: torch.Tensor, generator: Generators) -> torch.Tensor:
        if i % self.every == 0:
            self.states.append(x.clone())
        self.inner.step(x, i, v, generator)
        if i == len(self.times) - 1:
            self.states.append(x.clone())
        return x


@torch.no_grad()
def teacher_states(model: TransDiff, labels: torch.Tensor, noise: torch.Tensor, cfg: tuple[float, ...],
                   teacher_steps: int, student_steps: int) -> torch.Tensor:
    """(B, rounds, K + 1, N_d, token_dim) float32 states of the teacher's guided Euler ODE at the
    student's grid. MRAR rounds reuse `noise` and feed each round's result back as a reference."""
    if teacher_steps % student_steps:
        raise TransDiffError(f"`teacher_steps` {teacher_steps} must be a multiple of `student_steps` "
                             f"{student_steps}: the student's grid points are teacher steps")
    guided = any(s != 1.0 for s in cfg)
    class_emb = model.class_embedding(labels)
    if guided:
        class_emb = torch.cat([class_emb, model.class_embedding(labels, null=True)])
    rounds: list[torch.Tensor] = []
    images: list[torch.Tensor] = []
    caches: list[dict] = [{} for _ in model.encoder_blocks]
    feats = None
    for k in range(len(cfg)):
        if not model.config.mrar:
            feats = model.features(class_emb)
        else:
            new = model.round_features(class_emb, images, k, caches)
            feats = new if feats is None else torch.cat([feats, new], dim=1)
        rec = Recorder(EulerODE(teacher_steps), teacher_steps // student_steps)
        out = run_sampler(model, model.condition(feats), noise, rec, cfg[k] if guided else 1.0)
        images.append(model.to_latent(out))
        rounds.append(torch.stack(rec.states, dim=1).float())
    return torch.stack(rounds, dim=1)


def _chunk_path(folder: Path, j: int) -> Path:
    return folder / f"chunk_{j:05d}.safetensors"


def build_pool(folder: Path, spec: PoolSpec, teacher: TransDiff, dist: DistInfo,
               progress: Callable[[int], None] | None = None, batch_size: int = 256) -> None:
    """Draw the chunks of the pool this rank owns that are not on disk yet; all ranks return when
    the whole pool is there."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / POOL_FILE
    if dist.is_main:
        if meta.is_file():
            old = json.loads(meta.read_text())
            if old != spec.to_dict():
                diff = sorted(k for k in old.keys() | spec.to_dict().keys() if old.get(k) != spec.to_dict().get(k))
                raise TransDiffError(f"{folder} holds a teacher pool drawn with other settings "
                                     f"({', '.join(diff)} differ); pass another `run_dir`")
        else:
            write_text_atomic(meta, json.dumps(spec.to_dict(), indent=1))
    barrier(dist)
    device = teacher.class_emb.weight.device
    c = teacher.config.num_classes
    for j in range(dist.rank, spec.chunks, dist.world_size):
        path = _chunk_path(folder, j)
        if path.is_file():
            continue
        idx = list(range(j * spec.chunk_size, min(spec.size, (j + 1) * spec.chunk_size)))
        parts = []
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            noise = initial_noise(teacher.config, part, spec.seed).to(device, teacher.class_emb.weight.dtype)
            labels = torch.tensor([i % c for i in part], device=device)
            parts.append(teacher_states(teacher, labels, noise, spec.cfg, spec.teacher_steps, spec.student_steps).cpu())
            if progress is not None:
                progress(len(part))
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({"states": torch.cat(parts).contiguous(), "labels": torch.tensor([i % c for i in idx])}, str(tmp))
        os.replace(tmp, path)  # a chunk on disk is complete
    barrier(dist)


class TeacherPool(Dataset):
    """Items (states (rounds, K + 1, N_d, token_dim), label), read from the chunk files on demand
    (memory-mapped: an ImageNet-sized pool need not fit in memory; each process opens its own)."""

    def __init__(self, folder: Path, spec: PoolSpec):
        self.paths = [_chunk_path(folder, j) for j in range(spec.chunks)]
        self.chunk_size = spec.chunk_size
        self._open: dict[int, Any] = {}
        n = 0
        for path in self.paths:
            with safe_open(str(path), "pt") as f:
                n += f.get_slice("labels").get_shape()[0]
        if n != spec.size:
            raise TransDiffError(f"{folder} holds {n} trajectories, expected {spec.size}")
        self.size = n

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers open their own files
        return {**self.__dict__, "_open": {}}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j, r = divmod(i, self.chunk_size)
        f = self._open.get(j)
        if f is None:
            f = self._open[j] = safe_open(str(self.paths[j]), "pt")
        return f.get_slice("states")[r:r + 1][0], int(f.get_slice("labels")[r:r + 1][0])
