"""Parity on the 512×512 published-format fixture (docs/architecture.md#recipes): the encoder keeps its condition
slots while the decoder has four times as many tokens.

Every size and sampling setting is read from the folder's manifest; the folder comes from
TRANSDIFF_PARITY_512_FIXTURES, so any folder in that layout can be checked."""

import json

import pytest
import torch
from safetensors.torch import load_file

from transdiff_cli.core.io.checkpoint import load_checkpoint
from transdiff_cli.core.sampling.loop import sample_rounds

TOL = 1e-4

@pytest.fixture(scope="module")
def manifest512(fixtures512) -> dict:
    return json.loads((fixtures512 / "manifest.json").read_text())


@pytest.fixture(scope="module")
def ck512(fixtures512):
    return load_checkpoint(fixtures512 / "transdiff_512.pth")


@pytest.fixture(scope="module")
def model512(ck512):
    return ck512.model.eval()


@pytest.fixture(scope="module")
def ref512(fixtures512):
    return load_file(str(fixtures512 / "transdiff_512_reference.safetensors"))


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_geometry_inferred_from_tensors(model512, manifest512):
    c = model512.config
    assert c.latent_size == manifest512["latent_size"]
    assert c.num_slots == manifest512["condition_slots"]
    assert c.num_tokens == manifest512["decoder_tokens"]
    assert c.patch_size == manifest512["patch_size"]
    assert c.buffer_size == manifest512["buffer_size"]
    assert c.width == manifest512["width"] and c.heads == manifest512["heads"]
    assert c.encoder_blocks == manifest512["encoder_blocks"]
    assert c.decoder_depth == manifest512["decoder_depth"]
    assert c.num_classes == manifest512["class_num"]
    assert c.latent_channels == manifest512["vae_embed_dim"]
    assert not c.mrar


def test_ema_weights_loaded(fixtures512, model512):
    ck = torch.load(fixtures512 / "transdiff_512.pth", map_location="cpu", weights_only=False)
    ema = ck["model_ema"]["class_emb.weight"]
    assert torch.equal(model512.class_emb.weight, ema)
    assert not torch.equal(ema, ck["model"]["class_emb.weight"])


def test_512_condition(model512, ref512):
    with torch.no_grad():
        z = model512.condition(model512.features(model512.class_emb(ref512["labels"])))
    assert close(z, ref512["z_cond"]) <= TOL


def test_512_velocity(model512, ref512):
    with torch.no_grad():
        v = model512.decoder(ref512["x_t"], 1000 * ref512["t"], c=ref512["z_cond"])
    assert close(v, ref512["velocity"]) <= TOL


def test_512_training_loss(model512, ref512):
    with torch.no_grad():
        loss = model512(ref512["train_latents"], ref512["labels"], noise=ref512["train_noise"],
                        timesteps=ref512["train_timesteps"])
    assert close(loss.reshape(1), ref512["train_loss"]) <= TOL


@pytest.mark.parametrize("cfg_key,cfg", [("sample_cfg1", 1.0), ("sample_cfg3", 3.0)])
def test_512_sampling(model512, ref512, manifest512, cfg_key, cfg):
    s = manifest512["sampling"]
    for cache in (True, False):
        out = sample_rounds(model512, ref512["labels"], cfg=cfg, sampling_steps=s["num_sampling_steps"],
                            scale_0=s["scale_0"], scale_1=s["scale_1"], noise=ref512["noise"],
                            cache=cache)[-1]
        assert close(out, ref512[cfg_key]) <= TOL
