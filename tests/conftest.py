"""Shared test fixtures and helpers: the published-format parity fixtures, a tiny random-weight
checkpoint, the CLI runner and torch-fidelity's Inception with random weights. Test files take
the fixtures as arguments and import the helpers (`from conftest import make_tiny`), never from
each other."""

import json
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.io.checkpoint import save_checkpoint
from transdiff_cli.core.model.config import ModelConfig, preset
from transdiff_cli.core.model.transdiff import TransDiff

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURES = REPO.parent / "shared" / "fixtures" / "official"
DEFAULT_512 = REPO.parent / "shared" / "fixtures" / "official_512"

torch.set_num_threads(min(2, torch.get_num_threads()))


def fixture_dir() -> Path:
    return Path(os.environ.get("TRANSDIFF_PARITY_FIXTURES", DEFAULT_FIXTURES))


@pytest.fixture(scope="session")
def fixtures() -> Path:
    d = fixture_dir()
    if not (d / "manifest.json").is_file():
        pytest.fail(f"parity fixtures not found in {d} (set TRANSDIFF_PARITY_FIXTURES)")
    return d


@pytest.fixture(scope="session")
def fixtures512() -> Path:
    """The 512x512 published-format fixture folder (its sizes are in its manifest.json)."""
    d = Path(os.environ.get("TRANSDIFF_PARITY_512_FIXTURES", DEFAULT_512))
    if not (d / "manifest.json").is_file():
        pytest.fail(f"512 parity fixtures not found in {d} (set TRANSDIFF_PARITY_512_FIXTURES)")
    return d


@pytest.fixture(scope="session")
def manifest(fixtures: Path) -> dict:
    return json.loads((fixtures / "manifest.json").read_text())


# --------------------------------------------------------------------------- the CLI runner
runner = CliRunner()


def run_cli(args):
    """Run the CLI in-process (arguments may be paths or numbers); the result, whatever its exit code."""
    return runner.invoke(app, [str(a) for a in args])


def invoke(args):
    """Run the CLI and expect success."""
    result = run_cli(args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


# --------------------------------------------------------------------------- tiny checkpoints
DIGITS = [f"digit-{i}" for i in range(10)]
PIXELS_8x8 = {"kind": "pixels", "image_size": 8, "image_channels": 1, "scale_factor": 1.0}


def make_tiny(folder, mrar=False, num_classes=10, class_names=DIGITS, seed=0):
    """A random-weight 8x8 one-channel model in our folder format (weights large enough to give
    images that depend on class and noise); 3 sampling steps, cfg 1.5."""
    torch.manual_seed(seed)
    config = ModelConfig(size="tiny", width=32, heads=2, encoder_depth=1, decoder_depth=1, num_classes=num_classes,
                         latent_channels=1, latent_size=8, patch_size=2, mrar=mrar, sampling_steps=3, cfg=1.5)
    model = TransDiff(config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    meta = {"tokenizer": PIXELS_8x8, "class_names": class_names}
    return save_checkpoint(folder, model.state_dict(), config, meta, ema_state=model.state_dict())


def tiny_checkpoint(folder, num_classes=10, class_names=None):
    """Like `make_tiny`, with the model's own initialisation and 2 sampling steps: for the checks
    that only need a loadable checkpoint."""
    torch.manual_seed(0)
    config = ModelConfig(size="tiny", width=32, heads=2, encoder_depth=1, decoder_depth=1, num_classes=num_classes,
                         latent_channels=1, latent_size=8, patch_size=2, sampling_steps=2)
    model = TransDiff(config)
    meta = {"tokenizer": PIXELS_8x8, "class_names": class_names}
    return save_checkpoint(folder, model.state_dict(), config, meta, ema_state=model.state_dict())


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A 1-step and an MRAR `make_tiny` checkpoint, shared read-only by every test that asks."""
    root = tmp_path_factory.mktemp("tiny")
    return {"one": make_tiny(root / "one"), "mrar": make_tiny(root / "mrar", mrar=True)}


# bf16 against the float32 reference, relative to the output's scale (its max |value|). bf16 keeps
# 8 mantissa bits (relative rounding 2^-9 = 0.2%) and every linear layer rounds its output, so a
# ~10-layer network gives velocity errors of a few 2^-9; 25-50 sampler steps mostly average them
# (the fast path keeps the sampler state and the time embedding in float32). Measured: the fast
# path 0.6-0.8% of max|x| here (0.6% at the benchmark configuration, 25 steps); the plain bf16 path
# 1.2-1.4% here and 3.4% at the benchmark configuration. 4% bounds both with margin yet catches
# real bugs (a wrong modulation or a dropped CFG branch moves the output by tens of %).
BF16_REL_TOL = 4e-2


def make_model(mrar: bool, dtype=torch.float32) -> TransDiff:
    """An in-memory model with trained-looking weights (non-zero output layer, sizeable modulation)."""
    config = preset("tiny", width=64, heads=2, encoder_depth=1, decoder_depth=2, num_classes=5,
                    latent_channels=4, latent_size=8, patch_size=1, buffer_size=16, mrar=mrar)
    torch.manual_seed(0)
    model = TransDiff(config).eval()
    with torch.no_grad():
        for p in model.decoder.final_layer.parameters():
            p.normal_(std=0.1)
        for blk in model.decoder.res_blocks:
            blk.scale_shift_table.normal_(std=0.5)
    return model.to(dtype)


# --------------------------------------------------------------------------- Inception, offline
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def random_inception_weights(path):
    """torch-fidelity's InceptionV3 architecture with random (He-initialised, so activations neither
    vanish nor explode through ~100 layers) weights, saved in its own state-dict format at `path`."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    # the constructor loads weights: stub the loader (no download) and keep the random init
    with mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None), \
            mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=None)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """Random Inception weights under torch-fidelity's file name, built once per session."""
    return random_inception_weights(tmp_path_factory.mktemp("inception") / INCEPTION_FILE)


@pytest.fixture
def one_thread():
    """Tiny models: one thread avoids OpenMP hand-offs that dominate every small op on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
