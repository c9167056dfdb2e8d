"""Published checkpoints get the authors' evaluation settings (never their saved training args);
`--dry-run` shows every setting with its provenance without loading weights."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.io.checkpoint import save_checkpoint
from transdiff_cli.core.model.config import IMAGENET_GEOMETRY, ModelConfig, preset
from transdiff_cli.core.model.convert import to_published_keys
from transdiff_cli.core.model.transdiff import TransDiff
from transdiff_cli.core.sampling.eval_settings import checkpoint_defaults, published_table_entry

runner = CliRunner()
NAMES = {"B": "transdiff_base", "L": "transdiff_large", "H": "transdiff_huge"}
# the authors' README: (cfg, scale_0, scale_1) per model, 100 Euler-Maruyama steps
TABLE = {("B", False): (1.30, 0.87, 0.91), ("L", False): (1.30, 0.89, 0.95), ("H", False): (1.23, 0.87, 0.93),
         ("B", True): (1.30, 0.87, 0.91), ("L", True): (1.30, 0.925, 0.95), ("H", True): (1.28, 0.87, 0.91)}
PAPER_PARAMS = {"B": 290e6, "L": 683e6, "H": 1.3e9}


def training_args(size: str, mrar: bool) -> argparse.Namespace:
    """What main.py saves: its command-line defaults, the recipe's flags, no evaluation settings."""
    return argparse.Namespace(
        model=NAMES[size], img_size=256, vae_embed_dim=16, class_num=1000, buffer_size=64,
        patch_size=2 if mrar else 1, mrar=mrar, label_drop_prob=0.1, attn_dropout=0.1, proj_dropout=0.1,
        diffusion_batch_mul=2 if mrar else 4, cfg=1.0, scale_0=1.0, scale_1=1.0, num_sampling_steps="100",
        sampler="", ema_rate=0.9999)


def fake_published(path: Path, size: str, mrar: bool) -> int:
    """A `.pth` with the real B/L/H tensor shapes that stores one float: every tensor is a stride-0
    view of the same 1-element storage (torch.save writes storages, not views). Returns the
    parameter count."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in TransDiff(preset(size, **IMAGENET_GEOMETRY, mrar=mrar)).state_dict().items()}
    one = torch.zeros(1)
    state = to_published_keys({k: one.expand(s) for k, s in shapes.items()})
    torch.save({"model": state, "model_ema": state, "epoch": 799, "args": training_args(size, mrar)}, path)
    return sum(s.numel() for s in shapes.values())


def dry_run(*args) -> dict:
    result = runner.invoke(app, [str(a) for a in args] + ["--dry-run", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("mrar", [False, True], ids=["1step", "mrar"])
@pytest.mark.parametrize("size", ["B", "L", "H"])
def test_published_sizes_get_the_evaluation_table(tmp_path, fixtures, size, mrar):
    path = tmp_path / f"{NAMES[size]}{'_mrar' if mrar else ''}.pth"
    count = fake_published(path, size, mrar)
    assert path.stat().st_size < 200_000  # shapes of a 1.3B model, one float of data
    assert abs(count - PAPER_PARAMS[size]) / PAPER_PARAMS[size] < 0.03
    doc = dry_run("sample", "--ckpt", path, "--vae", f"kl16:{fixtures / 'vae_kl.ckpt'}",
                  "--class", "tiger", "--num", 50, "--out", tmp_path / "out")
    cfg, s0, s1 = TABLE[size, mrar]
    label = f"published table (TransDiff-{size}, {'MRAR' if mrar else '1-step'}, 256)"
    assert doc["checkpoint"]["size"] == size and doc["checkpoint"]["kind"] == "published"
    assert doc["checkpoint"]["parameters"] == count and doc["checkpoint"]["mrar"] is mrar
    assert doc["mode"] == ("mrar" if mrar else "1step") and doc["rounds"] == (4 if mrar else 1)
    assert doc["cfg"] == [cfg] * doc["rounds"] and (doc["scale_0"], doc["scale_1"]) == (s0, s1)
    assert doc["sampling_steps"] == 100 and doc["sampler"] == "em"
    assert all(doc["provenance"][k] == label for k in ("cfg", "scale_0", "scale_1", "sampling_steps", "sampler"))
    assert doc["classes"] == [{"index": 292, "name": "tiger"}] and doc["num_images"] == 50
    assert doc["tokenizer"]["kind"] == "kl16" and doc["precision"] == "auto" and doc["device"] == "cpu"
    assert doc["weights_dtype"] in ("float32", "bfloat16")
    assert not (tmp_path / "out").exists()
    if size == "L":  # flags win, and say so; fid --ckpt resolves the same way
        doc = dry_run("fid", "--ckpt", path, "--vae", f"kl16:{fixtures / 'vae_kl.ckpt'}", "--ref", "digits",
                      "--features", "digits", "--cfg", "1.5", "--sampling-steps", 50, "--out", tmp_path / "fid")
        assert doc["cfg"] == [1.5] * doc["rounds"] and doc["provenance"]["cfg"] == "flag"
        assert doc["sampling_steps"] == 50 and doc["provenance"]["sampling_steps"] == "flag"
        assert doc["scale_0"] == s0 and doc["provenance"]["scale_0"] == label
        assert doc["num_images"] == 50 * 1000 and doc["outputs"]["generated"].endswith("generated.npz")
        assert not (tmp_path / "fid").exists()


def test_l512_lookup():
    config = preset("L", **{**IMAGENET_GEOMETRY, "latent_size": 32})
    assert config.num_tokens == 1024
    label, values = published_table_entry(config)
    assert values == (1.30, 0.87, 0.87) and label == "published table (TransDiff-L, 1-step, 512)"
    d = checkpoint_defaults(config, published=True)
    assert (d.cfg, d.scale_0, d.scale_1, d.sampling_steps) == ([1.3], 0.87, 0.87, 100)
    # B or H at 512 were never published: the tool's generic defaults
    assert published_table_entry(preset("B", **{**IMAGENET_GEOMETRY, "latent_size": 32})) is None


def test_custom_size_512_file_never_uses_its_args(fixtures):
    """The 512 fixture's args say cfg 1.0 / scales 1.0 / "100" steps; it is a custom size, so its
    settings are the tool's generic defaults and say so (or, until the 512 geometry loads, one line)."""
    path = fixtures.parent / "official_512" / "transdiff_512.pth"
    result = runner.invoke(app, ["sample", "--ckpt", str(path), "--vae", f"kl16:{fixtures / 'vae_kl.ckpt'}",
                                 "--dry-run", "--device", "cpu"])
    if result.exit_code == 0:
        doc = json.loads(result.stdout)
        assert set(doc["provenance"][k] for k in ("cfg", "scale_0", "scale_1", "sampling_steps")) == {"tool default"}
        assert "args" not in json.dumps(doc["provenance"])
    else:
        lines = [x for x in result.output.strip().splitlines() if x.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output


def test_custom_size_published_fixture_ignores_saved_args(fixtures):
    """The 256 fixtures' args hold 1.3/0.89/0.95: saved args are never read, even when they look right."""
    doc = dry_run("sample", "--ckpt", fixtures / "transdiff_1step.pth", "--vae", f"kl16:{fixtures / 'vae_kl.ckpt'}")
    assert doc["cfg"] == [1.0] and doc["scale_0"] == 1.0 and doc["scale_1"] == 1.0
    assert doc["provenance"]["cfg"] == "tool default"


def test_own_checkpoint_keeps_its_settings_and_sampling_prints_them(tmp_path):
    config = ModelConfig(size="tiny", width=32, heads=2, encoder_depth=1, decoder_depth=1, num_classes=3,
                      latent_channels=1, latent_size=8, patch_size=2, sampling_steps=3, cfg=1.7, scale_0=0.9)
    model = TransDiff(config)
    ck = save_checkpoint(tmp_path / "ck", model.state_dict(), config,
                         {"tokenizer": {"kind": "pixels", "image_size": 8, "image_channels": 1}})
    doc = dry_run("sample", "--ckpt", ck, "--scale-1", "0", "--out", tmp_path / "out")
    assert doc["checkpoint"]["kind"] == "transdiff-cli"
    assert doc["checkpoint"]["parameters"] == sum(p.numel() for p in model.state_dict().values())
    assert (doc["cfg"], doc["scale_0"], doc["sampling_steps"]) == ([1.7], 0.9, 3)
    assert doc["provenance"]["cfg"] == "checkpoint" and doc["provenance"]["scale_1"] == "flag"
    assert doc["outputs"]["grid"].endswith("grid.png") and not (tmp_path / "out").exists()
    result = runner.invoke(app, ["sample", "--ckpt", str(ck), "--num", "1", "--class", "0", "--device", "cpu",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "sampling settings" in result.output and "(checkpoint)" in result.output
    info = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert info["settings"]["sources"]["cfg"] == "checkpoint"
