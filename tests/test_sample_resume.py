"""`sample --npz` generates through resumable shards: a killed run leaves the old `--out` as it was and
its finished shards in place; the rerun continues and writes exactly the files of an uninterrupted
run; shards of other settings are refused; a finished run is not redone."""

import json

import numpy as np
import pytest
from conftest import invoke, run_cli

from transdiff_cli.core.sampling import generate_npz


def one_line_error(args, *needles):
    result = run_cli(args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def npz_arrays(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def kill_at_shard(monkeypatch, k):
    """`_write_shard` raises KeyboardInterrupt (a kill between shards) before writing shard `k`;
    returns the list of shards written."""
    written = []
    real = generate_npz._write_shard

    def write(*a, **kw):
        if a[1] == k:
            raise KeyboardInterrupt
        written.append(a[1])
        return real(*a, **kw)

    monkeypatch.setattr(generate_npz, "_write_shard", write)
    return written


def test_killed_sample_npz_resumes_to_the_uninterrupted_files(tiny, tmp_path, monkeypatch):
    # 8 images in batches of 2, shards of 4: two shards; the .npz inside --out
    job = ["sample", "--ckpt", tiny["one"], "--class", "0,1", "--num", 4, "--batch-size", 2, "--shard-size", 4,
           "--sampling-steps", 1]
    straight = tmp_path / "straight"
    invoke([*job, "--out", straight, "--npz", straight / "all.npz"])
    assert not (tmp_path / "straight.parts").exists()
    plain = tmp_path / "plain"  # the same images without --npz
    invoke([*job, "--out", plain])

    out = tmp_path / "resumed"
    invoke(["sample", "--ckpt", tiny["one"], "--class", 5, "--num", 1, "--out", out])  # an earlier output
    before = files(out)
    written = kill_at_shard(monkeypatch, 1)
    result = run_cli([*job, "--out", out, "--npz", out / "all.npz"])
    assert result.exit_code == 130 and written == [0]
    assert "resumed.parts" in result.output.replace("\n", "")  # where the shards are kept
    assert files(out) == before  # the old --out untouched
    parts = tmp_path / "resumed.parts"  # beside --out, not inside it
    assert sorted(p.name for p in parts.glob("shard-*")) == ["shard-00000.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "resumed", "resumed.parts", "straight"]

    monkeypatch.undo()
    drawn, progress = [], []
    real_write, real_shards = generate_npz._write_shard, generate_npz.generate_shards
    monkeypatch.setattr(generate_npz, "_write_shard", lambda *a, **k: (drawn.append(a[1]), real_write(*a, **k))[1])

    def shards(*a, on_batch=None, **k):
        return real_shards(*a, on_batch=lambda n: (progress.append(n), on_batch(n)), **k)

    monkeypatch.setattr(generate_npz, "generate_shards", shards)
    invoke([*job, "--out", out, "--npz", out / "all.npz"])
    assert drawn == [1] and progress == [4, 2, 2]  # the finished shard counts at once
    assert not parts.exists()
    assert files(out) == files(straight)  # PNGs, grid, samples.json byte for byte
    got, want = npz_arrays(out / "all.npz"), npz_arrays(straight / "all.npz")
    assert got.keys() == want.keys() == {"arr_0", "labels", "identity"}
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert got["labels"].tolist() == [0] * 4 + [1] * 4
    pngs = {k: v for k, v in files(plain).items() if k.endswith(".png")}
    assert pngs and all(files(out)[k] == v for k, v in pngs.items())  # as without --npz
    assert json.loads((out / "samples.json").read_text())["identity"]["shard_size"] == 4

    # a rerun of the finished command finds everything in place and draws nothing
    monkeypatch.setattr(generate_npz, "generate", lambda *a, **k: pytest.fail("generated again"))
    done = files(out)
    assert "nothing to do" in invoke([*job, "--out", out, "--npz", out / "all.npz"]).output
    assert files(out) == done
    (out / "00003_class0.png").unlink()  # an output gone: the run is redone
    monkeypatch.undo()
    invoke([*job, "--out", out, "--npz", out / "all.npz"])
    assert files(out).keys() == done.keys() and not parts.exists()


def test_shards_of_other_settings_are_refused(tiny, tmp_path, monkeypatch):
    job = ["sample", "--ckpt", tiny["one"], "--class", "0,1", "--num", 2, "--batch-size", 2, "--shard-size", 2,
           "--sampling-steps", 1]
    out, npz = tmp_path / "s", tmp_path / "x.npz"
    kill_at_shard(monkeypatch, 1)
    assert run_cli([*job, "--out", out, "--npz", npz]).exit_code == 130
    parts = tmp_path / "x.parts"  # beside the .npz, as `fid` keeps them
    kept = files(parts)
    assert "shard-00000.npz" in kept and not out.exists()
    one_line_error([*job, "--out", out, "--npz", npz, "--cfg", 3], "x.parts", "another job", "cfg")
    one_line_error([*job, "--out", out, "--npz", npz, "--seed", 7], "another job", "seed: 0 there, 7 now")
    other_classes = [*job[:3], "--class", "0,3", *job[5:]]
    one_line_error([*other_classes, "--out", out, "--npz", npz], "another job", "labels_sha256")
    assert files(parts) == kept and not out.exists()  # nothing mixed in, nothing removed
    one_line_error([*job, "--out", tmp_path / "x.parts" / "o", "--npz", npz], "inside", "x.parts")


def test_save_rounds_strips_survive_a_resume(tiny, tmp_path, monkeypatch):
    job = ["sample", "--ckpt", tiny["mrar"], "--rounds", 2, "--class", "3,4", "--num", 1, "--batch-size", 1,
           "--shard-size", 1, "--sampling-steps", 1, "--save-rounds"]
    invoke([*job, "--out", tmp_path / "plain"])
    invoke([*job, "--out", tmp_path / "straight", "--npz", tmp_path / "straight.npz"])
    kill_at_shard(monkeypatch, 1)
    assert run_cli([*job, "--out", tmp_path / "r", "--npz", tmp_path / "r.npz"]).exit_code == 130
    with np.load(tmp_path / "r.parts" / "shard-00000.npz") as shard:  # every round's images, uint8
        assert shard["rounds"].shape == (1, 2, 8, 8, 1) and shard["rounds"].dtype == np.uint8
    # the same job without --save-rounds is another job: its shards would lack the rounds
    one_line_error([*job[:-1], "--out", tmp_path / "r", "--npz", tmp_path / "r.npz"], "save_steps")
    monkeypatch.undo()
    invoke([*job, "--out", tmp_path / "r", "--npz", tmp_path / "r.npz"])
    resumed, straight, plain = files(tmp_path / "r"), files(tmp_path / "straight"), files(tmp_path / "plain")
    strips = [k for k in resumed if k.startswith("rounds/")]
    assert len(strips) == 2 and all(resumed[k] == straight[k] == plain[k] for k in strips)
    assert resumed == straight
    assert np.array_equal(npz_arrays(tmp_path / "r.npz")["arr_0"], npz_arrays(tmp_path / "straight.npz")["arr_0"])


def test_dry_run_names_the_shards_folder(tiny, tmp_path):
    def outputs(*extra):
        result = invoke(["sample", "--ckpt", tiny["one"], "--class", 1, "--dry-run", "--out", tmp_path / "o", *extra])
        return json.loads(result.stdout)["outputs"]

    assert outputs()["shards"] is None
    assert outputs("--npz", tmp_path / "o" / "a.npz")["shards"] == str(tmp_path / "o.parts")
    assert outputs("--npz", tmp_path / "b.npz")["shards"] == str(tmp_path / "b.parts")
    assert not any(tmp_path.iterdir())
