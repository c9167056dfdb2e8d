"""examples/: the configs are the size presets and load with --config, the Python API example runs on a
run trained with the CLI, the laptop session runs end to end (quick form), the cluster scripts parse."""

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.model.config import preset
from transdiff_cli.core.training.run_plan import merge_train
from transdiff_cli.core.training.run_request import read_config_file
from transdiff_cli.core.training.train_config import TrainConfig, train_defaults

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SIZES = ["tiny", "S", "B", "L", "H"]


@pytest.mark.parametrize("size", SIZES)
def test_config_files_are_the_presets(size):
    f = read_config_file(EXAMPLES / "configs" / f"{size}.yaml")
    model, train = f.model, f.train
    assert model.pop("size") == size
    assert preset(size, **model) == preset(size)
    want = TrainConfig.from_dict(train_defaults(size))
    got = TrainConfig.from_dict(merge_train(train_defaults(size), train))
    assert got == want


def test_python_api_example_on_a_cli_run(tmp_path, monkeypatch, one_thread):
    # a run trained with the CLI from the tiny config, made smaller and shorter for the test
    config = yaml.safe_load((EXAMPLES / "configs" / "tiny.yaml").read_text())
    config["model"].update(width=32, encoder_depth=1, decoder_depth=1)
    config["train"].update(grid_sampling_steps=2, grid_classes=2, grid_per_class=1)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "runs" / "digits-tiny"
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "config.yaml"), "--run-dir", str(run),
                                      "--max-steps", "2", "--batch-size", "16", "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "api-out"
    monkeypatch.setattr(sys, "argv", ["python_api.py", str(run), "--sampling-steps", "2", "--out", str(out),
                                      "--device", "cpu"])
    runpy.run_path(str(EXAMPLES / "python_api.py"), run_name="__main__")
    names = {p.name for p in out.glob("*.png")}
    assert {f"sample_{i}_class{i // 2}.png" for i in range(8)} <= names
    assert {f"decoded_class{i}.png" for i in range(4)} <= names
    assert {"fuse_a.png", "fuse_fused.png", "fuse_b.png"} <= names


@pytest.mark.slow
def test_laptop_session_quick(tmp_path):
    env = {**os.environ, "QUICK": "1", "TRANSDIFF": f"{sys.executable} -m transdiff_cli", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(EXAMPLES / "laptop.sh")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for path in ("runs/digits-tiny", "runs/digits-tiny-mrar", "samples/grid.png", "samples-mrar/rounds",
                 "fid/metrics.json", "fuse/fuse.png"):
        assert (tmp_path / path).exists(), path


@pytest.mark.parametrize("script", ["laptop.sh", "imagenet_256.sh", "slurm_train.sbatch"])
def test_shell_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(EXAMPLES / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the configs a script names exist
    for name in re.findall(r"configs/([\w.-]+\.yaml)", (EXAMPLES / script).read_text()):
        assert (EXAMPLES / "configs" / name).is_file(), name
