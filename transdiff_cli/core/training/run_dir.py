"""The run folder: `runs/<name>/` with config.yaml, metrics.jsonl, loss.png, samples/, checkpoints/;
opened once per run (locked by rank 0, an interrupted commit recovered) and resumed from its latest
checkpoint."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import yaml

from ..distributed import DistInfo, barrier
from ..errors import TransDiffError
from ..fs import FolderLock, atomic_write, ensure_dir, write_text_atomic
from ..io.checkpoint import Resume, load_resume, recover
from ..model.config import ModelConfig
from ..plot_text import drawable
from ..reporting import Reporter
from ..schema import with_new_keys


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"
        self.metrics = self.root / "metrics.jsonl"
        self.config = self.root / "config.yaml"
        self.loss_plot = self.root / "loss.png"

    def has_checkpoint(self) -> bool:
        return (self.checkpoints / "LATEST").is_file()

    def create(self) -> None:
        for d in (self.root, self.checkpoints, self.samples):
            d.mkdir(parents=True, exist_ok=True)

    def write_config(self, doc: dict[str, Any]) -> None:
        write_text_atomic(self.config, yaml.safe_dump(doc, sort_keys=False))

    def _read_config(self) -> dict[str, Any]:
        """config.yaml as a mapping ({} when absent), checked on read: one line naming the file
        and the field that is wrong."""
        if not self.config.is_file():
            return {}
        try:
            old = yaml.safe_load(self.config.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            where = getattr(e, "problem_mark", None)
            at = f" (line {where.line + 1})" if where is not None else ""
            raise TransDiffError(f"{self.config} is not a valid run config{at}: "
                                 f"{getattr(e, 'problem', None) or e}; fix or delete it") from None
        if not isinstance(old, dict):
            raise TransDiffError(f"{self.config} is not a valid run config (not a mapping); "
                                 "fix or delete it")
        for key in ("model", "train"):
            if not isinstance(old.get(key, {}), dict):
                raise TransDiffError(f"{self.config}: field `{key}` must be a mapping, not a "
                                     f"{type(old[key]).__name__}; fix or delete it")
            if key in old:  # a run folder written before a key was renamed
                old[key] = with_new_keys(old[key])
        if not isinstance(old.get("parent"), (str, type(None))):
            raise TransDiffError(f"{self.config}: field `parent` must be a path, not a "
                                 f"{type(old['parent']).__name__}; fix or delete it")
        return old

    def check_config(self, doc: dict[str, Any], keys: tuple[str, ...] = ("model",)) -> None:
        """A run folder belongs to one model: refuse to resume it with a different one."""
        old = self._read_config()
        for key in keys:
            if old.get(key) != doc.get(key):
                diff = sorted(k for k in set(old.get(key, {})) | set(doc.get(key, {}))
                              if old.get(key, {}).get(k) != doc.get(key, {}).get(k))
                raise TransDiffError(
                    f"run folder {self.root} holds a run with a different {key} config "
                    f"({', '.join(diff[:4])} differ); pass another `run_dir` (or `name`)")

    def check_parent(self, parent: str | None) -> None:
        """A run folder continues the run it holds: refuse one started from another checkpoint
        (`init_from`, finetune-mrar's source) rather than relabel it."""
        old = self._read_config().get("parent")
        if _same_path(old, parent):
            return
        was = f"from {old}" if old else "without a parent checkpoint"
        now = f"from {parent}" if parent else "without one"
        raise TransDiffError(f"run folder {self.root} holds a run started {was}, but this run starts "
                             f"{now}; pass another `run_dir` (or `name`)")

    def resume_point(self, model_config: ModelConfig, is_main: bool, reporter: Reporter) -> Resume | None:
        """The checkpoint the run continues from (None: it starts afresh); the metrics logged after
        it (all of them for a run killed before its first checkpoint) dropped by rank 0."""
        resume = load_resume(self.root, model_config) if self.has_checkpoint() else None
        if is_main:
            self.truncate_metrics(resume.step if resume else 0)
            if resume:
                reporter.message(f"resuming {self.root} from step {resume.step}")
        return resume

    def append_metrics(self, rows: list[dict[str, Any]]) -> None:
        with self.metrics.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

    def _lines(self) -> list[tuple[str, dict[str, Any]]]:
        """Each complete row with its text. A torn line (a crash or a full disk mid-write) is
        skipped; a row of another shape (not an object, its `step` not a whole number) is skipped
        with a warning."""
        if not self.metrics.is_file():
            return []
        rows, foreign = [], []
        for n, line in enumerate(self.metrics.read_text(errors="replace").splitlines(), 1):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            step = row.get("step") if isinstance(row, dict) else None
            if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
                rows.append((line, row))
            elif line.strip():
                foreign.append(n)
        if foreign:
            warnings.warn(f"{self.metrics}: dropped {len(foreign)} row(s) without a whole-number `step` "
                          f"(line {', '.join(map(str, foreign[:5]))}{' ...' if len(foreign) > 5 else ''})",
                          stacklevel=2)
        return rows

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint we continue from (all of them for a
        run killed before its first checkpoint), and any torn line."""
        if not self.metrics.is_file():
            return
        keep = [line for line, row in self._lines() if row.get("step", 0) <= step]
        write_text_atomic(self.metrics, "".join(line + "\n" for line in keep))

    def read_metrics(self) -> list[dict[str, Any]]:
        return [row for _, row in self._lines()]

    def plot_loss(self) -> Path | None:
        rows = [r for r in self.read_metrics() if _is_number(r.get("loss"))]
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in rows]
        loss = [r["loss"] for r in rows]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        ax.plot(steps, loss, lw=1, alpha=0.5, label="loss")
        if len(loss) >= 5:  # a moving average makes the trend readable
            w = max(2, len(loss) // 20)
            smooth = [sum(loss[max(0, i - w + 1):i + 1]) / len(loss[max(0, i - w + 1):i + 1])
                      for i in range(len(loss))]
            ax.plot(steps, smooth, lw=2, label=f"moving average ({w})")
        ax.set_xlabel("step")
        ax.set_ylabel("flow-matching loss")
        ax.set_title(drawable(self.root.name))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_write(self.loss_plot, suffix=".png") as tmp:
            fig.savefig(tmp)
        plt.close(fig)
        return self.loss_plot


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


def _same_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a == b
    return a == b or Path(a).resolve() == Path(b).resolve()


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
