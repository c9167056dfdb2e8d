"""Training: loss goes down, exact resume, torchrun equivalence, MRAR fine-tuning, bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.data.training_data import open_training_data
from transdiff_cli.core.device import Machine
from transdiff_cli.core.distributed import DistInfo
from transdiff_cli.core.model.config import preset
from transdiff_cli.core.model.transdiff import TransDiff
from transdiff_cli.core.training.run_dir import RunDir
from transdiff_cli.core.training.train_config import TrainConfig
from transdiff_cli.core.training.trainer import Trainer, epoch_indices

runner = CliRunner()
TINY = {"model": {"width": 32, "heads": 2, "encoder_depth": 1, "decoder_depth": 1,
                  "buffer_size": 4}}


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transdiff_cli.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


def common(tiny_yaml: Path, run: Path, steps: int) -> list[str]:
    return ["--config", str(tiny_yaml), "--run-dir", str(run), "--max-steps", str(steps),
            "--batch-size", "32", "--log-every", "1", "--ckpt-every", "1000", "--no-progress",
            "--device", "cpu"]


def test_epoch_indices_partition_the_global_batch():
    single = epoch_indices(100, 0, 3, 16, 8, 1, 0)
    r0 = epoch_indices(100, 0, 3, 16, 8, 2, 0)
    r1 = epoch_indices(100, 0, 3, 16, 8, 2, 1)
    # micro-batch i of the single process = rank 0's part then rank 1's part
    assert single[:8] == r0[:4] + r1[:4] and single[8:16] == r0[4:8] + r1[4:8]
    assert len(single) == 96


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tmp_path):
    data = open_training_data("digits")
    data.dataset = torch.utils.data.Subset(data.dataset, range(16))
    model_config = preset("tiny", **TINY["model"], latent_channels=1, latent_size=8, num_classes=10,
                  label_drop_prob=0.0)
    train_config = TrainConfig(batch_size=16, max_steps=60, base_lr=1e-2, warmup_steps=1, log_every=60,
                      ckpt_every=1000, grid_classes=2, grid_per_class=2, grid_sampling_steps=2)
    meta = {"tokenizer": data.tokenizer.spec(), "class_names": data.class_names}
    machine = Machine(torch.device("cpu"), DistInfo(), autocast=None, memory=None)
    trainer = Trainer(model_config, train_config, data, RunDir(tmp_path / "run"), machine, meta, progress=False)
    latents, labels = zip(*[data.dataset[i] for i in range(16)])
    latents, labels = torch.stack(latents), torch.tensor(labels)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(16 * model_config.diffusion_batch_mul, 16, 4, generator=g)
    times = torch.randint(100, 900, (16 * model_config.diffusion_batch_mul,), generator=g)

    def fixed_loss() -> float:
        trainer.model.train()
        with torch.no_grad():
            return trainer.model(latents, labels, noise=noise, timesteps=times,
                                 drop=torch.zeros(16, dtype=torch.bool)).item()

    before = fixed_loss()
    result = trainer.train()
    assert result.step == 60
    after = fixed_loss()
    assert after < 0.85 * before, (before, after)
    assert (tmp_path / "run" / "loss.png").is_file()
    assert (tmp_path / "run" / "samples" / "latest.png").is_file()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert {"loss", "lr", "images_per_s", "grad_norm"} <= set(rows[0])


def test_interrupted_run_resumes_to_identical_weights(tmp_path, tiny_yaml):
    steps = 24
    straight = tmp_path / "straight"
    r = cli("train", *common(tiny_yaml, straight, steps))
    assert r.returncode == 0, r.stderr

    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "transdiff_cli.cli", "train",
                             *common(tiny_yaml, interrupted, steps)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = interrupted / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # stopped early, checkpoint saved
    stopped_at = json.loads(out.strip().splitlines()[-1])["step"]
    assert 3 <= stopped_at < steps
    assert (interrupted / "checkpoints" / f"step_{stopped_at:07d}" / "train_state.pt").is_file()

    r = cli("train", *common(tiny_yaml, interrupted, steps))  # same command: resumes
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(straight / "checkpoints" / f"step_{steps:07d}" / name))
        b = load_file(str(interrupted / "checkpoints" / f"step_{steps:07d}" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    steps_logged = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))


def test_torchrun_two_processes_match_one(tmp_path, tiny_yaml):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    args = common(tiny_yaml, tmp_path / "r1", 1)
    r = cli("train", *args, env={"TRANSDIFF_DUMP_FIRST_GRADS": str(one)})
    assert r.returncode == 0, r.stderr
    args = common(tiny_yaml, tmp_path / "r2", 1)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        "--master_port=29611", "-m", "transdiff_cli.cli", "train", *args],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TRANSDIFF_DUMP_FIRST_GRADS": str(two),
                            "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    g1, g2 = torch.load(one), torch.load(two)
    assert g1.keys() == g2.keys() and len(g1) > 10
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-6, rtol=1e-4), k
    # rank 0 alone wrote one set of files
    ckpts = list((tmp_path / "r2" / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_0000001"]
    assert len((tmp_path / "r2" / "metrics.jsonl").read_text().splitlines()) == 1


def test_finetune_mrar_from_our_checkpoint(tmp_path, tiny_yaml):
    r = cli("train", *common(tiny_yaml, tmp_path / "one", 4))
    assert r.returncode == 0, r.stderr
    r = cli("finetune-mrar", "--from", str(tmp_path / "one"), "--run-dir", str(tmp_path / "mrar"),
            "--max-steps", "6", "--batch-size", "16", "--log-every", "1", "--no-progress",
            "--device", "cpu")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "mrar" / "checkpoints" / "step_0000006" / "config.json").read_text())
    assert doc["model"]["mrar"] and doc["model"]["width"] == 32
    losses = [json.loads(x)["loss"] for x in (tmp_path / "mrar" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(v == v for v in losses)
    from transdiff_cli.core.io.checkpoint import load_checkpoint

    model = load_checkpoint(tmp_path / "mrar").model
    assert model.mask_token.shape[1] == model.config.ref_tokens


def test_mrar_init_preserves_the_first_block():
    """The converted model's first MRAR block sees the same inputs as the 1-step slots."""
    from transdiff_cli.core.model.convert import init_mrar_from_1step, mrar_config

    one = preset("tiny", **TINY["model"], latent_channels=1, latent_size=8, num_classes=3)
    m1 = TransDiff(one)
    model_config = mrar_config(one)
    m2 = TransDiff(model_config)
    m2.load_state_dict(init_mrar_from_1step(m1.state_dict(), one, model_config))
    # a reference whose four tokens are equal projects like one token
    tok = torch.randn(1, 1, one.token_dim)
    ref = tok.view(1, one.latent_channels, one.patch_size, one.patch_size).repeat(1, 1, 2, 2)
    assert torch.allclose(m2.z_proj(ref.reshape(1, 1, -1)), m1.z_proj(tok), atol=1e-6)


@pytest.mark.parametrize("case", ["already_mrar", "not_checkpoint", "geometry", "gpus"])
def test_bad_inputs(tmp_path, fixtures, case, tiny_yaml):
    if case == "already_mrar":
        args = ["finetune-mrar", "--from", str(fixtures / "transdiff_mrar.pth"), "--data", "digits"]
        msg = "already an MRAR model"
    elif case == "not_checkpoint":
        junk = tmp_path / "junk.pth"
        junk.write_text("hello")
        args = ["finetune-mrar", "--from", str(junk), "--data", "digits"]
        msg = "not a readable checkpoint"
    elif case == "geometry":
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({"model": {**TINY["model"], "latent_size": 16}}))
        args = ["train", "--config", str(bad), "--data", "digits", "--run-dir", str(tmp_path / "r")]
        msg = "latent_size 16"
    else:
        args = ["train", "--gpus", "64", "--run-dir", str(tmp_path / "r")]
        msg = "--gpus 64"
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    lines = [x for x in result.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and msg in lines[0], result.output
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_finetune_mrar_from_published_checkpoint(tmp_path, fixtures, manifest):
    """The published 1-step fixture -> MRAR on KL-VAE latents of a small image folder -> sample."""
    import numpy as np
    from PIL import Image

    size = manifest["img_size"]
    vae = f"kl16:{fixtures / 'vae_kl.ckpt'}"
    rng = np.random.default_rng(0)
    for c in ("cats", "dogs"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / c / f"{i}.png")
    r = cli("encode-latents", "--data", str(tmp_path / "imgs"), "--vae", vae, "--out",
            str(tmp_path / "lat"), "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    cheap_grid = tmp_path / "grid.yaml"  # the end-of-run grid: 2 images, 2 sampler steps (the old key)
    cheap_grid.write_text(yaml.safe_dump({"train": {"grid_classes": 2, "grid_per_class": 1,
                                                    "sample_steps": 2}}))
    r = cli("finetune-mrar", "--from", str(fixtures / "transdiff_1step.pth"), "--data",
            str(tmp_path / "lat"), "--run-dir", str(tmp_path / "mrar"), "--max-steps", "2",
            "--batch-size", "4", "--no-progress", "--device", "cpu", "--config", str(cheap_grid))
    assert r.returncode == 0, r.stderr
    r = cli("sample", "--ckpt", str(tmp_path / "mrar"), "--mode", "mrar", "--class", "1", "--num", "1",
            "--sampling-steps", "2", "--out", str(tmp_path / "samples"), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    pngs = [p for p in (tmp_path / "samples").glob("*.png") if p.name != "grid.png"]
    assert len(pngs) == 1 and Image.open(pngs[0]).size == (size, size)
