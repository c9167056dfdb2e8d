"""Resumable, sharded generation into one `.npz`: the evaluation batch of `fid --ckpt` (50,000 images
for FID) and `sample --npz`, which also writes its folder of PNGs from the shards.

Images are cut into shards of global image numbers [k*S, (k+1)*S), S a multiple of the batch size.
Under torchrun rank r draws shards r, r + W, ...; every finished shard is written atomically to
`<name>.parts/shard-NNNNN.npz` (uint8 images, with `save_rounds` every MRAR round's too). Each
image's noise depends only on (seed, image number) and every shard is drawn in the same batches
whoever draws it, so a rerun of the same command (with any number of processes) continues from the
finished shards and gives exactly the images of an uninterrupted run. `identity.json` records what
the images are (checkpoint, settings, seed, labels, ...) and every shard carries that identity's
digest and its own index (`core/shards.py`): shards or a finished `.npz` of anything else are
refused, never mixed in, and a damaged shard is drawn again. Rank 0 streams the shards into the
final `.npz` (ADM's layout: `arr_0` uint8 NHWC, `labels`, plus `identity`) and removes the parts.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import from_uint8, to_uint8
from ..data.npz_stream import NpzWriter
from ..data.tokenizer import Tokenizer
from ..distributed import DistInfo, barrier
from ..errors import TransDiffError
from ..fs import check_file_target, writing
from ..io.checkpoint import Checkpoint
from ..model.transdiff import TransDiff
from ..shards import NpzCodec, ShardedJob, first_difference
from .generate import generate
from .memory import check_shard_fits
from .outputs import (
    GENERATED_FORMAT,
    GRID_PNG,
    SAMPLES_JSON,
    Batch,
    Written,
    check_npz,
    into_fresh_folder,
    samples_doc,
    strip_file,
    write_samples,
)
from .settings import SampleSettings

FORMAT = GENERATED_FORMAT
SHARD_IMAGES = 1024  # about this many images per shard (rounded up to whole batches)


def shard_size_for(batch_size: int, target: int = SHARD_IMAGES) -> int:
    return batch_size * max(1, math.ceil(target / batch_size))


def checkpoint_fingerprint(ck: Checkpoint, weights: str) -> dict[str, Any]:
    """Which weights: the checkpoint's path, the size and modification time of its files and the
    checksum of its config (hashing gigabytes of weights would cost more than it protects)."""
    path = Path(ck.path).resolve() if ck.path else None
    files = [path] if path is not None and path.is_file() else sorted(p for p in path.iterdir() if p.is_file()
                                                                       and p.suffix in (".safetensors", ".json"))
    out: dict[str, Any] = {"path": str(path), "weights": weights}
    for f in files:
        st = f.stat()
        out[f.name] = [st.st_size, st.st_mtime_ns]
        if f.suffix == ".json":
            out[f.name].append(hashlib.sha256(f.read_bytes()).hexdigest()[:16])
    return out


def generation_identity(ck: Checkpoint, *, weights: str, settings: SampleSettings, seed: int,
                        labels: Sequence[int], batch_size: int, shard_size: int, tokenizer: Tokenizer,
                        precision: str, compile: bool, device: torch.device, save_rounds: bool = False
                        ) -> dict[str, Any]:
    """Everything that decides the shards (the images, their numerics, and with `save_rounds` every
    MRAR round's image too): two runs with equal identities draw identical shards."""
    lab = np.asarray(labels, dtype=np.int64)
    doc = {"format": FORMAT, "checkpoint": checkpoint_fingerprint(ck, weights), "settings": settings.to_dict(),
            "seed": seed, "num_images": len(lab), "labels_sha256": hashlib.sha256(lab.tobytes()).hexdigest(),
            "batch_size": batch_size, "shard_size": shard_size, "tokenizer": tokenizer.spec(),
            "precision": precision, "compile": compile, "device": torch.device(device).type,
            "save_steps": save_rounds}  # stored key kept: digests of running jobs stay
    return json.loads(json.dumps(doc))  # as it reads back from identity.json (lists, not tuples)


def parts_dir(path: Path) -> Path:
    return path.with_name(f"{path.stem}.parts")


def read_npz_identity(path: Path) -> dict[str, Any] | None:
    """The identity a finished `.npz` of this engine records; None when it records none. A file
    that cannot be read (truncated, corrupt) is refused in one line naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "identity" not in data.files:
                return None
            doc = json.loads(str(data["identity"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise TransDiffError(f"{path} cannot be read ({cause_of(e)}): it is truncated or not an .npz; "
                             "delete it (or choose another path) to draw it again") from None
    return doc if isinstance(doc, dict) else None


def cause_of(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200] or type(e).__name__


def check_existing(path: Path, identity: dict[str, Any], parts: Path | None = None) -> bool:
    """True when `path` is already the finished result of this job; raises when `path` or its
    parts (default `parts_dir(path)`) hold anything else."""
    if path.exists():
        old = read_npz_identity(path)
        if old is None:
            raise TransDiffError(f"{path} exists and was not generated by this command (no identity): "
                                 "choose another `out`, or move the file away")
        if old != identity:
            raise TransDiffError(f"{path} holds images of another job ({first_difference(old, identity)}): "
                                 "choose another `out`, or move it away")
        return True
    check_parts(parts or parts_dir(path), identity)
    return False


def shard_job(parts: Path, identity: dict[str, Any]) -> ShardedJob:
    return ShardedJob(parts, identity, NpzCodec())


def check_parts(parts: Path, identity: dict[str, Any]) -> None:
    """Refuse shards in `parts` of another job (checkpoint, settings, seed, labels, ...), by its
    identity record and by every shard's own stamp."""
    shard_job(parts, identity).check()


def _shard_valid(count: int) -> Callable[[dict[str, Any]], bool]:
    return lambda arrays: "arr_0" in arrays and len(arrays.get("indices", ())) == count == len(arrays["arr_0"])


def _write_shard(job: ShardedJob, k: int, images: np.ndarray, indices: Sequence[int],
                 rounds: np.ndarray | None = None) -> Path:
    extra = {} if rounds is None else {"rounds": rounds}
    return job.write(k, {"arr_0": images, "indices": np.asarray(indices, dtype=np.int64), **extra})


def _shard_indices(k: int, shard: int, n: int) -> list[int]:
    return list(range(k * shard, min(n, (k + 1) * shard)))


def rank_shards(n: int, shard: int, info: DistInfo) -> range:
    """The shards of `n` images that rank r of W draws: r, r + W, ..."""
    return range(info.rank, math.ceil(n / shard), info.world_size)


def rank_images(n: int, shard: int, info: DistInfo) -> int:
    """How many of the `n` images rank `info.rank` draws (the total of its progress bar)."""
    return sum(len(_shard_indices(k, shard, n)) for k in rank_shards(n, shard, info))


def generate_npz(model: TransDiff, tokenizer: Tokenizer, labels: Sequence[int], settings: SampleSettings,
                 path: str | Path, identity: dict[str, Any], *, seed: int = 0, batch_size: int = 16,
                 info: DistInfo | None = None, on_batch: Callable[[int], None] | None = None) -> Path:
    """Draw image i of class labels[i] for every i into `path` (see the module doc), resuming from
    finished shards. Every rank calls it; rank 0 writes `path`."""
    info = info or DistInfo()
    path = Path(path)
    if check_existing(path, identity):  # every rank checks: all raise, or none does
        if info.is_main:
            shutil.rmtree(parts_dir(path), ignore_errors=True)
        return path
    parts = parts_dir(path)
    generate_shards(model, tokenizer, labels, settings, parts, identity, seed=seed, batch_size=batch_size,
                    info=info, on_batch=on_batch)
    if info.is_main:
        merge_parts(path, identity, labels, parts)
        shutil.rmtree(parts, ignore_errors=True)
    barrier(info)
    return path


def generate_shards(model: TransDiff, tokenizer: Tokenizer, labels: Sequence[int], settings: SampleSettings,
                    parts: Path, identity: dict[str, Any], *, seed: int = 0, batch_size: int = 16,
                    info: DistInfo | None = None, on_batch: Callable[[int], None] | None = None) -> None:
    """Every rank draws its shards that `parts` lacks; finished ones count in `on_batch` at once, so
    a progress bar's ETA stays right. Returns when every rank is done."""
    info = info or DistInfo()
    shard = int(identity["shard_size"])
    if shard % batch_size:
        raise ValueError("the shard size must be a multiple of the batch size")
    check_shard_fits(model, tokenizer, shard, settings.rounds if identity.get("save_steps") else 0)
    job = shard_job(parts, identity)
    job.check()  # every rank: all raise, or none does
    with writing(parts, "`npz`"):
        parts.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        job.start()
    barrier(info)
    n = len(labels)
    save_rounds = bool(identity.get("save_steps"))
    for k in rank_shards(n, shard, info):
        idx = _shard_indices(k, shard, n)
        if job.done(k, _shard_valid(len(idx))):
            if on_batch is not None:
                on_batch(len(idx))
            continue
        images, rounds = [], []
        for batch in generate(model, tokenizer, [labels[i] for i in idx], settings, seed=seed,
                              batch_size=batch_size, indices=idx, save_rounds=save_rounds):
            images.append(to_uint8(batch.images))
            if batch.rounds is not None:  # (B, rounds, H, W, C)
                rounds.append(np.stack([to_uint8(r) for r in batch.rounds], axis=1))
            if on_batch is not None:
                on_batch(len(batch.indices))
        _write_shard(job, k, np.concatenate(images), idx, np.concatenate(rounds) if rounds else None)
    barrier(info)


def read_shards(parts: Path, identity: dict[str, Any], n: int) -> Iterator[tuple[np.ndarray, np.ndarray,
                                                                                 np.ndarray | None]]:
    """(indices, uint8 images, uint8 per-round images or None) of every shard in global order, one
    shard in memory at a time; refuses before the first when a shard is missing."""
    shard = int(identity["shard_size"])
    job = shard_job(parts, identity)
    job.check()
    num_shards = math.ceil(n / shard)
    missing = [k for k in range(num_shards) if not job.path(k).is_file()]
    if missing:
        raise TransDiffError(f"shard {missing[0]} of {parts} was not written (a worker failed?): re-run to finish")
    for k in range(num_shards):  # each read whole and checked by content: a damaged one is never merged
        idx = _shard_indices(k, shard, n)
        data = job.read(k, lambda a, idx=idx: _shard_valid(len(idx))(a) and a["indices"].tolist() == idx)
        if data is None:
            job.path(k).unlink(missing_ok=True)
            raise TransDiffError(f"shard {job.path(k)} was damaged (cut or corrupt) and is removed: re-run the same "
                                 "command to draw it again")
        yield data["indices"], data["arr_0"], data.get("rounds")


def merge_parts(path: Path, identity: dict[str, Any], labels: Sequence[int], parts: Path | None = None) -> Path:
    """The shards in `parts` (default `parts_dir(path)`) in global order, streamed into `path`."""
    writer = None
    try:
        with writing(path, "`npz`"):  # a full disk: one line, the shards stay for the rerun
            for _, images, _ in read_shards(parts or parts_dir(path), identity, len(labels)):
                if images.shape[-1] == 1:  # ADM's layout is RGB
                    images = np.repeat(images, 3, axis=-1)
                if writer is None:
                    writer = NpzWriter(path, (len(labels), *images.shape[1:]))
                writer.write(images)
            writer.close(labels=np.asarray(labels, dtype=np.int64), identity=np.asarray(json.dumps(identity)))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return path


# --------------------------------------------------------------------------- sample --npz
def sample_parts_dir(out: str | Path, npz: str | Path) -> Path:
    """Where `sample --out OUT --npz NPZ` keeps its shards: beside NPZ (as `fid`), or beside OUT
    (`OUT.parts`) when NPZ lies inside OUT, so a killed run leaves OUT untouched and the shards
    survive OUT being replaced."""
    out, npz = Path(out), Path(npz)
    if npz.resolve().is_relative_to(out.resolve()):
        base = out if out.name else out.resolve()  # `out` "." has no name to extend
        return base.with_name(f"{base.name}.parts")
    return parts_dir(npz)


def check_sample_shards(out: str | Path, npz: str | Path, identity: dict[str, Any]) -> Path:
    """The shards folder of `sample --out OUT --npz NPZ`, refused when it holds another job's
    shards or would hold OUT."""
    out, npz = Path(out), check_file_target(npz, "`npz`")
    parts = sample_parts_dir(out, npz)
    if out.resolve().is_relative_to(parts.resolve()):
        raise TransDiffError(f"`out` {out} lies inside {parts}, where `npz` {npz} keeps its shards: "
                             "choose another `out` or `npz`")
    check_parts(parts, identity)
    return parts


def shard_batches(parts: Path, identity: dict[str, Any], labels: Sequence[int], batch_size: int) -> Iterator[Batch]:
    """The images (and MRAR rounds) of the shards as `generate` yielded them, one shard read at a time."""
    for indices, images, per_round in read_shards(parts, identity, len(labels)):
        for j in range(0, len(indices), batch_size):
            idx = [int(i) for i in indices[j:j + batch_size]]
            rounds = None if per_round is None else [from_uint8(per_round[j:j + batch_size, r])
                                                     for r in range(per_round.shape[1])]
            yield Batch(idx, [int(labels[i]) for i in idx], from_uint8(images[j:j + batch_size]), rounds)


def generate_folder_and_npz(model: TransDiff, tokenizer: Tokenizer, labels: Sequence[int], settings: SampleSettings,
                            out: str | Path, npz: str | Path, identity: dict[str, Any], *, seed: int = 0,
                            batch_size: int = 16, nrow: int | None = None,
                            class_names: Sequence[str] | None = None, info: dict[str, Any] | None = None,
                            on_batch: Callable[[int], None] | None = None,
                            on_write: Callable[[int], None] | None = None, overwrite: bool = False) -> Written:
    """`sample --npz`: the images drawn resumably into shards (`sample_parts_dir`), then the folder
    of `generate_to_folder` and the `.npz` written from them, streaming one shard at a time, into a
    fresh folder that replaces `out`; the shards are removed at the end. `samples.json` records the
    identity: a rerun of a finished job only checks that its outputs are there (`Written.done`)."""
    out, npz = Path(out), Path(npz)
    info = {**(info or {}), "identity": identity}
    doc = dict(labels=labels, settings=settings, seed=seed, batch_size=batch_size,
               num_classes=model.config.num_classes, class_names=class_names, info=info)
    done = _finished(out, npz, identity, samples_doc(**doc))
    if done is not None:
        return done
    check_npz(out, npz, overwrite)  # before anything is written
    parts = check_sample_shards(out, npz, identity)
    inside = npz.resolve().is_relative_to(out.resolve())

    def write(staging: Path) -> Written:
        generate_shards(model, tokenizer, labels, settings, parts, identity, seed=seed, batch_size=batch_size,
                        on_batch=on_batch)
        w = write_samples(shard_batches(parts, identity, labels, batch_size), out=staging, nrow=nrow,
                          on_batch=on_write, **doc)
        w.npz = staging / npz.resolve().relative_to(out.resolve()) if inside else npz
        merge_parts(w.npz, identity, labels, parts)
        return w

    written = into_fresh_folder(out, overwrite, write)
    shutil.rmtree(parts, ignore_errors=True)
    return written


def _finished(out: Path, npz: Path, identity: dict[str, Any], expected_doc: str) -> Written | None:
    """The outputs of this very job when `out` and `npz` already hold them all, else None."""
    info = out / SAMPLES_JSON
    try:
        if not info.is_file() or info.read_text() != expected_doc or read_npz_identity(npz) != identity:
            return None
    except OSError:
        return None
    pngs = [out / e["file"] for e in json.loads(expected_doc)["images"]]
    strips = [strip_file(out, p.name) for p in pngs] if identity["save_steps"] else []
    if not all(p.is_file() for p in [*pngs, *strips, out / GRID_PNG]):
        return None
    return Written(out, pngs, out / GRID_PNG, strips, npz, info, done=True)
