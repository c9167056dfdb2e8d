"""The Python API (`TransDiffPipeline`): the CLI's pixels for the same seed, MRAR rounds, features and
decode, fuse and diversity, on tiny checkpoints and the published-format fixture."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import invoke, make_tiny, png
from PIL import Image

import transdiff_cli
from transdiff_cli import TransDiffPipeline
from transdiff_cli.core.errors import TransDiffError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    # a run folder (its latest checkpoint is found) and a bare checkpoint folder
    make_tiny(root / "run" / "checkpoints" / "step_0000010")
    return {"one": root / "run", "mrar": make_tiny(root / "mrar", mrar=True)}


@pytest.fixture(scope="module")
def pipes(tiny):
    # fp32 pinned: the CLI side of every comparison passes --precision fp32, and `auto` is bf16 on
    # CPUs with native bf16 (a host-dependent answer must never decide a comparison)
    return {k: TransDiffPipeline.from_pretrained(v, device="cpu", precision="fp32") for k, v in tiny.items()}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def cell(strip: np.ndarray, k: int, size: int = 8, pad: int = 2, upscale: int = 8) -> np.ndarray:
    """Round k's image in a `--save-rounds` strip (make_grid: padding 2, nearest upscale)."""
    small = strip[::upscale, ::upscale]
    x = pad + k * (size + pad)
    return small[pad:pad + size, x:x + size]


@pytest.mark.parametrize("kind", ["one", "mrar"])
def test_images_equal_the_cli(tiny, pipes, tmp_path, kind):
    out = tmp_path / "cli"
    invoke(["sample", "--ckpt", tiny[kind], "--class", "digit-3", "--class", 8, "--num", 3, "--seed", 5,
            "--batch-size", 2, "--scale-1", 0.7, "--save-rounds", "--precision", "fp32", "--out", out])
    got = pipes[kind](["digit-3", 8], num_per_class=3, seed=5, batch_size=2, scale_1=0.7, progress=False)
    assert got.labels == [3, 3, 3, 8, 8, 8] and len(got.images) == 6
    files = sorted(out.glob("0*.png"))
    assert len(files) == 6
    for i, f in enumerate(files):
        assert np.array_equal(pixels(got.images[i]), png(f)), f.name
    rounds = got.settings.rounds
    assert len(got.round_images) == len(got.round_latents) == rounds == (4 if kind == "mrar" else 1)
    assert torch.equal(got.round_latents[-1], got.latents) and got.latents.shape == (6, 1, 8, 8)
    # every MRAR round's image is the CLI's strip cell for that round
    for i, f in enumerate(files):
        strip = png(out / "rounds" / f.name.replace(".png", "_rounds.png"))
        for k in range(rounds):
            assert np.array_equal(pixels(got.round_images[k][i]), cell(strip, k)), (f.name, k)
    if kind == "mrar":  # the rounds are different images
        assert not torch.equal(got.round_latents[0], got.round_latents[-1])


def test_published_checkpoint_equals_the_cli(fixtures, tmp_path):
    vae = f"kl16:{fixtures / 'vae_kl.ckpt'}"
    out = tmp_path / "cli"
    invoke(["sample", "--ckpt", fixtures / "transdiff_1step.pth", "--vae", vae, "--class", 4, "--num", 1,
            "--sampling-steps", 2, "--precision", "fp32", "--out", out])
    pipe = TransDiffPipeline.from_pretrained(fixtures / "transdiff_1step.pth", vae=vae, device="cpu",
                                             precision="fp32")
    got = pipe(4, sampling_steps=2, progress=False)
    assert got.images[0].mode == "RGB" and np.array_equal(pixels(got.images[0]), png(out / "00000_class4.png"))


def test_features_decode_back_to_the_samples(pipes):
    pipe = pipes["one"]
    mc = pipe.config
    feats = pipe.features([2, "digit-5"])
    assert feats.shape == (2, mc.num_slots, mc.width) and feats.dtype == torch.float32
    by_hand = pipe.model.features(pipe.model.class_emb(torch.tensor([2, 5])))
    assert torch.equal(feats, by_hand)
    sampled = pipe([2, 5], num_per_class=2, seed=1, progress=False)
    decoded = pipe.decode(feats.repeat_interleave(2, 0), seed=1)  # image i's noise, as in sampling
    assert (decoded.latents - sampled.latents).abs().max() <= 1e-5
    again = pipe.decode(condition=pipe.model.condition(feats.repeat_interleave(2, 0)), seed=1)
    assert torch.equal(again.latents, decoded.latents)
    other = pipe.decode(feats, noise=torch.zeros(2, mc.num_tokens, mc.token_dim), sampler="ode")
    assert not torch.equal(other.latents, decoded.latents[::2])
    with pytest.raises(TransDiffError, match="either"):
        pipe.decode()


def test_decode_from_part_of_the_features(pipes):
    pipe = pipes["one"]
    n = pipe.config.num_slots
    feats = pipe.features([2, 5])
    full = pipe.decode(feats, seed=1, cfg=1.5)
    assert torch.equal(pipe.decode(feats, seed=1, cfg=1.5, slots=n).latents, full.latents)
    assert torch.equal(pipe.decode(feats, seed=1, cfg=1.5, slots=list(range(n))).latents, full.latents)
    first = pipe.decode(feats, seed=1, cfg=1.5, slots=1)
    assert not torch.equal(first.latents, full.latents)
    # the first k slots, by count or by index, are the same thing
    assert torch.equal(pipe.decode(feats, seed=1, cfg=1.5, slots=[0]).latents, first.latents)
    # the decoder sees only the kept slots: changing another slot's feature changes nothing
    changed = feats.clone()
    changed[:, 1:] += 3.0
    assert torch.equal(pipe.decode(changed, seed=1, cfg=1.5, slots=1).latents, first.latents)
    for bad, err in ((0, "1.."), (n + 1, "1.."), ([0, 0], "distinct"), ("3", "int")):
        with pytest.raises(TransDiffError, match=err):
            pipe.decode(feats, slots=bad)


def test_mrar_features_with_references(pipes):
    pipe = pipes["mrar"]
    mc = pipe.config
    out = pipe([1, 6], seed=2, sampling_steps=2, progress=False)
    first = pipe.features([1, 6])
    full = pipe.features([1, 6], references=out.round_latents[:-1])
    assert first.shape == (2, mc.ref_tokens, mc.width)
    assert full.shape == (2, mc.mrar_rounds * mc.ref_tokens, mc.width)
    # block-causal: the first block does not see the references
    assert (full[:, :mc.ref_tokens] - first).abs().max() <= 1e-5
    # a condition with references has no null-class counterpart for guidance
    with pytest.raises(TransDiffError, match="cfg=1"):
        pipe.decode(full, cfg=2.0)
    assert pipe.decode(full, cfg=1.0).latents.shape == (2, 1, 8, 8)


def test_fuse_equals_the_cli(tiny, pipes, tmp_path):
    out = tmp_path / "f"
    invoke(["fuse", "--ckpt", tiny["one"], "--a", "digit-1", "--b", 6, "--ratio", 0.25, "--pattern", "random",
            "--seed", 3, "--precision", "fp32", "--out", out])
    got = pipes["one"].fuse("digit-1", 6, ratio=0.25, pattern="random", seed=3)
    assert got.labels == (1, 6) and int(got.mask.sum()) == round(0.25 * got.mask.numel())
    for image, name in zip(got.images, ("a", "fused", "b")):
        assert np.array_equal(pixels(image), png(out / f"{name}.png")), name
    with pytest.raises(TransDiffError, match="1-step"):
        pipes["mrar"].fuse(1, 2)


def test_diversity_equals_the_cli(tiny, pipes):
    doc = json.loads(invoke(["diversity", tiny["one"], "--classes", "0,4", "--json"]).stdout)
    got = pipes["one"].diversity([0, 4])
    assert got.per_round is None and got.per_class.tolist() == doc["per_class"] and got.mean == doc["mean"]
    mrar = pipes["mrar"].diversity([0, 4], sampling_steps=2)
    assert mrar.per_round.shape == (pipes["mrar"].config.mrar_rounds, 2)


def test_class_values(pipes):
    pipe = pipes["one"]
    assert pipe.labels(np.int64(4)) == [4] and pipe.labels(torch.tensor([1, 2])) == [1, 2]
    assert pipe.labels(["digit-3", 5, "7,8"]) == [3, 5, 7, 8] and pipe.labels(None) == list(range(10))


def test_user_errors(pipes, tmp_path):
    with pytest.raises(TransDiffError, match="unknown class"):
        pipes["one"]("no-such-class", progress=False)
    with pytest.raises(TransDiffError, match="1-step model"):
        pipes["one"](1, mode="mrar", progress=False)
    with pytest.raises(TransDiffError, match="not found"):
        TransDiffPipeline.from_pretrained(tmp_path / "missing", device="cpu")


def test_import_is_light():
    # the API is imported on first use: `import transdiff_cli` (and `transdiff --version`) stays quick
    code = "import sys, transdiff_cli; assert 'torch' not in sys.modules; print(transdiff_cli.__version__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == transdiff_cli.__version__ and transdiff_cli.TransDiffPipeline is TransDiffPipeline
