"""`train --init-from CKPT [--only-train-diff]`: the paper's 512 recipe (fine-tune the decoder at
a larger resolution) in miniature, and starting a run from any checkpoint."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.io.checkpoint import load_checkpoint
from transdiff_cli.core.model.init_from import grow_pos_embed
from transdiff_cli.core.training.train_config import train_defaults
from transdiff_cli.core.training.train_run import RunRequest, prepare

runner = CliRunner()
TINY = {"model": {"width": 32, "heads": 2, "encoder_depth": 1, "decoder_depth": 1},
        "train": {"grid_classes": 2, "grid_per_class": 1, "grid_sampling_steps": 2}}
FAST = ["--batch-size", "8", "--log-every", "1", "--ckpt-every", "1000", "--no-progress",
        "--device", "cpu"]


def train(*args: str):
    return runner.invoke(app, ["train", *args, *FAST])


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_yaml) -> Path:
    """A few steps of the tiny model on shapes at 8x8 (2x2 patches: a 4x4 decoder grid)."""
    run = tmp_path_factory.mktemp("src") / "s8"
    result = train("--data", "shapes", "--image-size", "8", "--config", str(tiny_yaml),
                   "--max-steps", "2", "--run-dir", str(run))
    assert result.exit_code == 0, result.output
    return run


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def reference_grow(pos: torch.Tensor, g: int, grid: int) -> torch.Tensor:
    """Bicubic resize of the (g, g) grid of every channel, written out independently."""
    w = pos.shape[-1]
    chans = pos[0].T.reshape(w, 1, g, g)  # one image per channel, row-major tokens
    out = F.interpolate(chans, scale_factor=grid / g, mode="bicubic", align_corners=False)
    return out.reshape(w, grid * grid).T[None]


def test_grow_pos_embed_is_bicubic_of_the_grid():
    pos = torch.randn(1, 16 * 16, 8)
    grown = grow_pos_embed(pos, 32)
    assert grown.shape == (1, 1024, 8)
    assert torch.allclose(grown, reference_grow(pos, 16, 32), atol=1e-6)
    flat = torch.ones(1, 9, 3)  # a constant grid stays constant
    assert torch.allclose(grow_pos_embed(flat, 6), torch.ones(1, 36, 3), atol=1e-6)


def test_decoder_only_finetune_at_twice_the_resolution(source, tiny_yaml, tmp_path):
    src = load_checkpoint(source, weights="model", keep_raw=True)
    req = RunRequest(config_file=str(tiny_yaml), run_dir=str(tmp_path / "s16"), device="cpu",
                     init_from=str(source), progress=False,
                     train_overrides={"image_size": 16, "only_train_diff": True, "max_steps": 2,
                                      "batch_size": 8, "log_every": 1, "ckpt_every": 1000})
    trainer, _ = prepare(req)
    model, config = trainer.model, trainer.model_config
    # the encoder keeps its 16 slots; the decoder gets an 8x8 grid of 2x2 patches
    assert config.latent_size == 16 and config.num_slots == src.config.num_slots == 16
    assert config.num_tokens == 64 and model.decoder.diffusion_pos_embed_learned.shape[1] == 64
    key = "decoder.diffusion_pos_embed_learned"
    assert torch.allclose(model.state_dict()[key], reference_grow(src.raw_model[key], 4, 8),
                          atol=1e-6)
    assert torch.allclose(trainer.ema.params[key], reference_grow(src.raw_ema[key], 4, 8),
                          atol=1e-6)
    # only decoder parameters are trainable and in the optimizer (and so hold optimizer state)
    names = {id(p): n for n, p in model.named_parameters()}
    in_opt = {names[id(p)] for g in trainer.opt.param_groups for p in g["params"]}
    decoder = {n for n in names.values() if n.startswith("decoder.")}
    assert in_opt == decoder
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if not n.startswith("decoder.")}
    # the frozen part is the source's EMA (what it samples with), in weights and EMA alike
    for n, v in frozen.items():
        assert torch.equal(v, src.raw_ema[n]), n
    dec_before = model.decoder.input_proj.weight.detach().clone()

    result = trainer.train()
    assert result.step == 2
    assert not torch.equal(model.decoder.input_proj.weight, dec_before)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
            assert torch.equal(trainer.ema.params[n], frozen[n]), n
    assert set(trainer.opt.state) <= {p for p in model.parameters() if p.requires_grad}
    out = load_checkpoint(result.checkpoint)
    assert out.config.latent_size == 16 and out.config.num_slots == 16
    for n in frozen:
        assert torch.equal(out.model.state_dict()[n], frozen[n]), n


def test_cli_recipe_then_sample_at_the_new_size(source, tiny_yaml, tmp_path):
    run = tmp_path / "s16"
    result = train("--init-from", str(source), "--image-size", "16", "--only-train-diff",
                   "--config", str(tiny_yaml), "--max-steps", "1", "--run-dir", str(run))
    assert result.exit_code == 0, result.output
    out = tmp_path / "samples"
    result = runner.invoke(app, ["sample", "--ckpt", str(run), "--class", "red-circle", "--num", "2",
                                 "--sampling-steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    pngs = [p for p in out.rglob("*.png") if "grid" not in p.name]
    assert pngs and all(Image.open(p).size == (16, 16) for p in pngs)


def test_new_class_count_reinitialises_the_class_embedding(source, tiny_yaml, tmp_path):
    root = tmp_path / "imgs" / "train"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    run = tmp_path / "two"
    result = train("--init-from", str(source), "--data", str(root.parent), "--vae", "pixels",
                   "--config", str(tiny_yaml), "--max-steps", "1", "--run-dir", str(run))
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "class embedding" in result.output
    ck = load_checkpoint(run, weights="model")
    src = load_checkpoint(source, weights="model")
    assert ck.model.class_emb.weight.shape == (2, 32)
    assert not torch.equal(ck.model.encoder_blocks[0].attn.qkv.weight,  # trained, not frozen
                           src.model.encoder_blocks[0].attn.qkv.weight)
    msg = one_line_error(train("--init-from", str(source), "--data", str(root.parent), "--vae",
                               "pixels", "--only-train-diff", "--config", str(tiny_yaml),
                               "--max-steps", "1", "--run-dir", str(tmp_path / "three")))
    assert "classes" in msg


def test_bad_inputs_are_one_line_errors(source, tiny_yaml, tmp_path):
    msg = one_line_error(train("--only-train-diff", "--data", "shapes", "--max-steps", "1",
                               "--run-dir", str(tmp_path / "a")))
    assert "--init-from" in msg
    msg = one_line_error(train("--init-from", str(source), "--size", "S", "--image-size", "16",
                               "--max-steps", "1", "--run-dir", str(tmp_path / "b")))
    assert "width 32" in msg and "384" in msg
    msg = one_line_error(train("--init-from", str(source), "--image-size", "15",
                               "--config", str(tiny_yaml), "--max-steps", "1",
                               "--run-dir", str(tmp_path / "c")))
    assert "15" in msg
    msg = one_line_error(train("--init-from", str(source), "--data", "digits",
                               "--max-steps", "1", "--run-dir", str(tmp_path / "d")))
    assert "channels" in msg
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_recipe_defaults():
    large = train_defaults("L", decoder_only=True)
    assert (large["epochs"], large["lr"], large["ema_rate"], large["max_steps"]) == (150, 1e-4, 0.999, None)
    assert round(large["warmup_steps"] * 2048 / 1281167) == 10  # 10 ImageNet epochs
    tiny = train_defaults("tiny", decoder_only=True)
    assert tiny["max_steps"] < train_defaults("tiny")["max_steps"]
