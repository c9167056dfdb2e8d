"""Hugging Face Hub sources (`hf://OWNER/REPO/PATH[@REVISION]`) through a local hub cache, offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.io.hub import parse_hub_id

runner = CliRunner()
SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "zhendch/Transdiff"
CKPT = f"hf://{REPO}/transdiff_l/checkpoint-last.pth"
VAE = f"hf://{REPO}/vae/checkpoint-last.pth"


@pytest.fixture
def hub_cache(tmp_path, fixtures, monkeypatch) -> Path:
    """HF_HOME/hub laid out as huggingface_hub writes it, holding the shared fixtures; offline."""
    home = tmp_path / "hf_home"
    repo = home / "hub" / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    snap = repo / "snapshots" / SHA
    for name, src in (("transdiff_l/checkpoint-last.pth", fixtures / "transdiff_1step.pth"),
                      ("vae/checkpoint-last.pth", fixtures / "vae_kl.ckpt")):
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).symlink_to(src)
    images = np.random.default_rng(0).integers(0, 255, (8, 8, 8, 1), dtype=np.uint8)
    np.savez(snap / "ref.npz", arr_0=images)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_parse_hub_ids():
    f = parse_hub_id("hf://zhendch/Transdiff/transdiff_l_512/checkpoint-last.pth@v1.0")
    assert (f.repo_id, f.filename, f.revision) == (REPO, "transdiff_l_512/checkpoint-last.pth", "v1.0")
    assert parse_hub_id("hf:/zhendch/Transdiff/vae/checkpoint-last.pth").revision is None  # Path() spelling
    assert f.fetch_command() == f"hf download {REPO} transdiff_l_512/checkpoint-last.pth --revision v1.0"
    for bad in ("hf://zhendch/Transdiff", "hf://zhendch//x.pth", "hf://zh endch/Transdiff/x.pth", "hf://a/b/c@"):
        with pytest.raises(TransDiffError, match="malformed Hub id"):
            parse_hub_id(bad)


def test_sample_through_the_hub_cache(hub_cache, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["sample", "--ckpt", CKPT, "--vae", f"kl16:{VAE}", "--class", "1", "--num", "1",
                                 "--sampling-steps", "1", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (out / "grid.png").is_file()
    info = json.loads((out / "samples.json").read_text())
    assert info["checkpoint"].startswith(str(hub_cache / "hub"))
    doc = json.loads(runner.invoke(app, ["sample", "--ckpt", CKPT, "--vae", f"kl16:{VAE}@main",
                                         "--dry-run", "--device", "cpu"]).stdout)
    assert doc["tokenizer"]["path"] == f"{VAE}@main"
    assert doc["tokenizer"]["local_path"].startswith(str(hub_cache / "hub"))


def test_fid_reference_through_the_hub_cache(hub_cache, tmp_path):
    gen = tmp_path / "gen.npz"
    np.savez(gen, arr_0=np.random.default_rng(1).integers(0, 255, (8, 8, 8, 1), dtype=np.uint8))
    result = runner.invoke(app, ["fid", "--gen", str(gen), "--ref", f"hf://{REPO}/ref.npz@{SHA}",
                                 "--features", "digits", "--out", str(tmp_path / "fid"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "fid" / "metrics.json").read_text())
    assert metrics["num_reference"] == 8 and metrics["reference"].endswith(f"snapshots/{SHA}/ref.npz")


@pytest.mark.parametrize("ckpt,needles", [
    (f"hf://{REPO}/transdiff_h/checkpoint-last.pth",
     ["transdiff_h/checkpoint-last.pth", REPO, f"hf download {REPO} transdiff_h/checkpoint-last.pth"]),
    ("hf://zhendch/Transdiff", ["hf://zhendch/Transdiff", "not a model folder", "transdiff export"]),  # a repo
    ("hf://zhendch/Transdiff@", ["malformed Hub folder id"]),
])
def test_missing_or_malformed_is_one_line(hub_cache, tmp_path, ckpt, needles):
    result = runner.invoke(app, ["sample", "--ckpt", ckpt, "--out", str(tmp_path / "o"), "--device", "cpu"])
    lines = [x for x in result.output.strip().splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert all(n in lines[0] for n in needles), lines[0]


def test_hub_cache_env_in_a_fresh_process(hub_cache, tmp_path):
    """HF_HUB_CACHE / HF_HUB_OFFLINE as a user sets them, read by a new process."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache / "hub"), "HF_HOME": str(tmp_path / "elsewhere"),
           "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "transdiff_cli.cli", "sample", "--ckpt", CKPT, "--vae", f"kl16:{VAE}",
                        "--dry-run", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["checkpoint"]["path"].startswith(str(hub_cache / "hub"))
