"""512×512 end to end with the fixture VAE (KL-16 layout, fewer channels): `encode-latents
--image-size 512` (ADM center crop, flips, resume), sampling the published-format 512 model to
512×512 PNGs, and `fid --ckpt` / ADM-layout `--ref` statistics at 512. Few images, few steps."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.data.datasets import center_crop_adm, open_image_dataset
from transdiff_cli.core.data.tokenizer_spec import load_tokenizer
from transdiff_cli.core.eval import features

runner = CliRunner()


@pytest.fixture(scope="module")
def model_512(fixtures512) -> Path:
    return fixtures512 / "transdiff_512.pth"


@pytest.fixture(scope="module")
def vae(fixtures) -> str:
    return f"kl16:{fixtures / 'vae_kl.ckpt'}"


def test_adm_center_crop_at_512():
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (1100, 1300, 3), dtype=np.uint8))  # halved once
    out = center_crop_adm(wide, 512)
    half = wide.resize((650, 550), Image.BOX)
    scaled = half.resize((605, 512), Image.BICUBIC)
    want = scaled.crop((46, 0, 558, 512))
    assert out.size == (512, 512) and np.array_equal(np.asarray(out), np.asarray(want))


@pytest.mark.slow  # four VAE passes at 512x512 on the CPU
def test_encode_latents_at_512(tmp_path, vae):
    root = tmp_path / "imgs" / "train"
    rng = np.random.default_rng(1)
    for i, (cls, shape) in enumerate([("n01818515", (600, 700, 3)), ("n02129604", (1100, 1030, 3))]):
        (root / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / cls / f"{i}.png")
    out = tmp_path / "lat"
    args = ["encode-latents", "--quiet", "--data", str(root.parent), "--vae", vae, "--out", str(out),
            "--image-size", "512", "--shard-size", "1", "--num-workers", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["image_size"] == 512 and manifest["latent_shape"][1:] == [32, 32]
    shard0 = (out / "shard-00000.safetensors").read_bytes()
    # resume: a lost shard is re-encoded, the finished one kept byte for byte
    (out / "shard-00001.safetensors").unlink()
    (out / "shard-00001.json").unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "shard-00000.safetensors").read_bytes() == shard0
    tensors = load_file(str(out / "shard-00001.safetensors"))
    assert tensors["moments"].shape == (1, 32, 32, 32) and tensors["moments_flip"].shape == (1, 32, 32, 32)
    # the cached moments are the VAE's on the ADM crop at 512 (the flip: of the mirrored crop)
    ds = open_image_dataset(str(root.parent), image_size=512)
    i = int(tensors["indices"][0])
    image = ds.load(i)
    assert image.shape == (3, 512, 512)
    tok = load_tokenizer(manifest["tokenizer"])
    fresh = tok.encode_moments(torch.stack([image, image.flip(-1)]))
    assert (tensors["moments"][0] - fresh[0]).abs().max() <= 1e-4
    assert (tensors["moments_flip"][0] - fresh[1]).abs().max() <= 1e-4


@pytest.mark.slow  # one 512x512 decode on the CPU
def test_sample_published_512_writes_512_pngs(tmp_path, model_512, vae):
    out = tmp_path / "s"
    result = runner.invoke(app, ["sample", "--ckpt", str(model_512), "--vae", vae, "--class", "3",
                                 "--num", "1", "--sampling-steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    pngs = [p for p in out.rglob("*.png") if p.name != "grid.png"]
    assert pngs and all(Image.open(p).size == (512, 512) for p in pngs)


@pytest.mark.slow  # two 512x512 decodes and Inception on the CPU
def test_fid_at_512_from_checkpoint_against_adm_stats(tmp_path, model_512, vae, inception_weights, monkeypatch):
    """`fid --ckpt` with the 512 model against a `.npz` in ADM's VIRTUAL_imagenet512 layout
    (arr_0 images plus mu/sigma and the spatial mu_s/sigma_s); Inception with random local
    weights, its input shrunk to its smallest size to fit the CPU budget."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)
    monkeypatch.setattr(features, "FID_LAYER", "192")
    weights = inception_weights
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(8, 192))
    ref = tmp_path / "VIRTUAL_imagenet512.npz"
    np.savez(ref, arr_0=rng.integers(0, 256, (2, 512, 512, 3), dtype=np.uint8),
             mu=feats.mean(0), sigma=np.cov(feats, rowvar=False),
             mu_s=np.zeros(4), sigma_s=np.eye(4))
    result = runner.invoke(app, ["fid", "--ckpt", str(model_512), "--vae", vae, "--ref", str(ref),
                                 "--inception-weights", str(weights), "--class", "0,1",
                                 "--num-per-class", "1", "--sampling-steps", "2",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    gen = np.load(tmp_path / "o" / "generated.npz")
    assert gen["arr_0"].shape == (2, 512, 512, 3)
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert np.isfinite(metrics["frechet_inception_distance"])


def test_mrar_at_512_is_refused_in_one_line(tmp_path, model_512):
    result = runner.invoke(app, ["finetune-mrar", "--from", str(model_512), "--data", "shapes",
                                 "--max-steps", "1", "--run-dir", str(tmp_path / "m")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "MRAR" in lines[0] and "condition slots" in lines[0]
    assert not (tmp_path / "m").exists()
