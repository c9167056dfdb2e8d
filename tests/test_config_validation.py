"""One validated configuration: every bad value of a preset, YAML file or flag is one `error:` line
(exit 2) naming the key, the value and where it came from, before any work; models that cannot
fit are refused with the estimate, nothing allocated."""

import math

import pytest
import torch
import yaml
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.model.config import ModelConfig, preset
from transdiff_cli.core.model.transdiff import TransDiff
from transdiff_cli.core.schema import MODEL_SCHEMA, TRAIN_SCHEMA
from transdiff_cli.core.training import memory
from transdiff_cli.core.training.train_config import TrainConfig

runner = CliRunner()


def one_error(args, *needles):
    """Exit 2, exactly one non-empty output line, starting with 'error:', holding each needle."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def yaml_file(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("flags,needles", [
    (["--ckpt-every", "0"], ["--ckpt-every 0", "command line", ">= 1"]),
    (["--log-every", "0"], ["--log-every 0", "command line"]),
    (["--lr", "-1"], ["--lr -1", "command line", "> 0"]),
    (["--lr", "nan"], ["--lr nan", "finite"]),
    (["--warmup-epochs", "nan"], ["--warmup-epochs nan", "finite"]),
    (["--num-workers", "-1"], ["--num-workers -1", ">= 0"]),
    (["--ema-rate", "1.5"], ["--ema-rate 1.5", "< 1"]),
    (["--batch-size", "0"], ["--batch-size 0"]),
    (["--schedule", "linear"], ["--schedule 'linear'", "constant, cosine"]),
    (["--size", "XL"], ["unknown size 'XL'"]),
    (["--max-steps", "10", "--warmup-steps", "10"], ["--warmup-steps 10", "shorter than the run", "--max-steps 10"]),
])
def test_bad_flags_are_one_line_before_any_work(tmp_path, flags, needles):
    one_error(["train", "--run-dir", tmp_path / "run", "--device", "cpu", *flags], *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,needles", [
    ("model:\n  width: 32\n  heads: 0\n", ["heads 0", "cfg.yaml:3", ">= 1"]),
    ("model:\n  width: 0\n", ["width 0", "cfg.yaml:2"]),
    ("model:\n  width: -128\n", ["width -128", "cfg.yaml:2"]),
    ("model:\n  mlp_ratio: -4.0\n", ["mlp_ratio -4.0", "cfg.yaml:2", "> 0"]),
    ("train:\n  lr: .nan\n", ["lr nan", "cfg.yaml:2", "finite"]),
    ("model:\n  - width\n  - 32\n", ["`model`", "cfg.yaml:1", "mapping", "list"]),
    ("train:\n  batch_size: \"abc\"\n", ["batch_size 'abc'", "cfg.yaml:2", "integer"]),
    ("train:\n  grad_accum: 2.5\n", ["grad_accum 2.5", "integer"]),
    ("train:\n  ema_warmup: 3\n", ["ema_warmup 3", "true or false"]),
    ("model:\n  width: 96\n  heads: 5\n", ["heads 5 (from", "cfg.yaml:3", "must divide", "width 96", "cfg.yaml:2"]),
    ("model:\n  patch_size: 3\n", ["patch_size 3", "cfg.yaml:2", "does not divide the latent size 8"]),
    ("model:\n  colour: red\n", ["unknown model config key colour", "cfg.yaml:2"]),
    ("- 1\n- 2\n", ["must hold a mapping", "not a list"]),
    ("train: [1\n", ["cfg.yaml:2", "not valid YAML"]),
])
def test_bad_yaml_values_name_file_and_line(tmp_path, text, needles):
    cfg = yaml_file(tmp_path, text)
    one_error(["train", "--config", cfg, "--run-dir", tmp_path / "run", "--device", "cpu"], *needles)
    assert not (tmp_path / "run").exists()


def test_binary_yaml_is_one_line(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(b"\xff\xfe\x00model")
    one_error(["train", "--config", cfg, "--run-dir", tmp_path / "run"], "cfg.yaml", "not text")


@pytest.mark.parametrize("text", ["model:\n  width: 1000000\n", "model:\n  encoder_depth: 100000000\n"])
def test_a_model_larger_than_the_machine_is_refused_with_the_estimate(tmp_path, text, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr(TransDiff, "__init__", no_model)
    one_error(["train", "--config", yaml_file(tmp_path, text), "--run-dir", tmp_path / "run",
               "--device", "cpu"], "parameters", "GiB", "available", "reduce")
    assert not (tmp_path / "run").exists()


def test_flags_win_over_a_bad_yaml_value_and_are_named(tmp_path):
    cfg = yaml_file(tmp_path, "train:\n  lr: -1\n  log_every: 0\n")
    one_error(["train", "--config", cfg, "--lr", "0.001", "--run-dir", tmp_path / "run"],
              "log_every 0", "cfg.yaml:3")


# --------------------------------------------------------------------------- the schema itself
def test_every_config_key_has_a_spec():
    assert set(MODEL_SCHEMA) == set(ModelConfig.__dataclass_fields__)
    assert set(TRAIN_SCHEMA) == set(TrainConfig.__dataclass_fields__)


def test_presets_and_their_recipes_pass_the_schema():
    from transdiff_cli.core.training.train_config import train_defaults

    for size in ("tiny", "S", "B", "L", "H"):
        preset(size)
        preset(size, mrar=True)
        for kind in ({}, {"finetune": True}, {"decoder_only": True}):
            TrainConfig.from_dict(train_defaults(size, **kind)).validate()


def test_direct_construction_is_checked_too():
    with pytest.raises(TransDiffError, match="`heads` 0"):
        ModelConfig(heads=0)
    with pytest.raises(TransDiffError, match="`ckpt_every` 0"):
        TrainConfig(ckpt_every=0)


def test_integral_numbers_convert_and_ints_become_floats():
    c = TrainConfig.from_dict({"batch_size": 64.0, "lr": 1, "max_steps": 10})
    assert c.batch_size == 64 and isinstance(c.batch_size, int) and isinstance(c.lr, float)


@pytest.mark.parametrize("size,kw", [("tiny", dict(latent_channels=1, latent_size=8)),
                                     ("S", {}), ("tiny", dict(mrar=True, latent_channels=4, latent_size=16))])
def test_parameter_estimate_is_close_to_the_model(size, kw):
    c = preset(size, **kw)
    with torch.device("meta"):
        n = sum(p.numel() for p in TransDiff(c).parameters())
    assert math.isclose(memory.parameter_count(c), n, rel_tol=0.05)


def test_training_memory_check_uses_the_estimate():
    c = preset("S")
    t = TrainConfig(batch_size=128, max_steps=10)
    memory.check_fits_machine(c, t, torch.device("cpu"), available=64 << 30)
    with pytest.raises(TransDiffError, match="`batch_size`") as e:
        memory.check_fits_machine(c, t, torch.device("cpu"),
                                  available=memory.parameter_count(c) * memory.BYTES_PER_PARAM + 1)
    assert "activations" in str(e.value)
    with pytest.raises(TransDiffError, match="reduce `width`"):
        memory.check_fits_machine(c, t, torch.device("cpu"), available=1 << 20)


def test_run_config_and_checkpoint_config_are_checked_on_read(tmp_path):
    import json

    from conftest import tiny_checkpoint

    from transdiff_cli.core.io.checkpoint import load_checkpoint

    ck = tiny_checkpoint(tmp_path / "ck")
    doc = json.loads((ck / "config.json").read_text())
    doc["model"]["heads"] = "two"
    (ck / "config.json").write_text(json.dumps(doc))
    with pytest.raises(TransDiffError, match=r"heads 'two' \(from .*config.json\)"):
        load_checkpoint(ck)
    doc["model"] = [1, 2]
    (ck / "config.json").write_text(json.dumps(doc))
    with pytest.raises(TransDiffError, match=r"model config in .*config.json must be a mapping"):
        load_checkpoint(ck)
    one_error(["sample", "--ckpt", ck, "--class", "1", "--num", "1", "--out", tmp_path / "s"], "config.json")


def test_yaml_line_numbers_for_flat_files(tmp_path):
    from transdiff_cli.core.training.run_request import read_config_file

    f = read_config_file(yaml_file(tmp_path, "# a comment\nwidth: 64\nlr: 0.1\n"))
    assert f.model == {"width": 64} and f.train == {"lr": 0.1}
    assert f.model_lines["width"].endswith("cfg.yaml:2") and f.train_lines["lr"].endswith("cfg.yaml:3")
    assert yaml.safe_load(yaml_file(tmp_path, "a: 1").read_text()) == {"a": 1}
