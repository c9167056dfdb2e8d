import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURES = REPO.parent / "shared" / "fixtures" / "official"

torch.set_num_threads(min(2, torch.get_num_threads()))


def fixture_dir() -> Path:
    return Path(os.environ.get("TRANSDIFF_PARITY_FIXTURES", DEFAULT_FIXTURES))


@pytest.fixture(scope="session")
def fixtures() -> Path:
    d = fixture_dir()
    if not (d / "manifest.json").is_file():
        pytest.fail(f"parity fixtures not found in {d} (set TRANSDIFF_PARITY_FIXTURES)")
    return d


@pytest.fixture(scope="session")
def manifest(fixtures: Path) -> dict:
    return json.loads((fixtures / "manifest.json").read_text())
