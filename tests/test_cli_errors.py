"""Bad inputs through the CLI runner: a non-zero exit and one clear line, never a traceback
(checkpoints, then generation)."""

import shutil

import pytest
from conftest import runner, tiny_checkpoint

from transdiff_cli.cli import app


def fails(args, *needles):
    """Run the CLI; expect exit 2, exactly one non-empty line on stderr starting with 'error:', and
    every needle in it."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # handled, not a crash
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def imagenet_sized(tmp_path_factory):
    """1000 classes and no class names: names resolve through ImageNet's."""
    return tiny_checkpoint(tmp_path_factory.mktemp("in1k") / "ck", num_classes=1000)


# --------------------------------------------------------------------------- checkpoints
def test_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("these are not weights\n")
    fails(["sample", "--ckpt", bogus], "notes.pth", "not a readable checkpoint")
    fails(["diversity", bogus], "notes.pth")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    fails(["diversity", empty], "no checkpoint in")
    fails(["diversity", tmp_path / "missing.pth"], "checkpoint not found")


def test_truncated_published_checkpoint(fixtures, tmp_path):
    data = (fixtures / "transdiff_1step.pth").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    fails(["diversity", cut], "cut.pth", "truncated")
    fails(["sample", "--ckpt", cut, "--class", 1], "cut.pth")


def test_truncated_safetensors_in_our_folder(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck")
    ema = ck / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[: ema.stat().st_size // 2])
    fails(["diversity", ck], "ema.safetensors", "truncated")
    fails(["sample", "--ckpt", ck, "--weights", "ema", "--class", 1], "ema.safetensors")


def test_checkpoint_shapes_do_not_match_size(fixtures, tmp_path):
    fails(["diversity", fixtures / "transdiff_1step.pth", "--size", "B"], "does not match size B", "width")
    fails(["sample", "--ckpt", fixtures / "transdiff_1step.pth", "--size", "L", "--class", 1],
          "does not match size L")
    # a folder whose weights do not fit its own config
    ck = tiny_checkpoint(tmp_path / "ck")
    shutil.copy(tiny_checkpoint(tmp_path / "other", num_classes=7) / "ema.safetensors", ck / "ema.safetensors")
    fails(["diversity", ck], "does not fit the model config", "class_emb.weight")


# --------------------------------------------------------------------------- generation
def test_unknown_class_suggests_the_closest(imagenet_sized, tmp_path):
    fails(["sample", "--ckpt", imagenet_sized, "--class", "tigr", "--out", tmp_path], "unknown class 'tigr'",
          "'tiger' (292)")
    fails(["sample", "--ckpt", imagenet_sized, "--class", "crane", "--out", tmp_path], "ambiguous", "134", "517")


def test_class_index_out_of_range(fixtures, manifest, tmp_path):
    n = manifest["class_num"]
    fails(["sample", "--ckpt", fixtures / "transdiff_1step.pth", "--class", n, "--out", tmp_path],
          f"class index {n} is out of range", f"{n} classes")
    fails(["diversity", fixtures / "transdiff_1step.pth", "--classes", f"0,{n + 5}"], "out of range")
    fails(["fuse", "--ckpt", fixtures / "transdiff_1step.pth", "--a", 0, "--b", "tiger", "--out", tmp_path],
          "ImageNet class 292", f"only {n} classes")


def test_mode_mrar_on_1step_checkpoint(fixtures, tmp_path):
    fails(["sample", "--ckpt", fixtures / "transdiff_1step.pth", "--mode", "mrar", "--class", 1, "--out", tmp_path],
          "--mode mrar needs an MRAR checkpoint")
    fails(["diversity", fixtures / "transdiff_1step.pth", "--mode", "mrar"], "MRAR checkpoint")
    fails(["sample", "--ckpt", fixtures / "transdiff_mrar.pth", "--mode", "mrar", "--rounds", 9, "--class", 1,
           "--out", tmp_path], "--rounds 9")


def test_cfg_list_of_wrong_length(fixtures, tmp_path):
    fails(["sample", "--ckpt", fixtures / "transdiff_mrar.pth", "--cfg", "1,1.3,1.3", "--class", 1, "--out", tmp_path],
          "--cfg", "wrong length", "4")
    fails(["sample", "--ckpt", fixtures / "transdiff_1step.pth", "--cfg", "1,1.3,1.3,1.3", "--class", 1,
           "--out", tmp_path], "1-step sampling takes one scale")
    fails(["sample", "--ckpt", fixtures / "transdiff_1step.pth", "--cfg", "lots", "--class", 1, "--out", tmp_path],
          "not a number")


def test_missing_inception_weights(tmp_path):
    fails(["fid", "--gen", tmp_path, "--ref", tmp_path, "--inception-weights", tmp_path / "none.pth"],
          "none.pth", "weights-inception-2015-12-05-6726825d.pth", "https://")


def test_published_checkpoint_without_vae(fixtures, tmp_path):
    fails(["sample", "--ckpt", fixtures / "transdiff_1step.pth", "--class", 1, "--out", tmp_path], "--vae kl16:")


def test_fid_needs_one_source(tmp_path):
    fails(["fid", "--ref", "digits", "--features", "digits"], "exactly one of --gen")
    fails(["fid", "--gen", tmp_path / "none", "--ref", "digits", "--features", "digits"], "not found")
