"""Smoke run of the miniature reproduction benchmark (no quality assertions: that is the full run's job)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quality_small_quick(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quality_small.py"), "--quick",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    seed = results["seeds"][0]
    assert {"1step", "1step_continued", "mrar"} <= set(seed["eval"])
    for ev in seed["eval"].values():
        assert ev["fid"] >= 0 and 0 <= ev["class_fidelity"] <= 1 and ev["s_per_image"] > 0
    assert len(seed["diversity"]["mrar"]["per_round_mean"]) == 4
    assert {r["sampling_steps"] for r in results["sweep"]} == {2, 4}
    for name in ("figure.png", "fuse.png", "REPORT.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert "MRAR" in (tmp_path / "REPORT.md").read_text()
