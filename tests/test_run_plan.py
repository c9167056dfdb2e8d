"""A run is planned once: presets, YAML and flags merged by one function into a RunPlan, with the
same precedence for every start kind (fresh, init-from, finetune-mrar); `train` and
`finetune-mrar` share one option declaration; a run folder is never relabelled with another parent."""

import pytest
import torch
import yaml
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.commands._train_options import SHARED
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.io.checkpoint import save_checkpoint
from transdiff_cli.core.model.config import ModelConfig
from transdiff_cli.core.model.transdiff import TransDiff
from transdiff_cli.core.training.run_dir import RunDir, open_run_dir
from transdiff_cli.core.training.run_plan import plan_run, plan_train
from transdiff_cli.core.training.train_config import TrainConfig, train_defaults
from transdiff_cli.core.training.train_run import RunRequest, prepare

KINDS = ["fresh", "init_from", "finetune"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 1-step checkpoint trained on digits with `vae` pixels (as a run records it)."""
    torch.manual_seed(0)
    config = ModelConfig(size="tiny", width=32, heads=2, encoder_depth=1, decoder_depth=1, num_classes=10,
                         latent_channels=1, latent_size=8, patch_size=2, sampling_steps=2)
    model = TransDiff(config)
    meta = {"tokenizer": {"kind": "pixels", "image_size": 8, "image_channels": 1, "scale_factor": 1.0},
            "class_names": [str(i) for i in range(10)], "data": "digits", "train": {"vae": "pixels"}}
    return save_checkpoint(tmp_path_factory.mktemp("src") / "ck", model.state_dict(), config, meta,
                           ema_state=model.state_dict())


def request(kind, source, tmp_path, yaml_doc=None, train=None, model=None):
    cfg = None
    if yaml_doc is not None:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(yaml_doc))
    start = {"fresh": {}, "init_from": {"init_from": str(source)}, "finetune": {"finetune_from": str(source)}}[kind]
    return RunRequest(config_file=None if cfg is None else str(cfg), train_overrides=dict(train or {}),
                      model_overrides=dict(model or {}), run_dir=str(tmp_path / "run"), device="cpu", **start)


@pytest.mark.parametrize("kind", KINDS)
def test_training_keys_flag_over_yaml_over_preset(kind, source, tmp_path):
    req = request(kind, source, tmp_path, {"train": {"batch_size": 16, "lr": 0.01, "epochs": 2}},
                  train={"lr": 0.02, "seed": 7})
    _, _, tc = plan_train(req)
    table = train_defaults("tiny", finetune=kind == "finetune", decoder_only=kind == "init_from")
    assert (tc.lr, tc.seed, tc.batch_size) == (0.02, 7, 16)  # flag, flag, YAML
    assert tc.ema_rate == table["ema_rate"]  # the start kind's preset table
    assert tc.epochs == 2 and tc.max_steps is None  # a YAML `epochs` drops the preset's `max_steps`
    assert tc.data == "digits"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("given,want", [
    ({}, "source"), ({"yaml": "kl16:a.ckpt"}, "kl16:a.ckpt"),
    ({"yaml": "kl16:a.ckpt", "flag": "kl16:b.ckpt"}, "kl16:b.ckpt"), ({"data": "shapes"}, None),
])
def test_vae_precedence_is_the_same_for_every_start_kind(kind, given, want, source, tmp_path):
    """flag > YAML > the source's `vae` (when `data` is the source's too) > none."""
    yaml_train = {"vae": given["yaml"]} if "yaml" in given else {}
    flags = {**({"vae": given["flag"]} if "flag" in given else {}),
             **({"data": given["data"]} if "data" in given else {})}
    _, _, tc = plan_train(request(kind, source, tmp_path, {"train": yaml_train}, train=flags))
    if want == "source":
        want = None if kind == "fresh" else "pixels"
    assert tc.vae == want


@pytest.mark.parametrize("kind", KINDS)
def test_model_keys_flag_over_yaml_over_base(kind, source, tmp_path):
    yaml_model = {"cfg": 3.0, "sampling_steps": 3}
    if kind == "fresh":
        yaml_model.update(width=32, heads=2, encoder_depth=1, decoder_depth=1)
    if kind == "finetune":
        yaml_model["mrar_rounds"] = 2
    req = request(kind, source, tmp_path, {"model": yaml_model, "train": {"batch_size": 8}},
                  model={"sampling_steps": 4, "grad_checkpointing": True})
    plan = plan_run(req)
    mc = plan.model_config
    assert (mc.cfg, mc.sampling_steps, mc.grad_checkpointing) == (3.0, 4, True)
    assert (mc.width, mc.latent_channels, mc.latent_size, mc.num_classes) == (32, 1, 8, 10)  # geometry: the data
    assert mc.mrar == (kind == "finetune") and (kind != "finetune" or mc.mrar_rounds == 2)
    assert (plan.init_weights is None) == (kind == "fresh")
    assert plan.parent == (None if kind == "fresh" else str(source))


def test_source_size_preset_table_and_a_yaml_size_for_init_from(source, tmp_path):
    req = request("init_from", source, tmp_path, {"model": {"size": "S"}})
    with pytest.raises(TransDiffError, match="width 32, but the run asks for 384"):
        plan_run(req)


def test_train_and_finetune_mrar_share_one_option_declaration():
    import typer.main

    cmd = typer.main.get_command(app)
    names = {n: {p.name for p in cmd.commands[n].params} for n in ("train", "finetune-mrar")}
    shared = {name for name, _, _ in SHARED}
    assert shared <= names["train"] and shared <= names["finetune-mrar"]
    assert names["train"] - shared == {"size", "init_from", "only_train_diff"}
    assert names["finetune-mrar"] - shared == {"from_", "mrar_rounds", "groups"}
    # every shared option that is a training key reaches the training config by its name
    assert {n for n in shared if n in TrainConfig.__dataclass_fields__} >= {"lr", "batch_size", "eval_ref"}


def test_a_run_folder_started_from_another_parent_is_refused(source, tmp_path):
    from transdiff_cli.core.distributed import DistInfo

    req = request("init_from", source, tmp_path, train={"batch_size": 8})
    plan = plan_run(req)
    run = RunDir(tmp_path / "run")
    run.create()
    (run.checkpoints / "LATEST").write_text("step_0000001\n")
    dist = DistInfo()
    for old_parent, needle in (("/elsewhere/ck", "started from /elsewhere/ck"), (None, "without a parent")):
        doc = {"model": plan.model_config.to_dict(), **({"parent": old_parent} if old_parent else {})}
        run.write_config(doc)
        with pytest.raises(TransDiffError, match=needle):
            prepare(req)
        assert yaml.safe_load(run.config.read_text()) == doc  # never relabelled
    run.write_config({"model": plan.model_config.to_dict(), "parent": str(source)})
    opened, resuming = open_run_dir(run.root, None, dist, None)
    assert resuming and opened.root == run.root
    opened.check_parent(plan.parent)  # the same parent: accepted


def test_rerun_with_another_init_from_is_one_line(source, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(source, other)
    run = tmp_path / "run"
    fast = ["--batch-size", "8", "--max-steps", "1", "--log-every", "1", "--no-progress", "--device", "cpu"]
    runner = CliRunner()
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"train": {"grid_classes": 1, "grid_per_class": 1, "grid_sampling_steps": 1}}))
    args = ["train", "--run-dir", str(run), "--config", str(grid), *fast]
    first = runner.invoke(app, [*args, "--init-from", str(source)])
    assert first.exit_code == 0, first.output
    before = (run / "config.yaml").read_text()
    again = runner.invoke(app, [*args, "--init-from", str(other)])
    lines = [ln for ln in again.output.splitlines() if ln.strip()]
    assert again.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), again.output
    assert "started from" in lines[0] and str(other) in lines[0]
    assert (run / "config.yaml").read_text() == before


def test_a_recipe_files_warm_up_is_cut_by_a_short_run_from_a_flag(tmp_path, source):
    """A YAML warm-up longer than a `--max-steps` trial is allowed (the preset's is too); the same
    warm-up and run length from one source are refused."""
    _, _, tc = plan_train(request("fresh", source, tmp_path, {"train": {"warmup_steps": 50}}, train={"max_steps": 2}))
    assert (tc.warmup_steps, tc.max_steps) == (50, 2)
    with pytest.raises(TransDiffError, match=r"warmup_steps 50 \(from .*cfg.yaml:\d\) must be shorter"):
        plan_train(request("fresh", source, tmp_path, {"train": {"warmup_steps": 50, "max_steps": 50}}))


def test_the_machine_is_settled_once_and_the_memory_check_uses_it(source, tmp_path, monkeypatch):
    from transdiff_cli.core import device as device_mod

    asked = []
    monkeypatch.setattr(device_mod, "available_memory", lambda d: asked.append(d) or 1 << 20)
    req = request("fresh", source, tmp_path, train={"batch_size": 8, "precision": "fp32"})
    with pytest.raises(TransDiffError, match="cpu has 0.0 GiB available: reduce `width`"):
        plan_run(req)
    assert asked == [torch.device("cpu")]
    monkeypatch.setattr(device_mod, "available_memory", lambda d: None)  # unknown: nothing refused
    machine = plan_run(req).machine
    assert (machine.device, machine.dist.world_size, machine.autocast, machine.memory) == \
        (torch.device("cpu"), 1, None, None)
