"""Hugging Face Hub files as sources: `hf://OWNER/REPO/PATH/IN/REPO[@REVISION]`, e.g. the authors'
`hf://zhendch/Transdiff/transdiff_l/checkpoint-last.pth`.

Resolved through `huggingface_hub.hf_hub_download`, so its cache, `HF_HOME`, `HF_HUB_CACHE` and
`HF_HUB_OFFLINE=1` behave as everywhere else (read when the file is asked for, not at import).
A file that is neither cached nor downloadable gives one line with the command that fetches it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TransDiffError

# Path("hf://a/b") collapses the slashes to "hf:/a/b": accept both spellings
PREFIX = re.compile(r"^hf:/+")
FORM = "hf://OWNER/REPO/PATH/IN/REPO[@REVISION]"


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"hf://{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")

    def fetch_command(self) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id} {self.filename}{rev}"


def is_hub_id(value: str | Path | None) -> bool:
    return value is not None and bool(PREFIX.match(str(value)))


def parse_hub_id(value: str | Path) -> HubFile:
    """`hf://OWNER/REPO/PATH[@REVISION]` -> HubFile; anything else is a one-line error."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    text = PREFIX.sub("", str(value))
    rest, at, revision = text.partition("@")
    parts = rest.split("/")
    if len(parts) < 3 or any(not p or p in (".", "..") for p in parts) or (at and not revision):
        raise TransDiffError(f"malformed Hub id {value!s}: expected {FORM}")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise TransDiffError(f"malformed Hub id {value!s}: {repo_id!r} is not a repository name ({FORM})") from None
    return HubFile(repo_id, filename, revision or None)


def _cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None  # huggingface_hub's default


def _offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE") or \
        bool(constants.HF_HUB_OFFLINE)


def hub_file(value: str | Path) -> Path:
    """The local path of a Hub file: from the cache, or downloaded into it when online."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    f = parse_hub_id(value)
    offline = _offline()
    try:
        return Path(hf_hub_download(f.repo_id, f.filename, revision=f.revision, cache_dir=_cache_dir(),
                                    local_files_only=offline))
    except hf_errors.LocalEntryNotFoundError:
        why = "offline (HF_HUB_OFFLINE=1)" if offline else "the Hub cannot be reached"
        raise TransDiffError(f"{f}: file {f.filename} of repo {f.repo_id} is not in the Hugging Face cache "
                             f"and {why}; fetch it first with `{f.fetch_command()}`") from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError,
            hf_errors.EntryNotFoundError) as e:
        raise TransDiffError(f"{f}: {type(e).__name__} ({str(e).splitlines()[0][:160]})") from None
    except (hf_errors.HfHubHTTPError, OSError) as e:
        raise TransDiffError(f"{f}: cannot download ({str(e).splitlines()[0][:160]}); fetch it with "
                             f"`{f.fetch_command()}`") from None


def local_path(value: str | Path) -> Path:
    """A Hub id resolved to its cached file; any other value as a Path."""
    return hub_file(value) if is_hub_id(value) else Path(value)


def normalize(value: str) -> str:
    """The canonical `hf://` spelling of a Hub id (stored in specs so they compare equal)."""
    return str(parse_hub_id(value))
