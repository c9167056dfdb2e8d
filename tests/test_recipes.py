"""The authors' training recipes as presets, warm-up in epochs, the inherited fine-tune EMA, and
fixed MRAR groups (`finetune-mrar --groups`)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.data.datasets import DigitsDataset
from transdiff_cli.core.data.training_data import open_training_data
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.io.checkpoint import load_checkpoint
from transdiff_cli.core.model.config import preset
from transdiff_cli.core.model.convert import init_mrar_from_1step, mrar_config
from transdiff_cli.core.training.optim import lr_at
from transdiff_cli.core.training.train_config import TrainConfig, train_defaults
from transdiff_cli.core.training.train_run import RunRequest, prepare, run_training

runner = CliRunner()
TINY = {"model": {"width": 32, "heads": 2, "encoder_depth": 1, "decoder_depth": 1, "buffer_size": 4}}


def one_line_error(args: list, *needles: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    lines = [x for x in result.output.strip().splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.mark.parametrize("size", ["B", "L", "H"])
def test_paper_presets_are_the_authors_recipes(size):
    one = TrainConfig.from_dict(train_defaults(size))
    assert (one.epochs, one.warmup_epochs, one.warmup_steps, one.max_steps) == (800, 100, None, None)
    assert (one.batch_size, one.peak_lr, one.schedule) == (2048, 1e-4 * 2048 / 256, "constant")
    assert (one.ema_rate, one.ema_warmup) == (0.9999, False)
    assert preset(size).diffusion_batch_mul == 4
    ft = TrainConfig.from_dict(train_defaults(size, finetune=True))
    assert (ft.epochs, ft.warmup_epochs, ft.warmup_steps, ft.max_steps) == (40, 10, None, None)
    assert (ft.batch_size, ft.peak_lr, ft.ema_warmup) == (2048, 5e-5, False)
    assert mrar_config(preset(size)).diffusion_batch_mul == 2


def test_warmup_in_epochs():
    tc = TrainConfig(warmup_steps=None, warmup_epochs=2.5, lr=1.0)
    assert tc.warmup_for(steps_per_epoch=4) == 10
    assert lr_at(4, 100, tc, tc.warmup_for(4)) == pytest.approx(0.5) and lr_at(10, 100, tc, 10) == 1.0
    with pytest.raises(TransDiffError, match="`warmup_steps` .* or `warmup_epochs`"):
        TrainConfig(warmup_steps=5, warmup_epochs=1.0).validate()


def test_grid_sampling_steps_reads_its_old_name():
    assert TrainConfig.from_dict({"sample_steps": 3}).grid_sampling_steps == 3
    assert TrainConfig.from_dict({"grid_sampling_steps": 5}).grid_sampling_steps == 5


def test_renamed_keys_read_from_yaml_flags_run_folders_and_checkpoints(tmp_path, one_step_run):
    """`mrar_steps` (K, before "step" meant only a sampler or training step) reads as `mrar_rounds`."""
    import typer

    from transdiff_cli.cli import renamed_flags
    from transdiff_cli.core.training.run_request import read_user_config

    assert preset("tiny", mrar=True, mrar_steps=2).mrar_rounds == 2  # a stored config.json / checkpoint meta
    for doc in ({"model": {"mrar": True, "mrar_steps": 3}}, {"mrar": True, "mrar_steps": 3}):  # sections or flat
        (tmp_path / "old.yaml").write_text(yaml.safe_dump(doc))
        user = read_user_config(RunRequest(config_file=str(tmp_path / "old.yaml")))
        assert user.model["mrar_rounds"] == 3 and user.model_sources["mrar_rounds"].endswith(
            "old.yaml:3" if "model" in doc else "old.yaml:2")
    command = typer.main.get_command(app).commands["finetune-mrar"]
    assert renamed_flags(command, ["--mrar-steps", "2"]) == ["--mrar-rounds", "2"]
    # a run folder whose config.yaml predates the rename resumes (here: finds it has nothing to do)
    run = tmp_path / "run"
    shutil.copytree(one_step_run, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("mrar_rounds:", "mrar_steps:"))
    assert "mrar_steps:" in config.read_text()
    run_training(RunRequest(size="tiny", config_file=str(one_step_run.parent / "tiny.yaml"), run_dir=str(run),
                            device="cpu", progress=False,
                            train_overrides={"max_steps": 3, "batch_size": 32, "ckpt_every": 1000, "log_every": 1,
                                             "grid_sampling_steps": 1, "grid_classes": 1, "grid_per_class": 1}))


def test_contradictory_warmup_flags_fail_in_one_line(tmp_path):
    one_line_error(["train", "--warmup-steps", 5, "--warmup-epochs", 1, "--run-dir", tmp_path / "r"],
                   "--warmup-steps", "--warmup-epochs")
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory) -> Path:
    """A 1-step tiny run on digits (3 steps) whose EMA differs from its weights."""
    root = tmp_path_factory.mktemp("one")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    run_training(RunRequest(size="tiny", config_file=str(root / "tiny.yaml"), run_dir=str(root / "run"),
                            device="cpu", progress=False,
                            train_overrides={"max_steps": 3, "batch_size": 32, "ckpt_every": 1000, "log_every": 1,
                                             "grid_sampling_steps": 1, "grid_classes": 1, "grid_per_class": 1}))
    return root / "run"


def test_finetune_ema_starts_from_the_converted_source_ema(tmp_path, one_step_run):
    src = load_checkpoint(one_step_run, weights="model", keep_raw=True)
    assert not torch.equal(src.raw_ema["class_emb.weight"], src.raw_model["class_emb.weight"])
    req = RunRequest(finetune_from=str(one_step_run), run_dir=str(tmp_path / "mrar"), device="cpu", progress=False,
                     train_overrides={"max_steps": 1, "batch_size": 16, "ckpt_every": 1000, "grid_sampling_steps": 1,
                                      "grid_classes": 1, "grid_per_class": 1})
    trainer, _ = prepare(req)
    want = init_mrar_from_1step(src.raw_ema, src.config, trainer.model_config)
    for k, v in trainer.ema.params.items():  # before the first step: the converted source EMA
        assert torch.equal(v, want[k]), k
    # copied tensors equal the source EMA wherever the source has it
    assert torch.equal(trainer.ema.params["mask_token"][:, :1], src.raw_ema["mask_token"])
    assert trainer.model_config.diffusion_batch_mul == 2
    start = {k: v.clone() for k, v in trainer.ema.params.items()}
    trainer.train()
    # one step later the EMA moved by (1 - rate) towards the weights: no warm-up discarded it
    rate = trainer.train_config.ema_rate
    weights = dict(trainer.model.named_parameters())
    for k in ("class_emb.weight", "mask_token", "decoder.input_proj.weight"):
        expect = rate * start[k] + (1 - rate) * weights[k].detach()
        assert torch.allclose(trainer.ema.params[k], expect, atol=1e-6), k


def write_groups(path: Path, groups: list[tuple[str, list[str]]]) -> Path:
    path.write_text("".join(json.dumps({"cate": c, "files": f}) + "\n" for c, f in groups))
    return path


def test_groups_file_over_digits_reads_exactly_those_groups(tmp_path):
    digits = DigitsDataset()
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(digits.targets):
        by_class.setdefault(t, []).append(i)
    chosen = [by_class[3][5:9], by_class[7][:4][::-1]]
    groups = write_groups(tmp_path / "g.jsonl",
                          [(str(digits.targets[g[0]]), [f"digits[{i}]" for i in g]) for g in chosen])
    data = open_training_data("digits", group_size=4, groups=groups)
    assert len(data.dataset) == 2
    for (latents, label), g in zip(data.dataset, chosen):
        assert label == digits.targets[g[0]]
        assert torch.equal(latents, torch.stack([digits.images[i] for i in g]))


def test_groups_file_over_shapes_latents(tmp_path):
    r = runner.invoke(app, ["encode-latents", "--quiet", "--data", "shapes", "--out", str(tmp_path / "lat"),
                            "--device", "cpu", "--image-size", "8"])
    assert r.exit_code == 0, r.output
    # shapes item i has class i % 12: red-circle is 0, 12, 24, ...
    chosen = [[12, 0, 36, 24], [13, 25, 1, 49]]
    groups = write_groups(tmp_path / "g.jsonl", [("red-circle", [f"shapes[{i}]" for i in chosen[0]]),
                                                 ("red-square", [f"shapes[{i}]" for i in chosen[1]])])
    data = open_training_data(str(tmp_path / "lat"), group_size=4, groups=groups)
    base = data.dataset.base
    assert data.dataset.groups == [[base.indices.index(i) for i in g] for g in chosen]
    assert data.dataset.targets == [0, 1]
    assert data.dataset[1][0].shape[0] == 4


@pytest.mark.parametrize("content,msg", [
    ('{"cate": "3", "files": ["digits[3]"]}\n', "1 files"),
    ("not json\n", "line 1: not JSON"),
    ('{"cate": "3", "files": ["digits[3]", "digits[13]", "digits[23]", "digits[99999]"]}\n', "3/digits[99999]"),
    ('{"cate": 3}\n', "expected"),
])
def test_bad_groups_file_is_one_line(tmp_path, fixtures, content, msg):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    one_line_error(["finetune-mrar", "--from", fixtures / "transdiff_1step.pth", "--data", "digits",
                    "--groups", bad, "--run-dir", tmp_path / "r", "--device", "cpu"], "--groups", msg)
    assert not (tmp_path / "r").exists()
