"""Resumable sharded jobs, checked by content: the one engine behind `encode-latents` (latent shards),
`fid --ckpt` and `sample --npz` (generated-image shards).

A job is an identity (a JSON object: everything that decides the shards' contents) and a folder of
shards `shard-NNNNN<suffix>`. Every shard carries, inside the file, the digest of the identity and
its own index; reading a shard checks both, so a shard of another job (another seed, checkpoint, ...)
or one copied over another index is refused by name even when the folder's identity record is gone,
and a truncated or corrupt shard counts as not drawn (it is drawn again), never merged. Shards and
the identity record are written to a temporary name and renamed, so a kill or a full disk leaves
the last good state.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import TransDiffError
from .fs import atomic_write, write_text_atomic, writing

IDENTITY = "identity.json"


class Corrupt(Exception):
    """A shard that cannot be read whole (truncated, bit rot, not a shard of this format)."""


class Codec(Protocol):
    suffix: str

    def save(self, path: Path, arrays: dict[str, Any], meta: dict[str, str]) -> None: ...

    def load(self, path: Path) -> tuple[dict[str, Any], dict[str, str]]: ...

    def meta(self, path: Path) -> dict[str, str]: ...


class NpzCodec:
    """numpy arrays in an `.npz`, the metadata as a JSON string array `shard_meta`; zip's CRC
    catches damaged data on read."""

    suffix = ".npz"

    def save(self, path: Path, arrays: dict[str, Any], meta: dict[str, str]) -> None:
        np.savez(path, **arrays, shard_meta=np.asarray(json.dumps(meta)))

    def load(self, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            meta = json.loads(str(arrays.pop("shard_meta")))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise Corrupt(str(e) or type(e).__name__) from None
        return arrays, meta

    def meta(self, path: Path) -> dict[str, str]:
        try:
            with np.load(path, allow_pickle=False) as data:
                return json.loads(str(data["shard_meta"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise Corrupt(str(e) or type(e).__name__) from None


class SafetensorsCodec:
    """torch tensors in a `.safetensors` file, the metadata in its header."""

    suffix = ".safetensors"

    def save(self, path: Path, arrays: dict[str, Any], meta: dict[str, str]) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        try:
            save_file({k: v.contiguous() for k, v in arrays.items()}, str(path), metadata=meta)
        except SafetensorError as e:  # its I/O errors (a full disk) are not OSErrors
            raise as_os_error(e, path) from None
        path.chmod(0o644)  # save_file creates 0600; shards are shared data

    def load(self, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            raw = path.read_bytes()
            arrays = load(raw)
            header_len = int.from_bytes(raw[:8], "little")
            meta = json.loads(raw[8:8 + header_len]).get("__metadata__") or {}
        except (OSError, ValueError, SafetensorError) as e:
            raise Corrupt(str(e) or type(e).__name__) from None
        return arrays, meta

    def meta(self, path: Path) -> dict[str, str]:
        try:
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                if header_len > 100 << 20:
                    raise ValueError("header too large")
                return json.loads(f.read(header_len)).get("__metadata__") or {}
        except (OSError, ValueError, AttributeError) as e:
            raise Corrupt(str(e) or type(e).__name__) from None


def as_os_error(e: Exception, path: Path) -> OSError:
    """An OSError for a library error that wraps one ("... (os error 28)"), so it reads as the
    cause (no space left) in one line."""
    found = re.search(r"os error (\d+)", str(e))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def identity_digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def first_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """'key: A there, B now' for the first field where two identities differ (one level deep)."""
    for key in [*new, *(k for k in old if k not in new)]:
        if old.get(key) != new.get(key):
            a, b = old.get(key), new.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                sub = next((k for k in b if a.get(k) != b[k]), next(iter(set(a) - set(b)), ""))
                return f"{key}.{sub}: {a.get(sub)} there, {b.get(sub)} now"
            return f"{key}: {a} there, {b} now"
    return "unknown field"


class ShardedJob:
    """The shards of one job in `folder`. `record` names the identity file the job keeps there
    (None when the caller records the identity itself, as the latents manifest does)."""

    def __init__(self, folder: str | Path, identity: dict[str, Any], codec: Codec, *,
                 record: str | None = IDENTITY):
        self.folder, self.identity, self.codec = Path(folder), identity, codec
        self.record = None if record is None else self.folder / record
        self.digest = identity_digest(identity)

    def path(self, k: int) -> Path:
        return self.folder / f"shard-{k:05d}{self.codec.suffix}"

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Refuse, before any work, a folder holding another job: its identity record differs, or
        a shard in it belongs to another job or sits at another index. Writes nothing."""
        if self.record is not None and self.record.is_file():
            old = self._read_record()
            if old is not None and old != self.identity:
                raise TransDiffError(f"{self.folder} holds shards of another job "
                                     f"({first_difference(old, self.identity)}): re-run the original command "
                                     "to finish it, or move the folder away")
        if self.folder.is_dir():
            for path in sorted(self.folder.glob(f"shard-*{self.codec.suffix}")):
                try:
                    self._verify(path, self.codec.meta(path))
                except Corrupt:
                    pass  # drawn again when its turn comes

    def _read_record(self) -> dict[str, Any] | None:
        """The recorded identity; None when the record is empty or torn (a full disk or a kill at
        the start), which the shards' own identity then stands in for."""
        try:
            doc = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict):
            raise TransDiffError(f"{self.record} is not a shard identity (a JSON {type(doc).__name__}, not an "
                                 "object): move the folder away")
        return doc

    def _verify(self, path: Path, meta: Any) -> None:
        """Refuse a shard of another job or index; Corrupt when it carries no stamp (not written
        by this engine: drawn again, never merged)."""
        if not isinstance(meta, dict) or "job" not in meta or "shard" not in meta:
            raise Corrupt("no shard stamp")
        if meta["job"] != self.digest:
            raise TransDiffError(f"shard {path} was drawn by another job (a different checkpoint, settings, seed "
                                 "or data): move it (or its folder) away and re-run")
        expected = path.name.removeprefix("shard-").removesuffix(self.codec.suffix)
        if not expected.isdigit() or str(meta["shard"]) != str(int(expected)):
            raise TransDiffError(f"shard {path} holds shard {meta['shard']} of this job (copied over it?): "
                                 "delete it and re-run to draw it again")

    def stamped(self, k: int) -> bool:
        """Shard k carries this job's stamp (its metadata only is read); raises for a shard of
        another job or index, False for one without a readable stamp."""
        try:
            self._verify(self.path(k), self.codec.meta(self.path(k)))
        except Corrupt:
            return False
        return True

    def check_stamp(self, path: Path) -> None:
        """For readers of a finished job: refuse a shard stamped for another job or index. One with
        no stamp (written before shards were stamped) passes; the caller's checksum guards it."""
        try:
            meta = self.codec.meta(path)
        except Corrupt:
            return
        if isinstance(meta, dict) and "job" in meta:
            self._verify(path, meta)

    # ------------------------------------------------------------------ reading and writing
    def start(self) -> None:
        """Check, create the folder, drop temporary files of a killed run and write the identity
        record (atomically) when it is missing, empty or torn. Run by one process."""
        self.check()
        with writing(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            for stale in self.folder.glob(".shard-*.tmp-*"):
                stale.unlink(missing_ok=True)
            if self.record is not None and (not self.record.is_file() or self._read_record() is None):
                write_text_atomic(self.record, json.dumps(self.identity, indent=1))

    def read(self, k: int, valid: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """Shard k's arrays, checked by content (and by `valid`); None when it is missing, corrupt
        or truncated, so it is drawn again."""
        path = self.path(k)
        if not path.is_file():
            return None
        try:
            arrays, meta = self.codec.load(path)
            self._verify(path, meta)
        except Corrupt:
            return None
        if valid is not None and not valid(arrays):
            return None
        return arrays

    def done(self, k: int, valid: Callable[[dict[str, Any]], bool] | None = None) -> bool:
        return self.read(k, valid) is not None

    def write(self, k: int, arrays: dict[str, Any]) -> Path:
        """Shard k, stamped with the job and its index, written atomically; a full disk is one line
        naming the shard, and the shards already written stay."""
        final = self.path(k)
        with writing(final), atomic_write(final, suffix=self.codec.suffix) as tmp:
            self.codec.save(tmp, arrays, {"job": self.digest, "shard": str(k)})
        return final
