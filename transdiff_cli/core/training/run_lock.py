"""The one-writer folder lock lives in `core/fs.py`, beside the atomic writes; kept importable here."""

from ..fs import LOCK, FolderLock

__all__ = ["LOCK", "FolderLock"]
