"""Parity with the reference implementation on the published-format fixtures (docs/architecture.md#parity-fixtures).

Every size, class count and sampling setting is read from the fixture folder's manifest, so the
same tests run on fixture folders of other sizes (TRANSDIFF_PARITY_FIXTURES)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from transdiff_cli.core.eval.diversity import diversity
from transdiff_cli.core.io.checkpoint import load_checkpoint
from transdiff_cli.core.model.tokens import patchify
from transdiff_cli.core.sampling.loop import sample_rounds

TOL = 1e-4


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def one(fixtures):
    return load_checkpoint(fixtures / "transdiff_1step.pth").model.eval()


@pytest.fixture(scope="module")
def mrar(fixtures):
    return load_checkpoint(fixtures / "transdiff_mrar.pth").model.eval()


@pytest.fixture(scope="module")
def ref1(fixtures):
    return load_file(str(fixtures / "transdiff_1step_reference.safetensors"))


@pytest.fixture(scope="module")
def refm(fixtures):
    return load_file(str(fixtures / "transdiff_mrar_reference.safetensors"))


def test_config_inferred_from_checkpoint(one, mrar, manifest):
    for m in (one, mrar):
        c = m.config
        assert c.width == manifest["width"] and c.heads == manifest["heads"]
        assert c.encoder_blocks == manifest["encoder_blocks"]
        assert c.encoder_depth == manifest["encoder_depth_arg"]
        assert c.decoder_depth == manifest["decoder_depth"]
        assert c.num_classes == manifest["class_num"]
        assert c.buffer_size == manifest["buffer_size"]
        assert c.latent_channels == manifest["vae_embed_dim"]
    assert not one.config.mrar and mrar.config.mrar


def test_1step_condition(one, ref1):
    labels = ref1["labels"]
    with torch.no_grad():
        z = one.condition(one.features(one.class_emb(labels)))
        zu = one.condition(one.features(one.fake_latent))
    assert close(z, ref1["z_cond"]) <= TOL
    assert close(zu, ref1["z_uncond"]) <= TOL


def test_1step_velocity(one, ref1):
    with torch.no_grad():
        v = one.decoder(ref1["x_t"], 1000 * ref1["t"], c=ref1["z_cond"])
    assert close(v, ref1["velocity"]) <= TOL


def test_1step_training_loss(one, ref1):
    with torch.no_grad():
        loss = one(ref1["train_latents"], ref1["labels"], noise=ref1["train_noise"],
                   timesteps=ref1["train_timesteps"])
    assert close(loss.reshape(1), ref1["train_loss"]) <= TOL


@pytest.mark.parametrize("cfg_key,cfg", [("sample_cfg1", 1.0), ("sample_cfg3", 3.0)])
def test_1step_sampling(one, ref1, manifest, cfg_key, cfg):
    s = manifest["sampling"]
    for cache in (True, False):
        out = sample_rounds(one, ref1["labels"], cfg=cfg, sampling_steps=s["num_sampling_steps"],
                            scale_0=s["scale_0"], scale_1=s["scale_1"], noise=ref1["noise"],
                            cache=cache)[-1]
        assert close(out, ref1[cfg_key]) <= TOL


def test_mrar_attention_mask(mrar, refm):
    allowed = refm["attention_allowed"].bool()
    mask = mrar.attention_mask(allowed.shape[0])
    assert torch.equal(mask, allowed)


def test_mrar_teacher_forced_condition(mrar, refm):
    labels = refm["labels"]
    k = mrar.config.mrar_rounds
    refs = torch.cat([patchify(refm[f"train_latents{j}"], mrar.config.ref_patch_size)
                      for j in range(k - 1)], dim=1)
    with torch.no_grad():
        z = mrar.condition(mrar.features(mrar.class_emb(labels), refs))
    assert close(z, refm["z_teacher_forced"]) <= TOL


def test_mrar_training_loss(mrar, refm):
    k = mrar.config.mrar_rounds
    latents = torch.stack([refm[f"train_latents{j}"] for j in range(k)], dim=1)
    with torch.no_grad():
        loss = mrar(latents, refm["labels"], noise=[refm[f"train_noise{j}"] for j in range(k)],
                    timesteps=[refm[f"train_timesteps{j}"] for j in range(k)])
    assert close(loss.reshape(1), refm["train_loss"]) <= TOL


@pytest.mark.parametrize("cfg_key", ["sample_cfg1", "sample_cfg2"])
def test_mrar_sampling(mrar, refm, manifest, cfg_key):
    s = manifest["sampling"]
    k = mrar.config.mrar_rounds
    # the fixture README: cfg 1 at every step, or 1, 1.5, 2, 2.5 for steps 0-3
    cfg = [1.0] * k if cfg_key == "sample_cfg1" else [1.0 + 0.5 * i for i in range(k)]
    for cache in (True, False):
        out = sample_rounds(mrar, refm["labels"], cfg=cfg, sampling_steps=s["num_sampling_steps"],
                            scale_0=s["scale_0"], scale_1=s["scale_1"], noise=refm["noise"],
                            cache=cache)[-1]
        assert close(out, refm[cfg_key]) <= TOL


def test_diversity(fixtures):
    ref = json.loads((fixtures / "diversity_reference.json").read_text())
    model = load_checkpoint(fixtures / ref["checkpoint"],
                            weights="ema" if ref["weights"] == "model_ema" else "model").model
    per_class = diversity(model.eval(), torch.arange(len(ref["per_class"])))
    assert close(per_class, torch.tensor(ref["per_class"])) <= TOL
    assert abs(per_class.mean().item() - ref["mean"]) <= TOL
