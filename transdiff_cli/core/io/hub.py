"""Hugging Face Hub files and folders as sources: a file `hf://OWNER/REPO/PATH/IN/REPO[@REVISION]`,
e.g. the authors' `hf://zhendch/Transdiff/transdiff_l/checkpoint-last.pth`, or a whole model folder
`hf://OWNER/REPO[@REVISION]` (what `transdiff export` writes and `push_to_hub` uploads).

Resolved through `huggingface_hub.hf_hub_download` / `snapshot_download`, so its cache, `HF_HOME`, `HF_HUB_CACHE` and
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
FOLDER_FORM = "hf://OWNER/REPO[@REVISION]"
# the files of an exported model folder (`share.export`); nothing else is fetched
FOLDER_FILES = ["config.json", "model.safetensors", "README.md", "vae/*"]


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


def is_hub_folder(value: str | Path | None) -> bool:
    """`hf://OWNER/REPO[@REVISION]`: a whole repository, not a file in it."""
    return is_hub_id(value) and PREFIX.sub("", str(value)).partition("@")[0].strip("/").count("/") == 1


@dataclass(frozen=True)
class HubFolder:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"hf://{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    def fetch_command(self) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id}{rev}"


def parse_hub_folder(value: str | Path) -> HubFolder:
    """`hf://OWNER/REPO[@REVISION]` -> HubFolder; anything else is a one-line error."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    text = PREFIX.sub("", str(value))
    repo_id, at, revision = text.partition("@")
    repo_id = repo_id.strip("/")
    if repo_id.count("/") != 1 or (at and not revision):
        raise TransDiffError(f"malformed Hub folder id {value!s}: expected {FOLDER_FORM}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise TransDiffError(f"malformed Hub folder id {value!s}: {repo_id!r} is not a repository name "
                             f"({FOLDER_FORM})") from None
    return HubFolder(repo_id, revision or None)


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


def hub_folder(value: str | Path) -> Path:
    """The local snapshot folder of a Hub model folder: from the cache, or downloaded into it when
    online (only the files an exported folder holds)."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import snapshot_download

    f = parse_hub_folder(value)
    offline = _offline()
    try:
        return Path(snapshot_download(f.repo_id, revision=f.revision, cache_dir=_cache_dir(),
                                      local_files_only=offline, allow_patterns=FOLDER_FILES))
    except hf_errors.LocalEntryNotFoundError:
        why = "offline (HF_HUB_OFFLINE=1)" if offline else "the Hub cannot be reached"
        raise TransDiffError(f"{f}: repo {f.repo_id} is not in the Hugging Face cache and {why}; fetch it "
                             f"first with `{f.fetch_command()}`") from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as e:
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


def upload_folder(folder: Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                  commit_message: str | None = None, revision: str | None = None) -> str:
    """Upload an exported model folder to the Hub repo `repo_id` (created if missing); returns the
    commit's URL. Offline, or when the Hub cannot be reached, one line names what would have gone up."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except Exception:  # HFValidationError, or a non-string
        raise TransDiffError(f"`repo_id` {repo_id!r} is not a Hub repository name (OWNER/REPO)") from None
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    size = sum((folder / f).stat().st_size for f in files)
    what = f"{', '.join(files)} ({size / 2**20:.1f} MiB) to hf://{repo_id}"
    if _offline():
        raise TransDiffError(f"offline (HF_HUB_OFFLINE=1): nothing uploaded; it would have uploaded {what}")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=commit_message or "Upload TransDiff model folder")
    except Exception as e:  # HTTP, connection and auth errors of huggingface_hub / requests / httpx
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise TransDiffError(f"upload to hf://{repo_id} failed ({type(e).__name__}: {first}); it would have "
                             f"uploaded {what}") from None
    return str(getattr(info, "commit_url", info))
