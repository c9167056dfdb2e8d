"""Output paths checked before the work starts, and OS errors turned into one line that names the
path and the cause (no space, read-only, not a folder)."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import TransDiffError

CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "a file is in the way",
    errno.ENAMETOOLONG: "the name is too long",
}


def cause(e: OSError) -> str:
    return CAUSES.get(e.errno or 0) or (e.strerror or str(e) or type(e).__name__).lower()


def os_error(e: OSError, path: str | Path | None = None, option: str | None = None) -> TransDiffError:
    """A TransDiffError for `e`: 'cannot write PATH (OPTION): CAUSE'."""
    where = path if path is not None else (e.filename or "")
    flag = f" ({option})" if option else ""
    return TransDiffError(f"cannot write {where}{flag}: {cause(e)}")


def ensure_dir(path: str | Path, option: str) -> Path:
    """Create the folder `path` (and parents) and prove it writable with a probe file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise TransDiffError(f"{option} {p} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".transdiff-probe-{uuid.uuid4().hex[:8]}"
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise os_error(e, p, option) from None
    return p


def check_file_target(path: str | Path, option: str) -> Path:
    """`path` will be written as a file: it must not be a folder and its folder must be writable."""
    p = Path(path)
    if p.is_dir():
        raise TransDiffError(f"{option} {p} is a folder, not a file name")
    ensure_dir(p.parent if str(p.parent) else Path("."), option)
    return p


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a hidden temporary path beside `path` to write to; it replaces `path` in one rename
    when the block succeeds and is removed when it fails, so readers see the old file or the new
    one, never a torn one. `suffix` keeps writers that add an extension (np.save, savefig) happy."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
