"""Writing `sample`'s outputs: the PNGs, grid, MRAR round strips and `samples.json` of a folder,
staged beside `--out` and swapped in when complete, and the rules that keep a user's files safe.

- `--out` only ever replaces what an earlier `sample` wrote there (the files its `samples.json`
  lists, and `.npz` files this tool stamped); a folder holding anything else is refused before any
  work unless `overwrite`.
- A symlinked `--out` is written through: the staging folder lies beside the link's target (same
  file system) and the target is what is replaced; the link stays.
- The swap exchanges the two folders in one step where the OS can (Linux renameat2), else with two
  renames; a run killed between those is rolled back by the next one (`recover_swap`).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.classes import class_label
from ..data.images import make_grid, save_pngs
from ..errors import TransDiffError
from ..fs import check_file_target, ensure_dir, os_error, recover_swap, staging_folder, swap_folder
from .settings import SampleSettings

GRID_MAX = 256  # images shown in grid.png; the PNG files and the .npz hold every image
SAMPLES_JSON = "samples.json"
GRID_PNG = "grid.png"
ROUNDS = "rounds"
GENERATED_FORMAT = "transdiff-generated/1"  # the identity an .npz of `generate_npz` records


@dataclass
class Batch:
    indices: list[int]
    labels: list[int]
    images: torch.Tensor  # (B, C, H, W) in [-1, 1], CPU
    rounds: list[torch.Tensor] | None = None  # decoded image of every MRAR round, with save_rounds


@dataclass
class Written:
    out: Path
    pngs: list[Path] = field(default_factory=list)
    grid: Path | None = None
    strips: list[Path] = field(default_factory=list)
    npz: Path | None = None
    info: Path | None = None
    done: bool = False  # already there from an earlier run of the same job: nothing was written


def file_name(index: int, label: int) -> str:
    return f"{index:05d}_class{label}.png"


def strip_file(out: Path, png: str) -> Path:
    """Where `save_rounds` puts the strip of every MRAR round of image file `png`."""
    return out / ROUNDS / png.replace(".png", "_rounds.png")


def grid_rows(num_per_class: int) -> int | None:
    """One class per grid row when that stays readable."""
    return num_per_class if 1 < num_per_class <= 32 else None


# --------------------------------------------------------------------------- what is ours
def own_files(out: Path) -> set[str] | None:
    """The files (relative to `out`) an earlier `sample` wrote, by its samples.json; None when
    there is no samples.json or it is not one this command wrote."""
    try:
        doc = json.loads((out / SAMPLES_JSON).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict) or not isinstance(images, list) \
            or not all(isinstance(e, dict) and isinstance(e.get("file"), str) for e in images):
        return None
    names = {SAMPLES_JSON, GRID_PNG}
    for e in images:
        names |= {e["file"], strip_file(Path(), e["file"]).as_posix()}
    return names


def _stamped_npz(path: Path) -> bool:
    """An .npz this tool generated (it records a generation identity)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            doc = json.loads(str(data["identity"])) if "identity" in data.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False
    return isinstance(doc, dict) and doc.get("format") == GENERATED_FORMAT


def foreign_files(out: Path) -> list[str]:
    """Files in `out` that `sample` did not write (all of them when it holds no samples.json of ours)."""
    own = own_files(out) or set()
    found = []
    for p in sorted(out.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            continue
        rel = p.relative_to(out).as_posix()
        if rel not in own and not (p.suffix == ".npz" and own and _stamped_npz(p)):
            found.append(rel)
    return found


# --------------------------------------------------------------------------- checks before work
def check_outputs(out: str | Path, npz: str | Path | None = None, overwrite: bool = False) -> None:
    """Everything about `out` / `npz` that can fail, checked before any work (writes nothing but
    the folder above `out`): an interrupted swap is recovered first."""
    out = Path(out)
    real = real_out(out)
    recover_swap(real, "`out`")
    _check_out(out, overwrite)
    if npz is not None:
        check_npz(out, Path(npz), overwrite)
    ensure_dir(real.parent, "`out`")


def real_out(out: Path) -> Path:
    """The folder that is replaced: `out` itself, or the target of a symlinked `out` (absolute)."""
    if out.is_symlink() and not out.exists():
        raise TransDiffError(f"`out` {out} is a link to {os.readlink(out)}, which does not exist: create it "
                             "or choose another folder")
    return out.resolve()


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TransDiffError(f"`out` {out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        foreign = foreign_files(out)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise TransDiffError(f"`out` {out} is not empty and holds files `sample` did not write ({shown}): "
                                 "move them away, choose a new or empty folder, or pass `overwrite` to replace "
                                 "the folder")
    full = out.resolve()
    if full in (Path.cwd(), *Path.cwd().parents):
        raise TransDiffError(f"`out` {out} is the current folder (or holds it) and is not empty: "
                             "choose a new or empty folder")


def check_npz(out: Path, npz: Path, overwrite: bool) -> None:
    """`npz` must not be one of the files `out` gets, nor a file this tool did not write (unless
    `overwrite`): it is replaced when the run ends."""
    check_file_target(npz, "`npz`")
    real, full = out.resolve(), npz.resolve()
    if full.is_relative_to(real):
        rel = full.relative_to(real)
        if not rel.parts or rel.name in (SAMPLES_JSON, GRID_PNG) or rel.suffix.lower() == ".png" \
                or rel.parts[0] == ROUNDS:
            raise TransDiffError(f"`npz` {npz} is one of the files `out` {out} gets ({rel.as_posix() or '.'}): "
                                 "choose another name for the .npz")
    if npz.exists() and not overwrite and not _stamped_npz(npz):
        raise TransDiffError(f"`npz` {npz} exists and was not written by this command: choose another path, "
                             "move the file away, or pass `overwrite` to replace it")


# --------------------------------------------------------------------------- staging and swap
def prepare_out(out: Path, overwrite: bool = False) -> Path:
    """Check `out` before any work and return a fresh staging folder beside the folder it names
    (its target when it is a link). A folder holding files `sample` did not write is refused
    unless `overwrite`."""
    full = real_out(out)
    recover_swap(full, "`out`")
    _check_out(out, overwrite)
    return staging_folder(full, "`out`")


def swap_in(staging: Path, out: Path) -> None:
    """Replace the folder `out` names (its target when it is a link) by `staging`."""
    full = real_out(out) if out.is_symlink() or out.exists() else out.resolve()
    swap_folder(staging, full, "`out`", out)


def into_fresh_folder(out: Path, overwrite: bool, write: Callable[[Path], Written]) -> Written:
    """`write(staging)` fills a fresh folder beside `out` that replaces it at the end, so a rerun
    never mixes old and new images and a killed run (or a full disk) leaves the old outputs as
    they were. The returned paths are those under `out`."""
    staging = prepare_out(out, overwrite)
    try:
        w = write(staging)
    except OSError as e:  # a full disk while writing PNGs, the grid or samples.json
        shutil.rmtree(staging, ignore_errors=True)
        raise os_error(e, out, "`out`") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, out)
    moved = lambda p: None if p is None else out / p.relative_to(staging)  # noqa: E731
    return Written(out, [moved(p) for p in w.pngs], moved(w.grid), [moved(p) for p in w.strips],
                   w.npz if w.npz is None or not w.npz.is_relative_to(staging) else moved(w.npz), moved(w.info))


# --------------------------------------------------------------------------- the files
def samples_doc(labels: Sequence[int], settings: SampleSettings, *, seed: int, batch_size: int, num_classes: int,
                class_names: Sequence[str] | None, info: dict[str, Any] | None) -> str:
    """The text of samples.json: what was done, one entry per image file."""
    doc = {"settings": settings.to_dict(), "seed": seed, "batch_size": batch_size,
           "images": [{"file": file_name(i, int(y)), "class": int(y),
                       "name": class_label(int(y), num_classes, class_names)} for i, y in enumerate(labels)],
           **(info or {})}
    return json.dumps(doc, indent=1)


def write_samples(batches: Iterable[Batch], labels: Sequence[int], settings: SampleSettings, out: Path, *,
                  seed: int, batch_size: int, num_classes: int, nrow: int | None,
                  class_names: Sequence[str] | None, info: dict[str, Any] | None, on_batch: Any = None) -> Written:
    """The PNGs, grid, round strips (batches with `rounds`) and samples.json of `batches` in `out`;
    one batch in memory at a time (and the GRID_MAX images of the grid)."""
    w = Written(out)
    shown: list[torch.Tensor] = []
    for batch in batches:
        names = [file_name(i, y) for i, y in zip(batch.indices, batch.labels)]
        w.pngs += save_pngs(batch.images, out, names)
        if len(shown) < GRID_MAX:
            shown += list(batch.images[: GRID_MAX - len(shown)])
        if batch.rounds is not None:
            per_image = torch.stack(batch.rounds, dim=1)  # (B, rounds, C, H, W)
            for name, strip in zip(names, per_image):
                p = strip_file(out, name)
                p.parent.mkdir(exist_ok=True)
                make_grid(strip, nrow=strip.shape[0]).save(p)
                w.strips.append(p)
        if on_batch is not None:
            on_batch(len(batch.indices))
    if shown:
        grid = torch.stack(shown)
        w.grid = out / GRID_PNG
        make_grid(grid, nrow=nrow if nrow and nrow <= 32 else None).save(w.grid)
    w.info = out / SAMPLES_JSON
    w.info.write_text(samples_doc(labels, settings, seed=seed, batch_size=batch_size, num_classes=num_classes,
                                  class_names=class_names, info=info))
    return w
