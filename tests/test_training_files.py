"""What a training run reads and writes holds up against odd input: rows of metrics.jsonl of the
wrong shape, binary groups files, run folders whose names hold rich markup, surrogates or `$`,
a full disk during a checkpoint save, and a kill between a checkpoint and its evaluation."""

import errno
import json
import shutil

import pytest
import yaml
from conftest import invoke, run_cli, tiny_checkpoint

from transdiff_cli.core.data.mrar_groups import read_groups
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.io import checkpoint as checkpoint_mod
from transdiff_cli.core.io.checkpoint import load_checkpoint, resolve
from transdiff_cli.core.training.run_dir import RunDir

TINY = {"model": {"width": 32, "heads": 2, "encoder_depth": 1, "decoder_depth": 1, "buffer_size": 4},
        "train": {"grid_classes": 1, "grid_per_class": 1, "grid_sampling_steps": 1}}
# markup and a surrogate (an undecodable byte of a file name) in the run folder's name: every
# message, progress line and plot title shows it
ODD_NAME = "r[/]un[bold]\udcff"




def one_error(args, *needles, after_progress=False):
    result = run_cli(args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in result.output
    if after_progress:
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def train_args(cfg, run, steps, *extra):
    return ["train", "--config", cfg, "--run-dir", run, "--max-steps", steps, "--batch-size", 16,
            "--log-every", 1, "--ckpt-every", 2, "--no-progress", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cfg):
    """Two steps (checkpoint step_0000002) in a folder with an odd name; tests copy it."""
    run = tmp_path_factory.mktemp("runs") / ODD_NAME
    result = invoke(train_args(cfg, run, 2))
    assert "r[/]un[bold]" in result.stderr and "step_0000002" in result.stderr  # printed literally
    assert (run / "loss.png").stat().st_size > 0  # drawn despite the surrogate
    return run


def copy_run(src, tmp_path):
    dst = tmp_path / ODD_NAME
    shutil.copytree(src, dst)
    return dst


def test_metrics_rows_whose_step_is_not_a_number_are_dropped_with_a_warning(finished, tmp_path, cfg):
    run = copy_run(finished, tmp_path)
    with (run / "metrics.jsonl").open("a") as f:
        for row in ({"step": None, "loss": 1.0}, {"step": "3", "loss": 1.0}, [1, 2], {"loss": 2.0}):
            f.write(json.dumps(row) + "\n")
    result = invoke(train_args(cfg, run, 3))
    assert "warning:" in result.stderr and "dropped 4 row(s)" in result.stderr and "[/]" in result.stderr
    assert [r["step"] for r in RunDir(run).read_metrics()] == [1, 2, 3]


def test_a_binary_groups_file_is_one_line(tmp_path):
    groups = tmp_path / "groups.txt"
    groups.write_bytes(b'{"cate": "0", "files": ["a"]}\n\x89PNG\r\n\x1a\n\xff\xfe')
    with pytest.raises(TransDiffError, match="line 2: not text"):
        read_groups(groups, 1)
    ck = tiny_checkpoint(tmp_path / "ck")
    one_error(["finetune-mrar", "--from", ck, "--data", "digits", "--groups", groups, "--mrar-rounds", 1,
               "--run-dir", tmp_path / "run", "--device", "cpu"], "groups.txt line 2", "not text")


def test_full_disk_while_saving_then_rerun_resumes_from_the_last_good_checkpoint(finished, tmp_path, cfg,
                                                                                 monkeypatch):
    run = copy_run(finished, tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_mod, "save_file", full)
    one_error(train_args(cfg, run, 4), "no space left", "step_0000004", "[/]", after_progress=True)
    monkeypatch.undo()
    assert resolve(run).name == "step_0000002" and load_checkpoint(run).config.width == 32
    result = invoke(train_args(cfg, run, 4))  # space freed: the same command
    assert "from step 2" in result.stderr
    assert resolve(run).name == "step_0000004"
    assert [r["step"] for r in RunDir(run).read_metrics()] == [1, 2, 3, 4]


def test_evaluation_missed_by_a_kill_after_its_checkpoint_is_made_up_on_resume(finished, tmp_path, cfg):
    # a run killed right after checkpoint 2, before its evaluation, leaves exactly this folder:
    # the checkpoint of step 2 and metrics up to step 2 without an FID row
    run = copy_run(finished, tmp_path)
    eval_flags = ["--eval-every", 2, "--eval-images", 2, "--eval-ref", "digits", "--eval-features", "digits"]
    invoke(train_args(cfg, run, 4, *eval_flags))
    assert [r["step"] for r in RunDir(run).read_metrics() if "fid" in r] == [2, 4]
    assert (run / "fid.png").stat().st_size > 0


def test_sweep_and_fuse_plots_draw_any_name(tmp_path):
    from transdiff_cli.core.eval.sweep import plot_sweep
    from transdiff_cli.core.plot_text import drawable

    for names in (["em\udcff", "b"], ["$\\frac{$", "b"]):  # a surrogate; mathtext that does not parse
        rows = [{"cfg": c, "sampler": s, "fid": 1.0 + c} for c in (1.0, 2.0) for s in names]
        assert plot_sweep(tmp_path / "sweep.png", ["cfg", "sampler"], rows, "fid").stat().st_size > 0
    assert drawable("a\udcffb$") == "a\ufffdb\\$"


@pytest.mark.parametrize("field,value", [("model", [1, 2]), ("train", "fast"), ("parent", 5)])
def test_a_run_config_of_the_wrong_shape_is_one_line_naming_file_and_field(finished, tmp_path, cfg, field, value):
    run = copy_run(finished, tmp_path)
    doc = yaml.safe_load((run / "config.yaml").read_text())
    doc[field] = value
    (run / "config.yaml").write_text(yaml.safe_dump(doc))
    one_error(train_args(cfg, run, 3), "config.yaml", f"field `{field}`")
