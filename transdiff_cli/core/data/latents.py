"""Cached latents: the folder's format and `encode_latents`, which writes it (resumably, in shards).
Reading them for training is `training_data`'s job.

On-disk format (one folder): `shard-NNNNN.safetensors` holding `moments` and `moments_flip`
(N, 2C, h, w) (posterior mean || log-variance of each image and of its mirror), `labels`, `indices`
(the image's index in the source dataset); `shard-NNNNN.json` (sha256, count, skipped files), which
marks the shard as finished; and `manifest.json` (see `encode_latents`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..distributed import DistInfo, barrier
from ..errors import TransDiffError
from ..fs import LOCK, FolderLock, ensure_dir, file_sha256, write_text_atomic, writing
from ..reporting import Reporter
from ..shards import SafetensorsCodec, ShardedJob
from .datasets import BUILTIN, ImageDataset, UnreadableImage, open_image_dataset
from .tokenizer import Tokenizer
from .tokenizer_spec import load_tokenizer

MANIFEST = "manifest.json"
FORMAT = "transdiff-latents/1"
# Test hook: seconds to sleep after each written shard, so a test can kill a run mid-way.
DELAY_ENV = "TRANSDIFF_ENCODE_SHARD_DELAY"


def is_latent_folder(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise TransDiffError(f"cannot read {folder / MANIFEST}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TransDiffError(f"{folder / MANIFEST} is not an encode-latents manifest")
    _check_fields(folder / MANIFEST, manifest, FIELDS)
    if manifest.get("status") == "complete":
        _check_fields(folder / MANIFEST, manifest, FINISHED_FIELDS)
        for i, shard in enumerate(manifest["shards"]):
            if not isinstance(shard, dict):
                raise TransDiffError(f"{folder / MANIFEST}: field `shards[{i}]` must be an object, not "
                                     f"{_kind(shard)}: re-run encode-latents into a new folder")
            _check_fields(folder / MANIFEST, shard, SHARD_FIELDS, f"shards[{i}].")
    return manifest


# The manifest's fields and their types, checked on every read (a manifest edited by hand, or
# torn, is one line naming the field rather than a TypeError deep in the loader).
FIELDS = {"job": dict, "tokenizer": dict, "image_size": int, "shard_size": int, "num_shards": int,
          "num_images": int, "class_names": list, "latent_shape": list, "flip_default": bool}
FINISHED_FIELDS = {"shards": list, "num_encoded": int, "skipped": list}
SHARD_FIELDS = {"file": str, "sha256": str, "start": int, "stop": int, "count": int}


JSON_NAMES = {dict: "object", list: "list", str: "string", bool: "boolean"}


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_fields(where: Path, doc: dict[str, Any], fields: dict[str, type], prefix: str = "") -> None:
    for key, typ in fields.items():
        value = doc.get(key)
        if typ is int:
            good = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            want = "a non-negative integer"
        else:
            good, want = isinstance(value, typ), "a JSON " + JSON_NAMES[typ]
        if not good:
            raise TransDiffError(f"{where}: field `{prefix}{key}` must be {want}, not {_kind(value)} {value!r:.40}: "
                                 "the manifest was changed or is torn; re-run encode-latents into a new folder")
    if "file" in fields and Path(doc["file"]).name != doc["file"]:
        raise TransDiffError(f"{where}: field `{prefix}file` must name a file in the folder, not {doc['file']!r:.60}")


def shard_job(folder: Path, manifest: dict[str, Any]) -> ShardedJob:
    """The latent shards of the job `manifest` records (the manifest is the identity record)."""
    return ShardedJob(folder, {**manifest["job"], "shard_size": manifest["shard_size"]}, SafetensorsCodec(),
                      record=None)


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


def tokenizer_for_images(spec: str | dict[str, Any], images: ImageDataset, device: torch.device | str) -> Tokenizer:
    """The tokenizer `spec` names, sized for `images` (a VAE or the pixels themselves)."""
    return load_tokenizer(spec, image_size=images.image_size, image_channels=images.image_channels,
                          device=device)


# ----------------------------------------------------------------------------------------------
# Writing


def _job_identity(data: str, tokenizer: Tokenizer, dataset: ImageDataset) -> dict[str, Any]:
    """What must match for an existing output folder to be resumed rather than refused."""
    source = data if data in BUILTIN else str(Path(data).expanduser().resolve())
    spec = {k: v for k, v in tokenizer.spec().items() if k != "image_size"}
    return {"data": source, "tokenizer": spec, "image_size": dataset.image_size, "num_images": len(dataset)}


def _check_out_dir(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest to resume from, None for a fresh folder; refuses a folder holding anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise TransDiffError(f"`out` {out} is a file, not a folder")
    if not (out / MANIFEST).is_file():
        if any(p.name != LOCK for p in out.iterdir()):
            raise TransDiffError(f"`out` {out} is not empty and holds no encode-latents manifest: "
                                 "choose an empty or new folder")
        return None
    manifest = read_manifest(out)
    old = {k: manifest.get("job", {}).get(k) for k in identity}
    diff = [k for k in identity if old[k] != identity[k]]
    if diff:
        k = diff[0]
        raise TransDiffError(f"`out` {out} already holds latents of a different job ({k}: {old[k]} there, "
                             f"{identity[k]} now): choose another `out` folder")
    return manifest


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _shard_done(job: ShardedJob, k: int) -> dict[str, Any] | None:
    """The shard's record when it was finished by an earlier run of this job and its file is intact
    (checksum matching, stamped with this job and index); None when it must be (re)drawn."""
    record_path, data_path = job.folder / f"{_shard_name(k)}.json", job.path(k)
    if not record_path.is_file() or not data_path.is_file() or not job.stamped(k):
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and file_sha256(data_path) == record.get("sha256") else None


def _write_shard(job: ShardedJob, k: int, start: int, stop: int,
                 rows: list[tuple[int, int, torch.Tensor, torch.Tensor]], skipped: list[dict[str, Any]],
                 moments_shape: tuple[int, ...]) -> None:
    """Data first, then the record, each atomically: a shard either is complete (record present,
    checksum matching) or is redone. A full disk is one line naming the shard."""
    rows.sort(key=lambda r: r[0])
    empty = torch.zeros((0, *moments_shape))
    tensors = {
        "moments": torch.stack([r[2] for r in rows]) if rows else empty,
        "moments_flip": torch.stack([r[3] for r in rows]) if rows else empty,
        "labels": torch.tensor([r[1] for r in rows], dtype=torch.int64),
        "indices": torch.tensor([r[0] for r in rows], dtype=torch.int64),
    }
    final = job.write(k, tensors)
    record = {"file": final.name, "sha256": file_sha256(final), "start": start, "stop": stop, "count": len(rows),
              "skipped": sorted(skipped, key=lambda s: s["index"])}
    record_path = job.folder / f"{_shard_name(k)}.json"
    with writing(record_path, "`out`"):
        _write_json(record_path, record)


class _SafeReader(Dataset):
    """(index, image or None, label, reason): unreadable files become a reason, not an exception."""

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, int, str]:
        try:
            return index, self.dataset.load(index), self.dataset.targets[index], ""
        except UnreadableImage as e:
            return index, None, self.dataset.targets[index], e.reason


def encode_latents(data: str, tokenizer_spec: str | None, out_dir: str | Path, image_size: int | None = None,
                   batch_size: int = 64, device: torch.device | str = "cpu", shard_size: int = 1024,
                   num_workers: int | None = None, progress: bool = True, dist: DistInfo | None = None,
                   reporter: Reporter | None = None) -> Path:
    """Encode every image of `data` and its mirror into sharded posterior moments in `out_dir`.

    Resumable: shards finished by an earlier run (record present, checksum matching) are kept, the
    others (re)written; every image lands in exactly one shard. Under torchrun (`dist`) rank r
    encodes shards r, r + world, ...; rank 0 writes the manifest once all ranks are done.
    `tokenizer_spec` None means pixels for the built-in datasets (an image folder needs a VAE)."""
    dist = dist or DistInfo()
    out = Path(out_dir).expanduser()
    if batch_size < 1 or shard_size < 1:
        raise TransDiffError("`batch_size` and `shard_size` must be at least 1")
    # Everything that can fail on the user's input fails here, before anything is written.
    dataset = open_image_dataset(data, image_size, flip=False)
    if tokenizer_spec is None:
        if data not in BUILTIN:
            raise TransDiffError("an image folder needs `vae` kl16:PATH, diffusers:DIR or pixels")
        tokenizer_spec = "pixels"
    tokenizer = tokenizer_for_images(tokenizer_spec, dataset, device)
    identity = _job_identity(data, tokenizer, dataset)
    previous = _check_out_dir(out, identity)
    lock = FolderLock(out, "`out`") if dist.is_main else None  # one writer per folder
    if lock is not None:
        ensure_dir(out, "`out`")
        lock.acquire()
    try:
        if previous is not None:
            shard_size = previous["shard_size"]  # resuming keeps the layout of the first run
        n = len(dataset)
        num_shards = (n + shard_size - 1) // shard_size
        latent_shape = [tokenizer.latent_channels, tokenizer.latent_size, tokenizer.latent_size]
        manifest: dict[str, Any] = {
            "format": FORMAT, "status": "incomplete", "job": identity,
            "tokenizer": tokenizer.spec(), "scale_factor": tokenizer.scale_factor,
            "image_size": dataset.image_size, "image_channels": dataset.image_channels,
            "latent_shape": latent_shape, "moments_shape": [2 * latent_shape[0], *latent_shape[1:]],
            "class_names": dataset.class_names, "flip_default": dataset.default_flip,
            "num_images": n, "shard_size": shard_size, "num_shards": num_shards,
        }
        job = shard_job(out, manifest)
        job.check()  # a shard of another job or index is refused, whatever the manifest says
        if dist.is_main:
            job.start()  # drops temporary files of a killed run
            with writing(out / MANIFEST, "`out`"):
                _write_json(out / MANIFEST, manifest)
        barrier(dist)

        mine = [k for k in range(dist.rank, num_shards, dist.world_size)]
        todo = [k for k in mine if _shard_done(job, k) is None]
        indices = [i for k in todo for i in range(k * shard_size, min(n, (k + 1) * shard_size))]
        if num_workers is None:
            num_workers = 0 if data in BUILTIN else min(8, os.cpu_count() or 1)
        loader = DataLoader(_SafeReader(dataset), batch_size=batch_size, sampler=indices, num_workers=num_workers,
                            collate_fn=list)
        rows: dict[int, list] = {k: [] for k in todo}
        skipped: dict[int, list] = {k: [] for k in todo}
        seen = dict.fromkeys(todo, 0)
        delay = float(os.environ.get(DELAY_ENV, "0") or 0)
        bar = (reporter or Reporter()).progress("encoding", len(indices), unit="images/s") \
            if progress and dist.is_main else contextlib.nullcontext(None)
        done = 0
        with bar as advance, torch.no_grad():
            for batch in loader:
                good = [b for b in batch if b[1] is not None]
                if good:
                    x = torch.stack([b[1] for b in good]).to(device)
                    moments = tokenizer.encode_moments(torch.cat([x, x.flip(-1)])).float().cpu()
                    for j, (i, _, label, _) in enumerate(good):
                        rows[i // shard_size].append((i, label, moments[j], moments[j + len(good)]))
                for i, image, _, reason in batch:
                    k = i // shard_size
                    if image is None:
                        skipped[k].append({"index": i, "file": dataset.source(i), "reason": reason})
                    seen[k] += 1
                    if seen[k] == min(n, (k + 1) * shard_size) - k * shard_size:
                        _write_shard(job, k, k * shard_size, min(n, (k + 1) * shard_size), rows.pop(k), skipped.pop(k),
                                     tuple(manifest["moments_shape"]))
                        if delay:
                            time.sleep(delay)
                done += len(batch)
                if advance is not None:
                    advance(done)
        barrier(dist)
        if dist.is_main:  # no barrier after: a failure here must not leave the other ranks waiting
            _finish_manifest(out, manifest)
        return out
    finally:
        if lock is not None:
            lock.release()


def _finish_manifest(out: Path, manifest: dict[str, Any]) -> None:
    records = []
    job = shard_job(out, manifest)
    for k in range(manifest["num_shards"]):
        record = _shard_done(job, k)
        if record is None:
            raise TransDiffError(f"shard {k} of {out} was not written or is damaged (a worker failed?): "
                                 "re-run the same command to finish")
        records.append(record)
    skipped = [s for r in records for s in r["skipped"]]
    manifest.update(
        status="complete", num_encoded=sum(r["count"] for r in records), num_skipped=len(skipped),
        shards=[{k: r[k] for k in ("file", "sha256", "start", "stop", "count")} for r in records],
        skipped=skipped,
    )
    with writing(out / MANIFEST, "`out`"):
        _write_json(out / MANIFEST, manifest)
