"""Model sizes, token geometry and checkpoint round trips (no fixtures needed)."""

import pytest
import torch

from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.io.checkpoint import load_checkpoint, save_checkpoint
from transdiff_cli.core.model.config import IMAGENET_GEOMETRY, ModelConfig, preset
from transdiff_cli.core.model.tokens import patchify, unpatchify
from transdiff_cli.core.model.transdiff import TransDiff
from transdiff_cli.core.sampling.loop import sample_rounds


@pytest.mark.parametrize("size,paper,digits", [("B", 290e6, None), ("L", 683e6, None),
                                               ("H", 1.3e9, 2)])
def test_paper_sizes_parameter_count(size, paper, digits):
    with torch.device("meta"):
        model = TransDiff(preset(size, **IMAGENET_GEOMETRY))
    n = sum(p.numel() for p in model.parameters())
    if digits is None:
        assert abs(n - paper) / paper <= 0.02, n
    else:  # the paper rounds H to "1.3B" (ours: 1.328B, the reference's architecture exactly)
        assert float(f"{n:.{digits}g}") == paper, n


def test_patchify_roundtrip_and_layout():
    x = torch.randn(2, 3, 8, 8)
    t = patchify(x, 2)
    assert t.shape == (2, 16, 12)
    # channel-major inside a patch: first token = channel 0's 2x2 block, then channel 1's ...
    assert torch.equal(t[0, 0, :4], x[0, 0, :2, :2].flatten())
    assert torch.equal(unpatchify(t, 2, 3, 8), x)


def tiny_config(**kw) -> ModelConfig:
    base = dict(width=32, heads=2, encoder_depth=1, decoder_depth=1, num_classes=3,
                latent_channels=1, latent_size=8, diffusion_batch_mul=1)
    base.update(kw)
    return preset("tiny", **base)


def test_geometry_follows_data():
    c = tiny_config()
    assert c.patch_size == 2 and c.num_tokens == 16 and c.token_dim == 4
    assert c.buffer_size == 16
    m = tiny_config(mrar=True)
    assert m.ref_patch_size == 4 and m.ref_tokens == 4 and m.num_slots == 16


def test_mrar_loss_and_sampling_shapes():
    model = TransDiff(tiny_config(mrar=True)).eval()
    lat = torch.randn(2, 4, 1, 8, 8)
    assert model(lat, torch.tensor([0, 2])).ndim == 0
    steps = sample_rounds(model, torch.tensor([1, 2]), cfg=[1.0, 2.0, 2.0, 2.0], sampling_steps=3)
    assert steps[-1].shape == (2, 1, 8, 8) and len(steps) == 4


def test_cached_mrar_sampling_equals_plain_path():
    torch.manual_seed(0)
    model = TransDiff(tiny_config(mrar=True)).eval()
    for p in model.decoder.final_layer.parameters():  # make the decoder output non-zero
        torch.nn.init.normal_(p, std=0.1)
    noise = torch.randn(2, 16, 4)
    kw = dict(cfg=[1.0, 1.5, 1.0, 3.0], sampling_steps=4, scale_1=0.0, noise=noise)
    a = sample_rounds(model, torch.tensor([0, 1]), cache=True, **kw)[-1]
    b = sample_rounds(model, torch.tensor([0, 1]), cache=False, **kw)[-1]
    assert (a - b).abs().max() <= 1e-5


def test_save_load_roundtrip(tmp_path):
    config = tiny_config()
    model = TransDiff(config)
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "ck", model.state_dict(), config, {"class_names": ["a", "b", "c"]},
                    ema_state=ema)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.class_names == ["a", "b", "c"] and ck.config == config
    assert torch.equal(ck.model.class_emb.weight, ema["class_emb.weight"])
    raw = load_checkpoint(tmp_path / "ck", weights="model").model
    assert torch.equal(raw.class_emb.weight, model.class_emb.weight)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_bad_checkpoints(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(TransDiffError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(TransDiffError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    config = tiny_config()
    save_checkpoint(tmp_path / "ck", TransDiff(config).state_dict(), config)
    data = (tmp_path / "ck" / "model.safetensors").read_bytes()
    (tmp_path / "ck" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TransDiffError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(TransDiffError, match="does not match size B"):
        save_checkpoint(tmp_path / "ck2", TransDiff(config).state_dict(), config)
        load_checkpoint(tmp_path / "ck2", size="B")


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = TransDiff(tiny_config(mrar=True, label_drop_prob=0.0)).train()
    ckpt = TransDiff(tiny_config(mrar=True, label_drop_prob=0.0, grad_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    lat, labels = torch.randn(2, 4, 1, 8, 8), torch.tensor([0, 2])
    noise = [torch.randn(2, 16, 4) for _ in range(4)]
    times = [torch.tensor([100, 700]) for _ in range(4)]
    for m in (plain, ckpt):
        m(lat, labels, noise=noise, timesteps=times).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_condition_slots_separate_from_decoder_tokens(tmp_path):
    """The 512 geometry: fewer encoder slots than decoder tokens; the decoder cross-attends to
    all of them. The field round-trips through config.json; configs without it still load."""
    config = tiny_config(latent_size=16, patch_size=2, condition_slots=16, buffer_size=4)
    assert config.num_tokens == 64 and config.num_slots == 16
    model = TransDiff(config).eval()
    assert model.encoder_pos_embed_learned.shape[1] == 4 + 16
    assert model.diffusion_pos_embed_learned.shape[1] == 16
    assert model.decoder.diffusion_pos_embed_learned.shape[1] == 64
    assert model.features(model.class_emb(torch.tensor([0, 1]))).shape == (2, 16, 32)
    assert sample_rounds(model, torch.tensor([0, 1]), sampling_steps=2)[-1].shape == (2, 1, 16, 16)
    assert model(torch.randn(2, 1, 16, 16), torch.tensor([0, 2])).ndim == 0
    save_checkpoint(tmp_path / "ck", model.state_dict(), config)
    assert load_checkpoint(tmp_path / "ck").config == config
    old = tiny_config().to_dict()
    del old["condition_slots"]
    assert ModelConfig.from_dict(old).num_slots == tiny_config().num_tokens
    with pytest.raises(TransDiffError, match="1-step"):
        tiny_config(mrar=True, condition_slots=16)
