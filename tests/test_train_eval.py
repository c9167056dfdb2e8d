"""Quality during training: `--eval-every` logs the EMA model's FID into metrics.jsonl and fid.png."""

import importlib.util
import json

import yaml
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.training.train_config import TrainConfig
from transdiff_cli.core.training.train_run import RunRequest, prepare

runner = CliRunner()
TINY = {"model": {"width": 32, "heads": 2, "encoder_depth": 1, "decoder_depth": 1, "buffer_size": 4,
                  "sampling_steps": 4}}


def test_eval_every_writes_fid_into_metrics(tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--config", str(config_file), "--run-dir", str(run), "--max-steps", "4",
                            "--batch-size", "32", "--log-every", "1", "--ckpt-every", "1000", "--no-progress",
                            "--device", "cpu", "--eval-every", "2", "--eval-images", "30",
                            "--eval-ref", "digits", "--eval-features", "digits"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "fid" in row]
    assert [e["step"] for e in evals] == [2, 4]
    assert all(e["fid"] > 0 and 0 <= e["class_fidelity"] <= 1 and e["eval_images"] == 30 for e in evals)
    assert len([row for row in rows if "loss" in row]) == 4  # the loss rows are still all there
    assert (run / "fid.png").stat().st_size > 0 and (run / "loss.png").is_file()


def test_eval_every_without_reference_and_tensorboard_errors(tmp_path):
    r = runner.invoke(app, ["train", "--data", "shapes", "--image-size", "8", "--run-dir", str(tmp_path / "r"),
                            "--eval-every", "10", "--max-steps", "2", "--device", "cpu"])
    assert r.exit_code == 2 and "--eval-every needs a reference" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "--data", "shapes", "--image-size", "8", "--run-dir", str(tmp_path / "r2"),
                            "--eval-every", "10", "--eval-ref", str(tmp_path / "missing"), "--max-steps", "2",
                            "--device", "cpu"])
    assert r.exit_code == 2 and "--eval-ref not found" in r.output


def test_default_digits_run_evaluates_itself_cheaply(tmp_path):
    trainer, _ = prepare(RunRequest(run_dir=str(tmp_path / "r"), device="cpu", progress=False))
    train_config: TrainConfig = trainer.train_config
    assert (train_config.eval_every, train_config.eval_ref, train_config.eval_features) == (210, "digits", "digits")
    assert train_config.max_steps % train_config.eval_every == 0 and train_config.eval_images <= 200
    off, _ = prepare(RunRequest(run_dir=str(tmp_path / "r2"), device="cpu", progress=False,
                                train_overrides={"eval_every": 0}))
    assert off.evaluator is None


def test_tensorboard_logs_or_says_how_to_install(tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--config", str(config_file), "--run-dir", str(run), "--max-steps", "2",
                            "--batch-size", "32", "--no-progress", "--device", "cpu", "--tensorboard",
                            "--eval-every", "0"])
    if importlib.util.find_spec("tensorboard") is None:
        assert r.exit_code == 2 and 'pip install -e ".[tensorboard]"' in r.output
    else:
        assert r.exit_code == 0, r.output
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
