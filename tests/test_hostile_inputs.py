"""A hostile user's probes are refused cleanly. Second writers are refused, interrupted commits leave a
loadable checkpoint, reruns never mix outputs, and bad numbers, paths and files give one line."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_checkpoint
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.data.classes import resolve_classes
from transdiff_cli.core.data.training_data import open_training_data
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.fs import LOCK, FolderLock
from transdiff_cli.core.io import checkpoint as checkpoint_mod
from transdiff_cli.core.io.checkpoint import load_checkpoint, recover, resolve
from transdiff_cli.core.sampling import memory as sampling_memory
from transdiff_cli.core.sampling import outputs as outputs_mod
from transdiff_cli.core.sampling.seeding import image_seed
from transdiff_cli.core.training.run_dir import RunDir

runner = CliRunner()
TINY = {"model": {"width": 32, "heads": 2, "encoder_depth": 1, "decoder_depth": 1, "buffer_size": 4}}


def invoke(args):
    return runner.invoke(app, [str(a) for a in args])


def fails(args, *needles, code=2, after_progress=False):
    """Exit `code`, exactly one non-empty stderr line starting with 'error:', holding each needle
    (`after_progress`: the error is the last line, after what a run reported while it went)."""
    result = invoke(args)
    assert result.exit_code == code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    if after_progress:
        assert "Traceback" not in result.stderr and sum(ln.startswith("error:") for ln in lines) == 1
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def ok(args):
    result = invoke(args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "ck")


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def train_args(tiny_yaml, run, steps, *extra):
    return ["train", "--config", tiny_yaml, "--run-dir", run, "--max-steps", steps, "--batch-size", 16,
            "--log-every", 1, "--ckpt-every", 2, "--no-progress", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_yaml):
    """A run trained to step 2 (checkpoint step_0000002); tests copy it before changing it."""
    run = tmp_path_factory.mktemp("runs") / "run"
    ok(train_args(tiny_yaml, run, 2))
    return run


def copy_run(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def read_only_under(monkeypatch, root, err=errno.EROFS):
    """Every os.open / mkdir below `root` fails as on a read-only mount (root ignores chmod)."""
    root = str(Path(root).absolute())
    real_open, real_mkdir = os.open, os.mkdir

    def guarded_open(path, *a, **k):
        if str(Path(path).absolute()).startswith(root):
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, *a, **k)

    def guarded_mkdir(path, *a, **k):
        if os.path.exists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        if str(Path(path).absolute()).startswith(root):
            raise OSError(err, os.strerror(err), str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


# --------------------------------------------------------------------------- 1. locks
def test_folder_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path):
    with FolderLock(tmp_path, "--run-dir"):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
        with pytest.raises(TransDiffError, match="in use by process"):
            FolderLock(tmp_path, "--run-dir").acquire()
    assert not (tmp_path / LOCK).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / LOCK).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    with FolderLock(tmp_path, "--run-dir"):  # the holder is gone: the lock is stale
        pass


def test_second_train_and_encode_on_one_folder_are_refused(tmp_path, tiny_yaml):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname()}
        run = tmp_path / "run"
        run.mkdir()
        (run / LOCK).write_text(json.dumps(lock))
        fails(train_args(tiny_yaml, run, 2), "in use by process", str(holder.pid))
        assert not (run / "config.yaml").exists()
        out = tmp_path / "lat"
        out.mkdir()
        (out / LOCK).write_text(json.dumps(lock))
        fails(["encode-latents", "--data", "digits", "--out", out, "--quiet"], "in use by process")
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- 2. commits
class Killed(BaseException):
    pass


def kill_at_second_rename(monkeypatch):
    real = os.replace
    calls = []

    def replace(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise Killed
        return real(a, b)

    monkeypatch.setattr(checkpoint_mod.os, "replace", replace)


def test_commit_killed_between_renames_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = tiny_checkpoint(run / "checkpoints" / "step_0000002")
    (run / "checkpoints" / "LATEST").write_text("step_0000002\n")
    kill_at_second_rename(monkeypatch)
    with pytest.raises(Killed):
        tiny_checkpoint(first)
    monkeypatch.undo()
    assert not first.exists()  # the kill left only the hidden `.old` copy
    found = resolve(run)
    assert found.name.startswith(".step_0000002.old-")
    assert load_checkpoint(run).config.width == 32
    ok(["sample", "--ckpt", run, "--class", 1, "--num", 1, "--out", tmp_path / "s"])
    recover(run / "checkpoints")
    assert resolve(run) == first and not list((run / "checkpoints").glob(".*"))


def test_rerun_of_a_finished_run_does_not_resave_and_cleans_leftovers(finished_run, tmp_path, tiny_yaml):
    run = copy_run(finished_run, tmp_path)
    step = run / "checkpoints" / "step_0000002"
    leftover = run / "checkpoints" / ".step_0000002.old-deadbeef"
    shutil.copytree(step, leftover)
    before = {p.name: p.stat().st_mtime_ns for p in step.iterdir()}
    ino = step.stat().st_ino
    ok(train_args(tiny_yaml, run, 2))
    assert step.stat().st_ino == ino and {p.name: p.stat().st_mtime_ns for p in step.iterdir()} == before
    assert not leftover.exists()


def test_full_disk_during_checkpoint_save_is_one_line(finished_run, tmp_path, tiny_yaml, monkeypatch):
    run = copy_run(finished_run, tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_mod, "save_file", full)
    fails(train_args(tiny_yaml, run, 3), "no space left", "step_0000003", after_progress=True)
    monkeypatch.undo()
    assert resolve(run).name == "step_0000002" and load_checkpoint(run).config.width == 32
    assert not list((run / "checkpoints").glob(".*")) and not (run / LOCK).exists()


# --------------------------------------------------------------------------- 3. memory
def test_a_batch_that_cannot_fit_is_refused_with_a_suggestion(ck, tmp_path, monkeypatch):
    monkeypatch.setattr(sampling_memory, "available_memory", lambda device: 4 << 20)
    out = tmp_path / "s"
    msg = fails(["sample", "--ckpt", ck, "--class", 1, "--num", 5000, "--batch-size", 5000, "--out", out],
                "--batch-size 5000", "available", "try --batch-size")
    fits = int(msg.rsplit("--batch-size", 1)[1].split()[0])
    assert 1 <= fits < 5000 and not out.exists()
    monkeypatch.setattr(sampling_memory, "available_memory", lambda device: 64 << 30)
    ok(["sample", "--ckpt", ck, "--class", 1, "--num", 3, "--batch-size", 2, "--out", out])


# --------------------------------------------------------------------------- 4. numbers
@pytest.mark.parametrize("flag,value", [("--cfg", "nan"), ("--cfg", "inf"), ("--cfg", "1e308"), ("--cfg", "-1"),
                                        ("--scale-0", "nan"), ("--scale-1", "inf"), ("--scale-0", "-0.5"),
                                        ("--scale-1", "-1")])
def test_non_finite_or_negative_scales_are_refused(ck, tmp_path, flag, value):
    fails(["sample", "--ckpt", ck, "--class", 1, "--num", 1, flag, value, "--out", tmp_path / "s"], flag)
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- 5. metrics
def test_torn_metrics_line_is_dropped_on_resume(finished_run, tmp_path, tiny_yaml):
    run = copy_run(finished_run, tmp_path)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 0.5, "gra')
    ok(train_args(tiny_yaml, run, 3))
    assert [r["step"] for r in RunDir(run).read_metrics()] == [1, 2, 3]


def test_resume_from_a_checkpoint_with_damaged_weights_is_one_line(finished_run, tmp_path, tiny_yaml):
    from safetensors.torch import load_file, save_file

    run = copy_run(finished_run, tmp_path)
    weights = resolve(run) / "model.safetensors"
    state = load_file(str(weights))
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, str(weights))
    fails(train_args(tiny_yaml, run, 3), "does not fit the model config", dropped)


def test_run_killed_before_its_first_checkpoint_does_not_log_twice(tmp_path, tiny_yaml):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 1.0} for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ok(train_args(tiny_yaml, run, 2))
    assert [r["step"] for r in RunDir(run).read_metrics()] == [1, 2]


# --------------------------------------------------------------------------- 6. I/O errors
def test_output_paths_that_are_files_are_one_line(ck, tmp_path, tiny_yaml):
    f = tmp_path / "file"
    f.write_text("mine")
    fails(["sample", "--ckpt", ck, "--class", 1, "--num", 1, "--out", f], str(f), "is a file")
    fails(["sample", "--ckpt", ck, "--class", 1, "--num", 1, "--out", tmp_path / "s", "--npz", tmp_path],
          "--npz", "is a folder")
    fails(["sample", "--ckpt", ck, "--class", 1, "--num", 1, "--out", tmp_path / "s", "--npz", f / "x.npz"],
          "--npz", "not a folder")
    fails(train_args(tiny_yaml, f, 2), str(f), "is a file")
    fails(["encode-latents", "--data", "digits", "--out", f, "--quiet"], str(f), "is a file")
    assert f.read_text() == "mine"


def test_fid_checks_its_output_before_generating(ck, tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("mine")
    from transdiff_cli.commands import fid as fid_cmd

    monkeypatch.setattr(fid_cmd, "evaluate", lambda *a, **k: pytest.fail("generated before checking --out"))
    fails(["fid", "--ckpt", ck, "--ref", "digits", "--features", "digits", "--out", f], str(f), "is a file")


def test_read_only_outputs_are_one_line(ck, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only_under(monkeypatch, ro)
    fails(["sample", "--ckpt", ck, "--class", 1, "--num", 1, "--out", ro / "s"], "read-only", str(ro))
    fails(["sample", "--ckpt", ck, "--class", 1, "--num", 1, "--out", tmp_path / "s", "--npz", ro / "a.npz"],
          "--npz", "read-only")
    fails(["encode-latents", "--data", "digits", "--out", ro / "lat", "--quiet"], "read-only", "--out")
    assert not list(ro.iterdir())


# --------------------------------------------------------------------------- 7. numeric class names
def test_numeric_class_names_say_which_reading_was_taken(tmp_path):
    names = ["-rf", "1", "10", "2"]
    notes: list[str] = []
    assert resolve_classes(["10"], 4, names, warnings=notes) == [2]
    assert "named '10'" in notes[0] and "no index 10" in notes[0]
    notes.clear()
    assert resolve_classes(["2"], 4, names, warnings=notes) == [2]
    assert "name:2" in notes[0] and "index:2" in notes[0]
    notes.clear()
    assert resolve_classes(["name:2", "index:2", "1", "name:-rf"], 4, names, warnings=notes) == [3, 2, 1, 0]
    assert notes == []  # explicit forms, and "1" means index 1 either way
    ckpt = tiny_checkpoint(tmp_path / "ck", num_classes=4, class_names=names)
    result = ok(["sample", "--ckpt", ckpt, "--class", 2, "--num", 1, "--out", tmp_path / "s"])
    assert "name:2" in result.stderr
    with pytest.raises(TransDiffError, match="out of range"):
        resolve_classes(["index:10"], 4, names)


# --------------------------------------------------------------------------- 8. seeds
def test_seeds_outside_the_range_are_refused_and_large_seeds_count(ck, tmp_path, tiny_yaml):
    for seed in (-1, 2**70):
        fails(["sample", "--ckpt", ck, "--class", 1, "--num", 1, "--seed", seed, "--out", tmp_path / "s"],
              "--seed", "2**63-1")
        fails(train_args(tiny_yaml, tmp_path / "run", 2, "--seed", seed), "--seed")
    assert len({image_seed(s, 0) for s in (0, 2**32, 2**33, 2**63 - 1)}) == 4
    assert image_seed(7, 3) == image_seed(7, 3) != image_seed(7, 3, 1)
    # seeds that always worked keep their images: the high word only joins above 2**32
    assert image_seed(5, 9) == int(np.random.SeedSequence([5, 9]).generate_state(2, np.uint64)[0] >> 1)


# --------------------------------------------------------------------------- 9. lying manifests
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("lat") / "digits"
    ok(["encode-latents", "--data", "digits", "--out", out, "--shard-size", 500, "--quiet"])
    return out


@pytest.mark.parametrize("lie", ["cut_shards", "short_class_names", "cut_and_renumbered"])
def test_lying_manifest_is_caught_when_the_data_is_opened(cache, tmp_path, lie):
    lat = tmp_path / "lat"
    shutil.copytree(cache, lat)
    m = json.loads((lat / "manifest.json").read_text())
    if lie == "cut_shards":
        m["shards"] = m["shards"][:1]
    elif lie == "short_class_names":
        m["class_names"] = m["class_names"][:3]
    else:  # a careful liar fixes every count but the shards still cover fewer images
        m["shards"] = m["shards"][:1]
        m["num_shards"], m["num_encoded"] = 1, m["shards"][0]["count"]
    (lat / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TransDiffError, match="manifest"):
        open_training_data(str(lat))


# --------------------------------------------------------------------------- 10. output folders
def test_sample_rerun_never_mixes_old_and_new_outputs(ck, tmp_path, monkeypatch):
    out = tmp_path / "s"
    ok(["sample", "--ckpt", ck, "--class", "1,2", "--num", 3, "--out", out])
    assert len(list(out.glob("*.png"))) == 7  # 6 images + grid
    ok(["sample", "--ckpt", ck, "--class", 1, "--num", 1, "--out", out])
    listed = [i["file"] for i in json.loads((out / "samples.json").read_text())["images"]]
    assert sorted(p.name for p in out.glob("*_class*.png")) == listed == ["00000_class1.png"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []
    real = outputs_mod.save_pngs

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(outputs_mod, "save_pngs", dies)
    result = invoke(["sample", "--ckpt", ck, "--class", 3, "--num", 4, "--batch-size", 2, "--out", out])
    assert result.exit_code == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no staging folder left


def test_sample_refuses_a_foreign_folder_unless_overwrite(ck, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    fails(["sample", "--ckpt", ck, "--class", 1, "--num", 1, "--out", out], "not empty", "--overwrite")
    assert (out / "notes.txt").read_text() == "mine"
    ok(["sample", "--ckpt", ck, "--class", 1, "--num", 1, "--out", out, "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["00000_class1.png", "grid.png", "samples.json"]
    assert "--overwrite" in invoke(["sample", "--help"]).output


# --------------------------------------------------------------------------- 11. smaller items
def test_bad_run_config_yaml_is_one_line(finished_run, tmp_path, tiny_yaml):
    run = copy_run(finished_run, tmp_path)
    (run / "config.yaml").write_text("model: !!python/object/apply:os.system ['echo PWNED']\n")
    fails(train_args(tiny_yaml, run, 3), "config.yaml", "not a valid run config")


def test_class_names_are_not_read_as_markup(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ck", num_classes=2, class_names=["[bold red]loud", "[/]"])
    result = ok(["sample", "--ckpt", ckpt, "--class", "0,1", "--num", 1, "--out", tmp_path / "s"])
    assert "[bold red]loud" in result.stderr and "[/]" in result.stderr


def test_sampling_progress_shows_elapsed_time_and_rate():
    from rich.progress import TimeElapsedColumn

    from transdiff_cli.commands._common import _Rate, progress_bar

    bar = progress_bar()
    kinds = {type(c) for c in bar.columns}
    assert TimeElapsedColumn in kinds and _Rate in kinds


def test_pickle_payload_is_refused_as_not_allowed(tmp_path):
    payload = tmp_path / "evil.pth"
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(str(marker))}, payload)
    msg = fails(["sample", "--ckpt", payload, "--class", 1], "evil.pth", "not allowed", "not loaded")
    assert "truncated" not in msg and not marker.exists()


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))

