"""Datasets, `encode-latents` (CLI), the cached-latent datasets and `open_training_data`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.data.datasets import open_image_dataset
from transdiff_cli.core.data.latents import DELAY_ENV
from transdiff_cli.core.data.tokenizer_spec import load_tokenizer
from transdiff_cli.core.data.training_data import GroupedDataset, LatentDataset, open_training_data
from transdiff_cli.core.errors import TransDiffError

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def encode(*args: str):
    return runner.invoke(app, ["encode-latents", "--quiet", *args])


def shard_tensors(folder: Path, key: str) -> torch.Tensor:
    files = sorted(folder.glob("shard-*.safetensors"))
    return torch.cat([load_file(f)[key] for f in files])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "digits"
    result = encode("--data", "digits", "--vae", "pixels", "--out", str(out), "--shard-size", "500")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """Two ImageNet wnid classes of small RGB PNGs, plus a truncated PNG and a non-image .jpg."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for wnid in ("n01818515", "n02129604"):  # macaw, tiger
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(3):
            array = rng.integers(0, 256, size=(30 + 4 * i, 40, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / "train" / wnid / f"img{i}.png")
    good = (root / "train" / "n01818515" / "img0.png").read_bytes()
    (root / "train" / "n01818515" / "broken.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "n02129604" / "notes.jpg").write_text("not an image")
    return root


# -- datasets ------------------------------------------------------------------------------------


def test_digits_dataset() -> None:
    ds = open_image_dataset("digits")
    image, label = ds[0]
    assert len(ds) == 1797 and ds.image_size == 8 and ds.image_channels == 1
    assert image.shape == (1, 8, 8) and image.min() >= -1 and image.max() <= 1 and image.min() == -1
    assert ds.class_names == [str(i) for i in range(10)] and label == ds.targets[0] == 0
    assert not ds.flip  # a mirrored digit is not a digit
    assert open_image_dataset("digits", image_size=16).load(5).shape == (1, 16, 16)


def test_shapes_dataset_is_deterministic_and_named() -> None:
    a, b = open_image_dataset("shapes"), open_image_dataset("shapes")
    assert "red-circle" in a.class_names and "blue-square" in a.class_names and len(a.class_names) >= 9
    assert torch.equal(a.load(17), b.load(17)) and not torch.equal(a.load(17), a.load(18))
    assert a.load(0).shape == (3, 16, 16) and len(a) >= 100 * len(a.class_names)
    # the colour is visible: a red shape's brightest pixel is red-dominant
    red = a.load(a.targets.index(a.class_names.index("red-square")))
    r, g, bl = red.flatten(1).max(dim=1).values
    assert r > g and r > bl


def test_image_folder_dataset(image_folder: Path) -> None:
    ds = open_image_dataset(str(image_folder), image_size=16)
    assert ds.class_names == ["macaw", "tiger"] and len(ds) == 8  # broken files are still listed
    assert ds.load(1).shape == (3, 16, 16)
    with pytest.warns(UserWarning, match="unreadable"):
        image, _ = ds[0]  # broken.png sorts first: training falls through to the next readable image
    assert image.shape == (3, 16, 16)


@pytest.mark.parametrize("data", ["no-such-dataset", "./missing/folder"])
def test_unknown_data_is_a_user_error(data: str) -> None:
    with pytest.raises(TransDiffError):
        open_image_dataset(data)


# -- encode-latents ------------------------------------------------------------------------------


def test_encode_digits_pixels_round_trip(digits_cache: Path) -> None:
    manifest = json.loads((digits_cache / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["num_encoded"] == 1797 and manifest["num_shards"] == 4
    assert manifest["tokenizer"]["kind"] == "pixels" and manifest["latent_shape"] == [1, 8, 8]
    assert manifest["class_names"] == [str(i) for i in range(10)] and manifest["skipped"] == []
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    images = open_image_dataset("digits")
    indices = shard_tensors(digits_cache, "indices")
    assert indices.tolist() == list(range(1797))
    expected = torch.stack([images.load(i) for i in range(1797)])
    tok = load_tokenizer(manifest["tokenizer"])
    moments, flipped = shard_tensors(digits_cache, "moments"), shard_tensors(digits_cache, "moments_flip")
    assert torch.equal(tok.to_images(tok.draw_latents(moments)), expected)  # pixels: exact
    assert torch.equal(tok.to_images(tok.draw_latents(flipped)), expected.flip(-1))
    with pytest.warns(DeprecationWarning, match="to_images"):  # the names before the naming pass
        assert torch.equal(tok.decode(moments[:, :1]), tok.to_images(moments[:, :1]))
    with pytest.warns(DeprecationWarning, match="draw_latents"):
        assert torch.equal(tok.sample_latents(moments), tok.draw_latents(moments))
    assert shard_tensors(digits_cache, "labels").tolist() == images.targets


def test_encode_image_folder_skips_unreadable(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "lat"
    result = encode("--data", str(image_folder), "--vae", "pixels", "--out", str(out), "--image-size", "16",
                    "--shard-size", "3", "--batch-size", "2", "--num-workers", "0")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["class_names"] == ["macaw", "tiger"]
    assert manifest["num_encoded"] == 6 and manifest["num_skipped"] == 2
    assert sorted(Path(s["file"]).name for s in manifest["skipped"]) == ["broken.png", "notes.jpg"]
    assert all(s["reason"] for s in manifest["skipped"])
    assert "broken.png" in result.output
    ds = open_image_dataset(str(image_folder), image_size=16)
    indices = shard_tensors(out, "indices").tolist()
    assert len(indices) == 6 and all(Path(ds.source(i)).name.startswith("img") for i in indices)
    moments = shard_tensors(out, "moments")
    for row, i in enumerate(indices):
        assert torch.equal(moments[row, :3], ds.load(i))
    assert shard_tensors(out, "labels").tolist() == [ds.targets[i] for i in indices]


def test_encode_with_kl_vae_matches_tokenizer(image_folder: Path, tmp_path: Path, fixtures: Path) -> None:
    vae = f"kl16:{fixtures / 'vae_kl.ckpt'}"
    out = tmp_path / "kl"
    result = encode("--data", str(image_folder), "--vae", vae, "--out", str(out), "--image-size", "32",
                    "--num-workers", "0")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    tok = load_tokenizer(manifest["tokenizer"])
    assert manifest["scale_factor"] == tok.scale_factor and manifest["latent_shape"] == [tok.latent_channels, 2, 2]
    ds = open_image_dataset(str(image_folder), image_size=32)
    indices = shard_tensors(out, "indices").tolist()
    images = torch.stack([ds.load(i) for i in indices])
    cached = shard_tensors(out, "moments")
    fresh = tok.encode_moments(images)
    assert (cached - fresh).abs().max() <= 1e-4
    mean = lambda m: m[:, : tok.latent_channels] * tok.scale_factor  # noqa: E731
    assert (tok.to_images(mean(cached)) - tok.to_images(mean(fresh))).abs().max() <= 1e-4
    flipped = tok.encode_moments(images.flip(-1))
    assert (shard_tensors(out, "moments_flip") - flipped).abs().max() <= 1e-4
    data = open_training_data(str(out))
    assert data.latent_channels == tok.latent_channels and data.latent_size == 2
    assert data.dataset[0][0].shape == (tok.latent_channels, 2, 2)
    on_the_fly = open_training_data(str(image_folder), vae=vae, image_size=32, group_size=2)
    assert on_the_fly.tokenizer.spec() == tok.spec() and on_the_fly.latent_size == 2
    assert on_the_fly.dataset[1][0].shape == (2, tok.latent_channels, 2, 2)


def _one_line_error(result) -> str:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    out = tmp_path / "out"
    msg = _one_line_error(encode("--data", str(tmp_path / "empty"), "--vae", "pixels", "--out", str(out)))
    assert "no images" in msg and not out.exists()


def test_missing_vae_is_refused(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    msg = _one_line_error(encode("--data", str(image_folder), "--vae", f"kl16:{tmp_path / 'kl16.ckpt'}",
                                 "--out", str(out)))
    assert "kl16.ckpt" in msg and "not found" in msg and not out.exists()


def test_corrupt_vae_is_refused(image_folder: Path, tmp_path: Path) -> None:
    bad = tmp_path / "kl16.ckpt"
    bad.write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "out"
    msg = _one_line_error(encode("--data", str(image_folder), "--vae", f"kl16:{bad}", "--out", str(out)))
    assert "cannot read" in msg and not out.exists()


def test_out_folder_of_another_job_is_untouched(digits_cache: Path, tmp_path: Path) -> None:
    before = snapshot(digits_cache)
    msg = _one_line_error(encode("--data", "shapes", "--out", str(digits_cache)))
    assert "different" in msg
    msg = _one_line_error(encode("--data", "digits", "--image-size", "16", "--out", str(digits_cache)))
    assert "image_size" in msg
    assert snapshot(digits_cache) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    _one_line_error(encode("--data", "digits", "--out", str(other)))
    assert snapshot(other) == {"notes.txt": b"mine"}


def test_killed_run_resumes_with_each_image_once(tmp_path: Path) -> None:
    out = tmp_path / "lat"
    cmd = [sys.executable, "-m", "transdiff_cli.cli", "encode-latents", "--data", "digits", "--out", str(out),
           "--shard-size", "100", "--batch-size", "32", "--quiet", "--device", "cpu"]
    env = {**os.environ, DELAY_ENV: "0.3", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (out / "shard-00001.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "manifest.json").read_text())["status"] == "incomplete"
    done = sorted(out.glob("shard-*.json"))
    assert 2 <= len(done) < 18  # really interrupted mid-run
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors") if p.with_suffix(".json") in done}
    # a damaged finished shard is detected by its checksum and redone
    (out / "shard-00000.safetensors").write_bytes(b"damaged")

    result = encode("--data", "digits", "--out", str(out), "--shard-size", "100")
    assert result.exit_code == 0, result.output
    assert shard_tensors(out, "indices").tolist() == list(range(1797))  # each image exactly once
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    for name, mtime in kept.items():
        if name != "shard-00000.safetensors":
            assert (out / name).stat().st_mtime_ns == mtime  # finished shards were kept, not redone
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["num_encoded"] == 1797
    assert len(LatentDataset(out)) == 1797


# -- datasets over cached latents -------------------------------------------------------------------


def test_latent_dataset_items(digits_cache: Path) -> None:
    ds = LatentDataset(digits_cache, flip=False)
    latent, label = ds[10]
    assert latent.shape == (1, 8, 8) and label == ds.targets[10]
    assert ds.latent_channels == 1 and ds.latent_size == 8 and ds.class_names[label] == str(label)
    assert ds.tokenizer_spec["kind"] == "pixels" and ds.manifest["num_encoded"] == len(ds)
    flipping = LatentDataset(digits_cache, flip=True)
    torch.manual_seed(0)
    seen = {bool(torch.equal(flipping[3][0], latent3)) for latent3 in [ds[3][0]] for _ in range(20)}
    assert seen == {True, False}  # both the image and its mirror are drawn


def test_latent_dataset_checksum_mismatch(digits_cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in digits_cache.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    raw = bytearray((copy / "shard-00001.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (copy / "shard-00001.safetensors").write_bytes(bytes(raw))
    with pytest.raises(TransDiffError, match="checksum"):
        LatentDataset(copy)


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, targets: list[int]):
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return torch.full((1, 2, 2), float(i)), self.targets[i]


def test_grouped_dataset_same_class() -> None:
    targets = [i % 3 for i in range(30)] + [3]  # class 3 has a single item
    grouped = GroupedDataset(_Indexed(targets), group_size=4, seed=0)
    for i in range(len(targets)):
        group, label = grouped[i]
        members = group[:, 0, 0, 0].long().tolist()
        assert group.shape == (4, 1, 2, 2) and label == targets[i] and members[0] == i
        assert all(targets[j] == label for j in members)
        if label != 3:
            assert len(set(members)) == 4  # distinct when the class is big enough
    assert grouped[30][0][:, 0, 0, 0].tolist() == [30.0] * 4


def test_open_training_data(digits_cache: Path, image_folder: Path) -> None:
    from_images = open_training_data("digits", group_size=4)
    group, label = from_images.dataset[7]
    assert group.shape == (4, 1, 8, 8) and from_images.latent_size == 8 and from_images.latent_channels == 1
    assert from_images.tokenizer.kind == "pixels" and from_images.class_names[label] == str(label)
    cached = open_training_data(str(digits_cache))
    assert cached.dataset.flip is False  # the manifest says digits are not flipped
    assert cached.tokenizer.spec() == from_images.tokenizer.spec() and len(cached.dataset) == 1797
    with pytest.raises(TransDiffError, match="does not match"):
        open_training_data(str(digits_cache), vae="kl16:/nowhere/kl16.ckpt")
    with pytest.raises(TransDiffError, match="`vae`"):
        open_training_data(str(image_folder))  # an image folder needs a tokenizer
