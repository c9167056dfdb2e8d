"""Reading and writing one big array of an `.npz` in chunks, so that 50,000 ImageNet images (10 GB at
256x256, 39 GB at 512x512) never have to sit in memory at once. The files are ordinary `.npz`
(zip of `.npy`), readable by `np.load` and by ADM's evaluator."""

from __future__ import annotations

import os
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import TransDiffError


def npz_array_info(path: str | Path, key: str = "arr_0") -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of `key` without reading its data."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        shape, _, dtype = _read_header(f)
    return shape, dtype


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def iter_npz_array(path: str | Path, key: str = "arr_0", rows: int = 1024) -> Iterator[np.ndarray]:
    """`rows` leading-axis entries of `key` at a time."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise TransDiffError(f"cannot read {path}: {e}") from None
    with zf, zf.open(f"{key}.npy") as f:
        shape, fortran, dtype = _read_header(f)
        if fortran or dtype.hasobject:
            raise TransDiffError(f"{path}: {key} is not a plain C-ordered array")
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            buf = f.read(n * row_bytes)
            if len(buf) != n * row_bytes:
                raise TransDiffError(f"{path} is truncated")
            yield np.frombuffer(bytearray(buf), dtype=dtype).reshape(n, *shape[1:])


class NpzWriter:
    """Writes an `.npz` whose `arr_0` (shape known in advance) arrives in chunks, plus small arrays;
    under a temporary name, renamed into place by `close()` so the file is complete or absent."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: np.dtype = np.dtype(np.uint8)):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        self.zf = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.f = self.zf.open("arr_0.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                  "shape": tuple(shape)}
        np.lib.format.write_array_header_2_0(self.f, header)
        self.expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self.written = 0
        self.dtype = np.dtype(dtype)

    def write(self, chunk: np.ndarray) -> None:
        data = np.ascontiguousarray(chunk, dtype=self.dtype).tobytes()
        self.f.write(data)
        self.written += len(data)

    def close(self, **extra: np.ndarray) -> Path:
        self.f.close()
        if self.written != self.expected:
            self.abort()
            raise RuntimeError(f"NpzWriter: wrote {self.written} bytes of {self.expected}")
        for key, value in extra.items():
            with self.zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
        self.zf.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.zf.close()
        finally:
            self.tmp.unlink(missing_ok=True)
