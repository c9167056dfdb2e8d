"""Output paths checked before the work starts, OS errors turned into one line that names the path
and the cause (no space, read-only, not a folder), atomic writes, and the one-writer folder lock."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

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


@contextlib.contextmanager
def writing(path: str | Path, option: str | None = None) -> Iterator[None]:
    """Turn an OSError raised while writing `path` (a full disk, a read-only folder) into one line
    that names it; the caller's temporary-file handling keeps the last good state."""
    try:
        yield
    except OSError as e:
        raise os_error(e, path, option) from None


# --------------------------------------------------------------------------- one writer per folder
LOCK = ".transdiff.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """`with FolderLock(folder, "run_dir"):` holds `folder/.transdiff.lock` for the block.

    The lock file appears with its contents in one step: the holder's pid and host are written to a
    temporary file that is then hard-linked to the lock name (which fails if the name exists), so a
    second starter never reads an empty lock and takes it as stale. A lock whose process is gone
    (same host, pid not running) is stale and taken over, so a kill -9 never blocks the rerun."""

    def __init__(self, folder: str | Path, option: str):
        self.path = Path(folder) / LOCK
        self.option = option
        self.held = False

    def _holder(self) -> dict | None:
        try:
            doc = json.loads(self.path.read_text())
            return doc if isinstance(doc, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # not written by this tool (locks appear whole)
            return {}

    def _create(self, me: dict) -> bool:
        """Publish the lock with its contents; False when another holds the name."""
        tmp = self.path.with_name(f"{LOCK}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_text(json.dumps(me))
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError as e:  # a file system without hard links: O_EXCL on the lock name itself
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                    raise
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(me))
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> FolderLock:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                if self._create(me):
                    self.held = True
                    return self
            except FileExistsError:
                pass
            except OSError as e:
                raise os_error(e, self.path.parent, self.option) from None
            holder = self._holder()
            if holder is None:
                continue  # released meanwhile: try again
            pid, host = holder.get("pid"), holder.get("host")
            if (host == me["host"] and isinstance(pid, int) and not _alive(pid)) or not holder:
                self.path.unlink(missing_ok=True)  # stale
                continue
            raise TransDiffError(
                f"{self.option} {self.path.parent} is in use by process {pid} on {host} "
                f"(lock {self.path}); wait for it to finish, or delete the lock file if that "
                "process is gone")
        raise TransDiffError(f"{self.option} {self.path.parent}: could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                self.path.unlink()
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256, read in 4 MiB blocks (checkpoints and shards can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- staging and swap
# A folder of outputs (sample's --out, an export, figures) is written into a hidden staging folder
# beside it and swapped in at the end: the old folder stays whole until the new one is.

def staging_folder(full: Path, option: str) -> Path:
    """A fresh hidden `.NAME.tmp-*` folder beside `full` (an absolute path), after removing those a
    killed run left."""
    ensure_dir(full.parent, option)
    for stale in full.parent.glob(f".{full.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return ensure_dir(full.parent / f".{full.name}.tmp-{uuid.uuid4().hex[:8]}", option)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    return False  # EINVAL/ENOSYS (file system or kernel without it): the two-rename path


def swap_folder(staging: Path, full: Path, option: str, shown: str | Path | None = None) -> None:
    """Replace the folder `full` by `staging`. The folders are exchanged in one step where possible;
    otherwise, with two renames, a kill between them is rolled back by `recover_swap`."""
    try:
        if full.is_dir() and any(full.iterdir()):
            if _exchange(staging, full):
                shutil.rmtree(staging, ignore_errors=True)  # now the old folder
                return
            old = full.parent / f".{full.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(full, old)
            os.replace(staging, full)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if full.is_dir():
                full.rmdir()
            os.replace(staging, full)
    except OSError as e:
        raise os_error(e, shown or full, option) from None


def recover_swap(full: Path, option: str) -> None:
    """Finish what a run killed during a two-rename swap left: with `full` missing, its old folder
    (hidden as `.NAME.old-*`) is put back; with `full` in place, the old copies are removed."""
    olds = sorted(full.parent.glob(f".{full.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    try:
        if olds and not full.exists() and not full.is_symlink():
            os.replace(olds.pop(0), full)
            for staging in full.parent.glob(f".{full.name}.tmp-*"):  # the killed run's new outputs
                shutil.rmtree(staging, ignore_errors=True)
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise os_error(e, full, option) from None
