"""`sample`, `fuse` and `diversity` through the CLI, on the published-format fixtures (with the fixture
KL VAE) and on tiny pixel-space checkpoints made here; class-name resolution; fuse masks."""

import json

import numpy as np
import pytest
import torch
from conftest import invoke, make_tiny, png, runner

from transdiff_cli.cli import app
from transdiff_cli.core.data.classes import resolve_class, resolve_classes
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.eval.diversity import cosine_measure, mrar_feature_diversity
from transdiff_cli.core.io.checkpoint import load_checkpoint
from transdiff_cli.core.sampling.fuse import fuse_mask
from transdiff_cli.core.sampling.settings import sample_settings


# --------------------------------------------------------------------------- published fixtures
def test_sample_1step_published(fixtures, manifest, tmp_path):
    out = tmp_path / "s"
    invoke(["sample", "--ckpt", fixtures / "transdiff_1step.pth", "--vae", f"kl16:{fixtures / 'vae_kl.ckpt'}",
            "--class", "3,7", "--num", 1, "--sampling-steps", 2, "--out", out, "--npz", out / "all.npz"])
    size = manifest["img_size"]
    for name in ("00000_class3.png", "00001_class7.png"):
        assert png(out / name).shape == (size, size, 3)
    assert (out / "grid.png").is_file()
    data = np.load(out / "all.npz")
    assert data["arr_0"].shape == (2, size, size, 3) and data["arr_0"].dtype == np.uint8
    assert data["labels"].tolist() == [3, 7]
    assert np.array_equal(data["arr_0"][0], png(out / "00000_class3.png"))
    info = json.loads((out / "samples.json").read_text())
    assert info["settings"]["mode"] == "1step" and info["settings"]["sampling_steps"] == 2


def test_sample_mrar_published_with_steps(fixtures, manifest, tmp_path):
    out = tmp_path / "m"
    invoke(["sample", "--ckpt", fixtures / "transdiff_mrar.pth", "--vae", f"kl16:{fixtures / 'vae_kl.ckpt'}",
            "--class", 5, "--num", 1, "--mode", "mrar", "--rounds", 2, "--cfg", "1,1.5", "--sampling-steps", 2,
            "--save-rounds", "--out", out])
    size = manifest["img_size"]
    final = png(out / "00000_class5.png")
    strip = png(out / "rounds" / "00000_class5_rounds.png")
    pad = 2  # images.make_grid's padding; 256-pixel images are not upscaled
    assert strip.shape == (size + 2 * pad, 2 * (size + pad) + pad, 3)
    last = strip[pad:pad + size, 2 * pad + size:2 * pad + 2 * size]
    assert np.array_equal(last, final)  # the strip's last step is the output image
    info = json.loads((out / "samples.json").read_text())
    assert info["settings"]["rounds"] == 2 and info["settings"]["cfg"] == [1.0, 1.5]


def test_fuse_published(fixtures, manifest, tmp_path):
    out = tmp_path / "f"
    invoke(["fuse", "--ckpt", fixtures / "transdiff_1step.pth", "--vae", f"kl16:{fixtures / 'vae_kl.ckpt'}",
            "--a", 1, "--b", 2, "--sampling-steps", 2, "--out", out])
    for name in ("fuse.png", "a.png", "fused.png", "b.png"):
        assert (out / name).is_file()
    doc = json.loads((out / "fuse.json").read_text())
    slots = (manifest["img_size"] // 16) ** 2  # KL-16 latent, patch 1: one slot per latent pixel
    assert doc["slots"] == slots and doc["slots_from_a"] == list(range(slots // 2))  # A's half: 0-127 of 256
    assert doc["a"]["class"] == 1 and doc["b"]["class"] == 2


def test_diversity_json_reproduces_reference(fixtures):
    ref = json.loads((fixtures / "diversity_reference.json").read_text())
    result = invoke(["diversity", fixtures / ref["checkpoint"], "--json"])
    doc = json.loads(result.stdout)
    assert doc["weights"] == ref["weights"]
    assert len(doc["per_class"]) == len(ref["per_class"])
    assert max(abs(a - b) for a, b in zip(doc["per_class"], ref["per_class"])) <= 1e-4
    assert abs(doc["mean"] - ref["mean"]) <= 1e-4


def test_diversity_table_published(fixtures):
    result = invoke(["diversity", fixtures / "transdiff_1step.pth", "--classes", "0,1"])
    assert "mean" in result.stdout and "0.68" in result.stdout  # class 0: 0.6812 in the reference


# --------------------------------------------------------------------------- tiny checkpoints
def test_same_seed_same_files_other_seed_differs(tiny, tmp_path):
    def run(name, seed, *extra):
        out = tmp_path / name
        invoke(["sample", "--ckpt", tiny["one"], "--class", "digit-3", "--class", 8, "--num", 3, "--seed", seed,
                "--out", out, *extra])
        return {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}

    first, again, other = run("a", 1), run("b", 1), run("c", 2)
    assert len(first) == 7 and first == again  # 6 images + grid
    assert all(first[k] != other[k] for k in first)


@pytest.mark.parametrize("kind,sampler", [("one", "ode"), ("one", "em"), ("mrar", "em")])
def test_images_do_not_depend_on_batch_size(tiny, tmp_path, kind, sampler):
    # per-image seeding of the initial noise and (em, scale_1 > 0) of every step's noise
    outs = []
    for bs in (1, 4):
        out = tmp_path / f"bs{bs}"
        invoke(["sample", "--ckpt", tiny[kind], "--class", "0,1,2", "--num", 1, "--sampler", sampler,
                "--scale-1", 0.9, "--batch-size", bs, "--out", out])
        outs.append({p.name: png(p) for p in out.glob("0*.png")})
    assert len(outs[0]) == 3 and all(np.array_equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_sample_mrar_tiny_rounds_strip_and_npz(tiny, tmp_path):
    out = tmp_path / "m"
    invoke(["sample", "--ckpt", tiny["mrar"], "--class", "digit-2", "--num", 2, "--save-rounds",
            "--npz", out / "x.npz", "--out", out])
    strips = sorted((out / "rounds").glob("*_rounds.png"))
    assert [p.name for p in strips] == ["00000_class2_rounds.png", "00001_class2_rounds.png"]
    data = np.load(out / "x.npz")
    assert data["arr_0"].shape == (2, 8, 8, 3) and data["labels"].tolist() == [2, 2]
    assert np.array_equal(data["arr_0"][1][..., 0], png(out / "00001_class2.png"))


def test_sample_defaults_to_newest_run(tmp_path, monkeypatch):
    make_tiny(tmp_path / "runs" / "r1" / "checkpoints" / "step_00000010")
    monkeypatch.chdir(tmp_path)
    result = invoke(["sample", "--class", 1, "--num", 1, "--rounds", 3])
    assert "ignored" in result.output  # --steps means nothing for a 1-step model
    assert (tmp_path / "samples" / "00000_class1.png").is_file()


def test_fuse_ratio_extremes_reproduce_the_classes(tiny, tmp_path):
    def fused(ratio):
        out = tmp_path / f"r{ratio}"
        invoke(["fuse", "--ckpt", tiny["one"], "--a", "digit-1", "--b", 6, "--ratio", ratio, "--seed", 3,
                "--pattern", "random", "--out", out])
        return {n: png(out / f"{n}.png") for n in ("a", "fused", "b")}

    all_a, all_b = fused(1.0), fused(0.0)
    assert np.array_equal(all_a["fused"], all_a["a"]) and np.array_equal(all_b["fused"], all_b["b"])
    assert not np.array_equal(all_a["a"], all_a["b"])
    # same seed and class as `sample --num 1`: A is the image sample draws for that class
    out = tmp_path / "s"
    invoke(["sample", "--ckpt", tiny["one"], "--class", 1, "--num", 1, "--seed", 3, "--out", out])
    assert np.abs(png(out / "00000_class1.png").astype(int) - all_a["a"].astype(int)).max() <= 1


def test_fuse_needs_1step_checkpoint(tiny, tmp_path):
    result = runner.invoke(app, ["fuse", "--ckpt", str(tiny["mrar"]), "--a", "1", "--b", "2",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2 and "1-step" in result.output


def test_diversity_mrar_per_round(tiny):
    result = invoke(["diversity", tiny["mrar"], "--classes", "0,digit-4", "--num-refs", 2,
                     "--sampling-steps", 2, "--json"])
    doc = json.loads(result.stdout)
    k = load_checkpoint(tiny["mrar"]).config.mrar_rounds
    assert doc["mode"] == "mrar" and doc["classes"] == [0, 4] and len(doc["per_class"]) == 2
    assert [r["round"] for r in doc["per_round"]] == list(range(k))
    assert all(-1 <= v <= 1 for r in doc["per_round"] for v in r["per_class"])


def test_diversity_takes_the_checkpoint_as_argument_or_ckpt(tiny):
    positional = invoke(["diversity", tiny["one"], "--classes", "0,1", "--json"])
    option = invoke(["diversity", "--ckpt", tiny["one"], "--classes", "0,1", "--json"])
    both = invoke(["diversity", tiny["one"], "--ckpt", tiny["one"], "--classes", "0,1", "--json"])
    assert json.loads(option.stdout) == json.loads(positional.stdout) == json.loads(both.stdout)
    two = runner.invoke(app, ["diversity", str(tiny["one"]), "--ckpt", str(tiny["mrar"])])
    assert two.exit_code == 2 and "two checkpoints given" in two.stderr and "Traceback" not in two.output


def test_mrar_feature_diversity_first_block_matches_plain_measure(tiny):
    model = load_checkpoint(tiny["mrar"]).model.eval()
    settings = sample_settings(model.config, sampling_steps=2)
    per_class, per_round = mrar_feature_diversity(model, [0, 3], settings, num_refs=1)
    # block 0 sees no reference: it is the model's first-block measure without any sampling
    plain = cosine_measure(model.features(model.class_emb(torch.tensor([0, 3]))))
    assert torch.allclose(per_round[0], plain, atol=1e-6)
    assert per_class.shape == (2,) and per_round.shape == (model.config.mrar_rounds, 2)


# --------------------------------------------------------------------------- classes and masks
def test_imagenet_names():
    assert resolve_class("tiger", 1000) == 292  # exact synonym beats "tiger cat", "tiger shark"
    assert resolve_class("golden retriever", 1000) == 207
    assert resolve_class("Tiger, Panthera tigris", 1000) == 292
    assert resolve_classes(["207,tiger", "1"], 1000) == [207, 292, 1]
    with pytest.raises(TransDiffError, match="'tiger'"):
        resolve_class("tigr", 1000)
    with pytest.raises(TransDiffError, match="ambiguous.*134.*517"):
        resolve_class("crane", 1000)
    with pytest.raises(TransDiffError, match="only 10 classes"):
        resolve_class("tiger", 10)
    with pytest.raises(TransDiffError, match="out of range"):
        resolve_class("10", 10)


def test_checkpoint_names_first_then_prefix():
    names = ["red-circle", "red-square", "blue-circle", "tiger-ish"]
    assert resolve_class("red-circle", 4, names) == 0
    assert resolve_class("blue", 4, names) == 2  # unique prefix
    assert resolve_class("tiger-ish", 4, names) == 3
    with pytest.raises(TransDiffError, match="ambiguous"):
        resolve_class("red", 4, names)
    with pytest.raises(TransDiffError, match="red-circle"):
        resolve_class("red-circel", 4, names)
    assert resolve_classes(None, 4, names) == [0, 1, 2, 3]


def test_fuse_masks():
    halves = fuse_mask(256)
    assert halves[:128].all() and not halves[128:].any()
    assert fuse_mask(8, 0.5, "interleave").tolist() == [True, False] * 4
    assert int(fuse_mask(10, 0.3, "interleave").sum()) == 3
    r1, r2 = fuse_mask(64, 0.25, "random", 7), fuse_mask(64, 0.25, "random", 7)
    assert torch.equal(r1, r2) and int(r1.sum()) == 16 and not torch.equal(r1, fuse_mask(64, 0.25, "random", 8))
    with pytest.raises(TransDiffError):
        fuse_mask(8, 1.5)
