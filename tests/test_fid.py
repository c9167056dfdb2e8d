"""`transdiff fid` offline: torch-fidelity's InceptionV3 with random weights built here (no download),
ADM-style statistics, the digits classifier's features and class fidelity, sharded generation."""

import json
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core import fid
from transdiff_cli.core.checkpoint import save_checkpoint
from transdiff_cli.core.classifier import as_digit_images, class_fidelity, digits_dataset, load_digits_classifier
from transdiff_cli.core.config import ModelConfig
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.fid import DigitsExtractor, builtin_digits, compute_metrics, load_input, statistics
from transdiff_cli.core.generate import merge_shards, write_shard
from transdiff_cli.core.model import TransDiff

runner = CliRunner()


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 architecture with random (He-initialised, so activations neither
    vanish nor explode through ~100 layers) weights, saved in its own state-dict format."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    # the constructor loads weights: stub the loader (no download) and keep the random init
    with mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None), \
            mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=None)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def image_folder(folder, seed, low, high, n=3, size=16):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(low, high, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def fid_cli(*args):
    result = runner.invoke(app, ["fid", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_inception_fid_same_and_different_folders(inception_weights, tmp_path, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # CPU budget, same code paths: the extractor's internal resize goes to 75 (Inception's smallest
    # input) instead of 299, and FID uses the 192-dim pool after Conv2d_4a instead of the 2048-dim
    # pool3, whose 2048x2048 eigen-decomposition in torch-fidelity's Frechet distance takes seconds here
    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)
    monkeypatch.setattr(fid, "FID_LAYER", "192")
    a = image_folder(tmp_path / "a", 0, 0, 256)
    b = image_folder(tmp_path / "b", 1, 0, 96)  # darker, other images
    fid_cli("--gen", a, "--ref", a, "--inception-weights", inception_weights, "--out", tmp_path / "same")
    same = json.loads((tmp_path / "same" / "metrics.json").read_text())
    fid_cli("--gen", a, "--ref", b, "--inception-weights", inception_weights, "--isc", "--out", tmp_path / "diff")
    diff = json.loads((tmp_path / "diff" / "metrics.json").read_text())
    assert abs(same["frechet_inception_distance"]) < 1e-3
    assert diff["frechet_inception_distance"] > 0.05 and np.isfinite(diff["frechet_inception_distance"])
    assert diff["inception_score_mean"] >= 1.0 and same["num_generated"] == 3
    assert same["inception_weights"] == str(inception_weights)


def test_missing_inception_weights_says_which_file_and_where(tmp_path):
    a = image_folder(tmp_path / "a", 0, 0, 256, n=2)
    result = runner.invoke(app, ["fid", "--gen", str(a), "--ref", str(a),
                                 "--inception-weights", str(tmp_path / "nope.pth")])
    assert result.exit_code == 2
    assert str(tmp_path / "nope.pth") in result.output
    assert "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" \
           "weights-inception-2015-12-05-6726825d.pth" in result.output.replace("\n", "")


def test_reference_statistics_npz(tmp_path):
    # ADM-style mu/sigma of the built-in digits: the digits themselves are at distance ~0 from them
    ref = builtin_digits()
    extractor = DigitsExtractor()
    feats, _ = extractor(ref.images)
    st = statistics(feats)
    np.savez(tmp_path / "stats.npz", mu=st.mu.astype(np.float32), sigma=st.sigma.astype(np.float32))
    np.savez(tmp_path / "gen.npz", arr_0=ref.images, labels=ref.labels)
    fid_cli("--gen", tmp_path / "gen.npz", "--ref", tmp_path / "stats.npz", "--features", "digits",
            "--out", tmp_path / "o")
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert abs(metrics["frechet_distance"]) < 1e-3  # float32 statistics, as in ADM's files
    assert metrics["class_fidelity"] > 0.99
    with pytest.raises(TransDiffError, match="reference images"):
        compute_metrics(load_input(tmp_path / "gen.npz"), load_input(tmp_path / "stats.npz", allow_stats=True),
                        extractor, prc=True)


def test_digits_features_fid_orders_real_above_noise():
    ref = builtin_digits()
    extractor = DigitsExtractor()
    half = load_input("digits")
    half.images, half.labels = ref.images[::2], ref.labels[::2]
    rng = np.random.default_rng(0)
    noise = type(ref)(rng.integers(0, 256, (300, 8, 8, 1), dtype=np.uint8), None, "noise")
    real = compute_metrics(half, ref, extractor, isc=True, prc=True)
    fake = compute_metrics(noise, ref, extractor, isc=True, prc=True)
    assert 0 <= real["frechet_distance"] < 0.1 * fake["frechet_distance"]
    assert real["class_fidelity"] > 0.99 and "class_fidelity" not in fake  # noise has no labels
    assert real["inception_score_mean"] > 5 > fake["inception_score_mean"]
    assert real["precision"] > fake["precision"]


def test_digits_classifier_and_class_fidelity():
    clf = load_digits_classifier()
    assert float(clf.metadata["test_accuracy"]) >= 0.98
    x, y = digits_dataset()
    assert x.shape[1:] == (1, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert class_fidelity(x[:300], y[:300]) > 0.98
    assert class_fidelity(x[:300], (y[:300] + 1) % 10) < 0.05  # wrong labels are caught
    big = torch.nn.functional.interpolate(x[:50], size=32, mode="nearest").repeat(1, 3, 1, 1)
    assert torch.allclose(as_digit_images(big), x[:50], atol=1e-5)  # resized, grey, same digits
    u8 = ((x[:50] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert torch.equal(clf.predict(u8), clf.predict(x[:50]))
    assert clf.features(x[:4]).shape == (4, 128)


def test_fid_from_checkpoint_digits(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(size="tiny", width=32, heads=2, encoder_depth=1, decoder_depth=1, num_classes=10,
                      latent_channels=1, latent_size=8, patch_size=2, sampling_steps=2)
    model = TransDiff(cfg)
    meta = {"tokenizer": {"kind": "pixels", "image_size": 8, "image_channels": 1, "scale_factor": 1.0}}
    ck = save_checkpoint(tmp_path / "ck", model.state_dict(), cfg, meta)
    fid_cli("--ckpt", ck, "--ref", "digits", "--features", "digits", "--num-per-class", 2, "--class", "0,1,2",
            "--prc", "--out", tmp_path / "o")
    gen = np.load(tmp_path / "o" / "generated.npz")
    assert gen["arr_0"].shape == (6, 8, 8, 3) and gen["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["frechet_distance"] > 0 and 0 <= metrics["class_fidelity"] <= 1 and "recall" in metrics


def test_shards_merge_in_global_order(tmp_path):
    path = tmp_path / "g.npz"
    images = np.arange(5)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3).astype(np.uint8)
    write_shard(path, 0, images[[0, 2, 4]], [0, 2, 4])  # rank 0 of 2 draws images 0, 2, 4
    write_shard(path, 1, images[[1, 3]], [1, 3])
    merge_shards(path, 2, [7, 7, 8, 8, 9])
    data = np.load(path)
    assert np.array_equal(data["arr_0"], images) and data["labels"].tolist() == [7, 7, 8, 8, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz"]
