"""Resumable shards are checked by content: a shard of another job (another seed), one copied over
another index, another seed's parts folder whose identity.json was deleted are refused by name and
never merged; a truncated shard is drawn again; a torn identity record does not block the rerun; a
full disk while a shard is written is one line and the rerun resumes. The same for encode-latents."""

import errno
import json
import shutil

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from conftest import make_tiny
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core import shards as shards_mod
from transdiff_cli.core.data.training_data import LatentDataset
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.fs import LOCK, FolderLock
from transdiff_cli.core.sampling import generate_npz
from transdiff_cli.core.sampling.inference import open_checkpoint, open_tokenizer
from transdiff_cli.core.sampling.settings import checkpoint_settings

runner = CliRunner()
LABELS = [0, 0, 1, 1]  # batches of 2, shards of 2: two shards


def one_line_error(args, *needles):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


class Job:
    """The tiny checkpoint opened once; `identity(seed)` and `draw(parts, seed)` of one shard job."""

    def __init__(self, root):
        self.path = make_tiny(root / "ck")
        self.ck = open_checkpoint(self.path, device=torch.device("cpu"), precision="fp32")
        self.tok = open_tokenizer(self.ck, None, torch.device("cpu"))
        self.settings = checkpoint_settings(self.ck)

    def identity(self, seed=0):
        return generate_npz.generation_identity(
            self.ck, weights="ema", settings=self.settings, seed=seed, labels=LABELS, batch_size=2, shard_size=2,
            tokenizer=self.tok, precision="fp32", compile=False, device=torch.device("cpu"))

    def draw(self, parts, seed=0):
        generate_npz.generate_shards(self.ck.model, self.tok, LABELS, self.settings, parts, self.identity(seed),
                                     seed=seed, batch_size=2)

    def merged(self, parts, seed=0):
        return [images for _, images, _ in generate_npz.read_shards(parts, self.identity(seed), len(LABELS))]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    j = Job(root)
    j.seed0, j.seed1 = root / "seed0.parts", root / "seed1.parts"
    j.draw(j.seed0, 0)
    j.draw(j.seed1, 1)
    j.expected = j.merged(j.seed0, 0)
    return j


@pytest.fixture
def parts(job, tmp_path):
    p = tmp_path / "gen.parts"
    shutil.copytree(job.seed0, p)
    return p


def no_drawing(monkeypatch):
    drawn = []
    real = generate_npz._write_shard
    monkeypatch.setattr(generate_npz, "_write_shard", lambda *a, **k: (drawn.append(a[1]), real(*a, **k))[1])
    return drawn


def test_a_shard_of_another_seed_is_refused_by_name(job, parts, monkeypatch):
    shutil.copy(job.seed1 / "shard-00001.npz", parts / "shard-00001.npz")
    drawn = no_drawing(monkeypatch)
    for attempt in (lambda: job.draw(parts), lambda: job.merged(parts)):
        with pytest.raises(TransDiffError, match="shard-00001.npz was drawn by another job"):
            attempt()
    assert drawn == []


def test_a_shard_copied_over_another_index_is_refused(job, parts):
    shutil.copy(parts / "shard-00000.npz", parts / "shard-00001.npz")
    with pytest.raises(TransDiffError, match=r"shard-00001.npz holds shard 0"):
        job.draw(parts)


def test_another_seeds_parts_without_identity_record_are_refused(job, tmp_path):
    parts = tmp_path / "gen.parts"
    shutil.copytree(job.seed1, parts)
    (parts / "identity.json").unlink()
    with pytest.raises(TransDiffError, match="drawn by another job"):
        job.draw(parts, seed=0)


def test_a_truncated_shard_is_drawn_again_and_the_result_is_unchanged(job, parts, monkeypatch):
    data = (parts / "shard-00001.npz").read_bytes()
    (parts / "shard-00001.npz").write_bytes(data[: len(data) // 2])
    drawn = no_drawing(monkeypatch)
    job.draw(parts)
    assert drawn == [1]
    assert all(np.array_equal(a, b) for a, b in zip(job.merged(parts), job.expected, strict=True))


@pytest.mark.parametrize("record", ["", "{\"format\": ", "[1, 2]"])
def test_identity_record_torn_or_of_the_wrong_shape(job, parts, record):
    (parts / "identity.json").write_text(record)
    if record.startswith("["):  # not torn: not ours
        with pytest.raises(TransDiffError, match="not a shard identity"):
            job.draw(parts)
        return
    job.draw(parts)  # empty or torn (a full disk at the start): rewritten, the run goes on
    assert json.loads((parts / "identity.json").read_text()) == job.identity()
    shutil.rmtree(parts)
    parts.mkdir()
    (parts / "identity.json").write_text(record)
    generate_npz.shard_job(parts, job.identity()).start()  # with no shards at all
    assert json.loads((parts / "identity.json").read_text()) == job.identity()


def test_full_disk_while_writing_a_shard_is_one_line_and_the_rerun_resumes(job, tmp_path, monkeypatch):
    out, npz = tmp_path / "o", tmp_path / "all.npz"
    cmd = ["sample", "--ckpt", job.path, "--class", "0,1", "--num", 2, "--batch-size", 2, "--shard-size", 2,
           "--precision", "fp32", "--out", out, "--npz", npz]
    real = shards_mod.NpzCodec.save

    def full(self, path, arrays, meta):
        if meta["shard"] == "1":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, arrays, meta)

    monkeypatch.setattr(shards_mod.NpzCodec, "save", full)
    line = one_line_error(cmd, "shard-00001.npz", "no space left")
    parts = tmp_path / "all.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["identity.json", "shard-00000.npz"]  # last good state
    assert not out.exists() and not npz.exists(), line
    monkeypatch.setattr(shards_mod.NpzCodec, "save", real)
    drawn = no_drawing(monkeypatch)
    result = runner.invoke(app, [str(a) for a in cmd])
    assert result.exit_code == 0, result.output
    assert drawn == [1]  # shard 0 was kept
    with np.load(npz) as data:
        assert np.array_equal(data["arr_0"], np.concatenate(job.expected).repeat(3, axis=-1))


def test_a_truncated_finished_npz_is_one_line(job, tmp_path):
    npz = tmp_path / "generated.npz"
    npz.write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(TransDiffError, match="cannot be read"):
        generate_npz.check_existing(npz, job.identity())


# --------------------------------------------------------------------------- encode-latents
@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    out = tmp_path_factory.mktemp("lat") / "digits"
    result = runner.invoke(app, ["encode-latents", "--data", "digits", "--out", str(out), "--shard-size", "600",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_full_disk_while_encoding_is_one_line_and_the_rerun_resumes(latents, tmp_path, monkeypatch):
    out = tmp_path / "lat"
    cmd = ["encode-latents", "--data", "digits", "--out", out, "--shard-size", 600, "--quiet"]
    real = safetensors.torch.save_file

    def full(tensors, path, metadata=None):  # what safetensors raises on a full disk
        if metadata["shard"] == "1":
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device "
                                              "(os error 28)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    one_line_error(cmd, "shard-00001.safetensors", "no space left")
    assert json.loads((out / "manifest.json").read_text())["status"] == "incomplete"
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.json", "shard-00000.safetensors"]
    kept = (out / "shard-00000.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    result = runner.invoke(app, [str(a) for a in cmd])
    assert result.exit_code == 0, result.output
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == kept
    again, first = LatentDataset(out, flip=False), LatentDataset(latents, flip=False)
    assert again.indices == first.indices == list(range(1797))
    assert torch.equal(again.moments, first.moments) and torch.equal(again.moments_flip, first.moments_flip)


def test_a_latent_shard_copied_over_another_index_is_refused(latents, tmp_path):
    out = tmp_path / "lat"
    shutil.copytree(latents, out)
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**m, "status": "incomplete"}))  # as a killed run leaves it
    for suffix in (".safetensors", ".json"):
        shutil.copy(out / f"shard-00000{suffix}", out / f"shard-00001{suffix}")
    one_line_error(["encode-latents", "--data", "digits", "--out", out, "--quiet"], "shard-00001.safetensors",
                   "holds shard 0")


@pytest.mark.parametrize("field, value", [("shards", None), ("shards", [{"file": 3}]), ("num_images", "many")])
def test_manifest_fields_of_the_wrong_type_are_one_line(latents, tmp_path, field, value):
    out = tmp_path / "lat"
    shutil.copytree(latents, out)
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**m, field: value}))
    with pytest.raises(TransDiffError, match=rf"manifest.json: field `{field}"):
        LatentDataset(out)


def test_the_lock_never_appears_empty(tmp_path, monkeypatch):
    """A starter killed while filling in the lock leaves no lock at all (the name appears with its
    contents in one step), so nobody reads an empty lock and takes it as stale."""
    real = type(tmp_path).write_text

    def killed(self, *a, **k):
        if LOCK in self.name:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(type(tmp_path), "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        FolderLock(tmp_path, "`out`").acquire()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with FolderLock(tmp_path, "`out`"):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] > 0
        assert [p.name for p in tmp_path.iterdir()] == [LOCK]
