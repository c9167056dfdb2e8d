"""One writer per output folder: a lock file created atomically (O_CREAT | O_EXCL) that names the
holder's pid and host. A lock whose process is gone (same host, pid not running) is stale and taken
over, so a kill -9 never blocks the rerun that resumes the work."""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from types import TracebackType

from ..errors import TransDiffError
from ..fs import os_error

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
    """`with FolderLock(folder, "--run-dir"):` holds `folder/.transdiff.lock` for the block."""

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
        except (OSError, ValueError):  # torn by a kill while it was being written
            return {}

    def acquire(self) -> FolderLock:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile: try again
                pid, host = holder.get("pid"), holder.get("host")
                stale = (host == me["host"] and isinstance(pid, int) and not _alive(pid)) or not holder
                if stale:
                    self.path.unlink(missing_ok=True)
                    continue
                raise TransDiffError(
                    f"{self.option} {self.path.parent} is in use by process {pid} on {host} "
                    f"(lock {self.path}); wait for it to finish, or delete the lock file if that "
                    "process is gone") from None
            except OSError as e:
                raise os_error(e, self.path.parent, self.option) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
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
