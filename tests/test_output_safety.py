"""`sample` never loses a file it did not write: --npz refuses a foreign file, --out keeps (refuses
over) a user's files even beside a samples.json, --npz cannot name one of --out's own files, every
output path is checked before the checkpoint is opened, a symlinked --out is written through, a
swap killed between its renames is rolled back, and a full disk leaves the old outputs."""

import errno
import json
import os

import numpy as np
import pytest
from conftest import invoke, make_tiny, run_cli

from transdiff_cli.commands import sample as sample_cmd
from transdiff_cli.core import fs as fs_mod
from transdiff_cli.core.sampling import generate as generate_mod
from transdiff_cli.core.sampling import outputs as outputs_mod


def one_line_error(args, *needles):
    result = run_cli(args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "ck")


@pytest.fixture(scope="module")
def earlier(ck, tmp_path_factory):
    """A folder an earlier `sample` wrote (2 images, grid, samples.json)."""
    out = tmp_path_factory.mktemp("earlier") / "s"
    invoke(["sample", "--ckpt", ck, "--class", "1,2", "--num", 1, "--precision", "fp32", "--out", out])
    return files(out)


def fill(folder, contents):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def never_opened(monkeypatch):
    monkeypatch.setattr(sample_cmd, "open_checkpoint", lambda *a, **k: pytest.fail("opened before checking outputs"))


def test_npz_refuses_a_file_it_did_not_write(ck, tmp_path, monkeypatch):
    ref = tmp_path / "VIRTUAL_ref.npz"
    np.savez(ref, mu=np.zeros(3))
    before = ref.read_bytes()
    with monkeypatch.context() as m:
        never_opened(m)
        one_line_error(["sample", "--ckpt", ck, "--class", 1, "--num", 2, "--out", tmp_path / "clob", "--npz", ref],
                       "VIRTUAL_ref.npz", "--overwrite")
    assert ref.read_bytes() == before and not (tmp_path / "clob").exists()
    invoke(["sample", "--ckpt", ck, "--class", 1, "--num", 2, "--out", tmp_path / "clob", "--npz", ref, "--overwrite"])
    with np.load(ref) as data:
        assert data["arr_0"].shape[0] == 2


@pytest.mark.parametrize("case", ["foreign samples.json", "file added to a sample folder"])
def test_out_never_loses_a_users_file(ck, earlier, tmp_path, monkeypatch, case):
    out = tmp_path / "proj"
    if case == "foreign samples.json":
        fill(out, {"samples.json": b"{}", "paper.tex": b"x"})
    else:
        fill(out, {**earlier, "notes/paper.tex": b"x"})
    before = files(out)
    never_opened(monkeypatch)
    one_line_error(["sample", "--ckpt", ck, "--class", 3, "--num", 1, "--out", out], "paper.tex", "--overwrite")
    assert files(out) == before


@pytest.mark.parametrize("inside", ["samples.json", "grid.png", "00000_class1.png", "rounds/x.npz"])
def test_npz_cannot_be_one_of_outs_own_files(ck, earlier, tmp_path, monkeypatch, inside):
    out = fill(tmp_path / "o", earlier)
    never_opened(monkeypatch)
    one_line_error(["sample", "--ckpt", ck, "--class", 1, "--num", 1, "--out", out, "--npz", out / inside],
                   "one of the files")
    assert files(out) == earlier


def test_a_sample_folder_is_still_replaced_with_its_npz_inside(ck, tmp_path):
    out = tmp_path / "o"
    job = ["sample", "--ckpt", ck, "--class", 1, "--num", 1, "--precision", "fp32", "--out", out]
    invoke([*job, "--npz", out / "all.npz"])
    invoke([*job, "--seed", 1, "--npz", out / "all.npz"])  # the earlier .npz inside is ours: replaced
    invoke([*job, "--seed", 2])  # ... and so is the folder holding it
    assert sorted(files(out)) == ["00000_class1.png", "grid.png", "samples.json"]


def test_symlinked_out_is_written_through(ck, earlier, tmp_path):
    target = fill(tmp_path / "real", earlier)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    invoke(["sample", "--ckpt", ck, "--class", 3, "--num", 1, "--precision", "fp32", "--out", link])
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert sorted(files(target)) == ["00000_class3.png", "grid.png", "samples.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no .real.old-* or staging left
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    one_line_error(["sample", "--ckpt", ck, "--class", 3, "--num", 1, "--out", tmp_path / "dangling"],
                   "does not exist")


def test_a_swap_killed_between_its_renames_is_rolled_back(ck, earlier, tmp_path, monkeypatch):
    out = fill(tmp_path / "s", earlier)
    monkeypatch.setattr(fs_mod, "_exchange", lambda a, b: False)  # the two-rename path
    real, calls = os.replace, []

    def killed_at_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(outputs_mod.os, "replace", killed_at_second)
    assert run_cli(["sample", "--ckpt", ck, "--class", 3, "--num", 1, "--out", out]).exit_code == 130
    assert not out.exists()  # the kill landed between the renames
    monkeypatch.setattr(outputs_mod.os, "replace", real)
    one_line_error(["sample", "--ckpt", ck, "--class", 999, "--num", 1, "--out", out], "999")
    assert files(out) == earlier  # the next run, even a failing one, put the old outputs back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_full_disk_while_writing_pngs_keeps_the_old_outputs(ck, earlier, tmp_path, monkeypatch):
    out = fill(tmp_path / "s", earlier)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs_mod, "save_pngs", full)
    one_line_error(["sample", "--ckpt", ck, "--class", 3, "--num", 1, "--out", out], str(out), "no space left")
    assert files(out) == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_a_huge_num_is_refused_before_anything_is_built(ck, tmp_path):
    one_line_error(["sample", "--ckpt", ck, "--class", "0,1", "--num", 10**12, "--out", tmp_path / "o"],
                   f"{generate_mod.MAX_IMAGES:,}")
    assert not (tmp_path / "o").exists()


def test_samples_json_lists_what_a_rerun_may_replace(ck, earlier, tmp_path):
    doc = json.loads(earlier["samples.json"])
    assert outputs_mod.own_files(fill(tmp_path / "s", earlier)) >= {e["file"] for e in doc["images"]}


def test_a_shard_that_cannot_fit_in_memory_is_refused_before_drawing(ck, tmp_path):
    one_line_error(["sample", "--ckpt", ck, "--class", 1, "--num", 2, "--out", tmp_path / "o", "--npz",
                    tmp_path / "a.npz", "--shard-size", 10**15], "--shard-size", "try --shard-size")
    assert not (tmp_path / "o").exists() and not (tmp_path / "a.npz").exists()
