"""`transdiff fid` offline: torch-fidelity's InceptionV3 with random weights built here (no download),
ADM-style statistics, the digits classifier's features and class fidelity, sharded generation."""

import contextlib
import json

import numpy as np
import pytest
import torch
from conftest import runner
from PIL import Image

from transdiff_cli.cli import app
from transdiff_cli.core.distributed import DistInfo
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.eval import features, fid
from transdiff_cli.core.eval.classifier import as_digit_images, class_fidelity, digits_dataset, load_digits_classifier
from transdiff_cli.core.eval.features import DigitsExtractor, statistics
from transdiff_cli.core.eval.fid import builtin_digits, compute_metrics, load_input
from transdiff_cli.core.io.checkpoint import save_checkpoint
from transdiff_cli.core.model.config import ModelConfig
from transdiff_cli.core.model.transdiff import TransDiff
from transdiff_cli.core.sampling import generate_npz


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
    monkeypatch.setattr(features, "FID_LAYER", "192")
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
    config = ModelConfig(size="tiny", width=32, heads=2, encoder_depth=1, decoder_depth=1, num_classes=10,
                      latent_channels=1, latent_size=8, patch_size=2, sampling_steps=2)
    model = TransDiff(config)
    meta = {"tokenizer": {"kind": "pixels", "image_size": 8, "image_channels": 1, "scale_factor": 1.0}}
    ck = save_checkpoint(tmp_path / "ck", model.state_dict(), config, meta)
    fid_cli("--ckpt", ck, "--ref", "digits", "--features", "digits", "--num-per-class", 2, "--class", "0,1,2",
            "--prc", "--out", tmp_path / "o")
    gen = np.load(tmp_path / "o" / "generated.npz")
    assert gen["arr_0"].shape == (6, 8, 8, 3) and gen["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["frechet_distance"] > 0 and 0 <= metrics["class_fidelity"] <= 1 and "recall" in metrics


def small_inception(monkeypatch):
    """CPU budget, same code paths (see test_inception_fid_same_and_different_folders)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)
    monkeypatch.setattr(features, "FID_LAYER", "192")


def test_adm_npz_fid_from_stats_pr_from_cached_arr0_features(inception_weights, tmp_path, monkeypatch):
    from transdiff_cli.core.eval import fid_reference

    small_inception(monkeypatch)
    rng = np.random.default_rng(0)
    ref_images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    gen_images = rng.integers(0, 128, (5, 16, 16, 3), dtype=np.uint8)
    extractor = features.make_extractor("inception", inception_weights)
    # ADM's layout; mu/sigma deliberately of the *generated* images: FID must come from them, not arr_0
    st = statistics(extractor(gen_images)[0])
    np.savez(tmp_path / "adm.npz", arr_0=ref_images, mu=st.mu, sigma=st.sigma)
    np.savez(tmp_path / "gen.npz", arr_0=gen_images)
    cache = tmp_path / "cache"
    args = ("--gen", tmp_path / "gen.npz", "--ref", tmp_path / "adm.npz", "--inception-weights", inception_weights,
            "--prc", "--cache-dir", cache, "--out", tmp_path / "o")
    fid_cli(*args)
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert abs(m["frechet_inception_distance"]) < 1e-3
    assert {"precision", "recall", "inception_score_mean"} <= set(m) and m["num_reference"] == 6
    cached = list((cache / "reference-features").iterdir())
    assert len(cached) == 1 and np.load(cached[0]).shape == (6, 192)
    # the next use reads the cache: arr_0 is never read again
    monkeypatch.setattr(fid_reference, "iter_npz_array", lambda *a, **k: pytest.fail("arr_0 re-extracted"))
    again = fid.prepare_reference(load_input(tmp_path / "adm.npz", allow_stats=True), extractor, prc=True,
                                  cache_dir=cache)
    assert torch.allclose(again.features, extractor(ref_images)[0], atol=1e-5)


def test_npz_without_stats_or_images_is_one_line(tmp_path):
    np.savez(tmp_path / "odd.npz", something=np.zeros(3))
    np.savez(tmp_path / "gen.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    r = runner.invoke(app, ["fid", "--gen", str(tmp_path / "gen.npz"), "--ref", str(tmp_path / "odd.npz"),
                            "--features", "digits", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "neither images (arr_0) nor statistics (mu, sigma)" in r.output
    assert "Traceback" not in r.output


def test_save_stats_round_trip_folder_and_latent_cache(tmp_path):
    from transdiff_cli.core.data.latents import encode_latents

    ref = builtin_digits()
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(300):  # more images than feature dims: a full-rank covariance
        Image.fromarray(ref.images[i, ..., 0]).save(folder / f"{i:04d}.png")
    fid_cli("--save-stats", tmp_path / "s.npz", "--ref", folder, "--features", "digits", "--with-images", 40)
    saved = np.load(tmp_path / "s.npz")
    assert saved["arr_0"].shape == (40, 8, 8, 3) and saved["arr_0"].dtype == np.uint8
    assert saved["mu"].shape == (128,) and saved["sigma"].shape == (128, 128)
    fid_cli("--gen", folder, "--ref", tmp_path / "s.npz", "--features", "digits", "--no-isc", "--out", tmp_path / "o")
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert abs(m["frechet_distance"]) < 1e-6 and "inception_score_mean" not in m
    # an encode-latents folder (pixels: an exact round trip) gives the statistics of its images
    lat = encode_latents("digits", "pixels", tmp_path / "lat", progress=False)
    fid_cli("--save-stats", tmp_path / "l.npz", "--ref", lat, "--features", "digits")
    fid_cli("--save-stats", tmp_path / "d.npz", "--ref", "digits", "--features", "digits")
    a, b = np.load(tmp_path / "l.npz"), np.load(tmp_path / "d.npz")
    assert np.allclose(a["mu"], b["mu"], atol=1e-6) and np.allclose(a["sigma"], b["sigma"], atol=1e-6)


def tiny_checkpoint(path, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(size="tiny", width=32, heads=2, encoder_depth=1, decoder_depth=1, num_classes=10,
                      latent_channels=1, latent_size=8, patch_size=2, sampling_steps=2)
    meta = {"tokenizer": {"kind": "pixels", "image_size": 8, "image_channels": 1, "scale_factor": 1.0}}
    return save_checkpoint(path, TransDiff(config).state_dict(), config, meta)


def test_resumed_fid_ckpt_equals_uninterrupted_and_other_jobs_are_refused(tmp_path, monkeypatch):
    ck = tiny_checkpoint(tmp_path / "ck")
    job = ("--ckpt", ck, "--ref", "digits", "--features", "digits", "--num-per-class", 4, "--class", "0,1,2",
           "--batch-size", 2, "--shard-size", 4)  # 12 images, 3 shards of 2 batches
    fid_cli(*job, "--out", tmp_path / "straight")
    straight = np.load(tmp_path / "straight" / "generated.npz")
    assert straight["arr_0"].shape == (12, 8, 8, 3) and not (tmp_path / "straight" / "generated.parts").exists()

    written = []
    real_write = generate_npz._write_shard

    def dies_after_first(*a, **k):
        if written:
            raise KeyboardInterrupt  # the process is killed between shards
        written.append(a[1])
        return real_write(*a, **k)

    monkeypatch.setattr(generate_npz, "_write_shard", dies_after_first)
    r = runner.invoke(app, ["fid", *map(str, job), "--out", str(tmp_path / "resumed")])
    assert r.exit_code == 130 and written == [0]
    parts = tmp_path / "resumed" / "generated.parts"
    assert sorted(p.name for p in parts.glob("shard-*")) == ["shard-00000.npz"]
    # shards of other settings are refused, not mixed in
    r = runner.invoke(app, ["fid", *map(str, job), "--cfg", "3", "--out", str(tmp_path / "resumed")])
    assert r.exit_code == 2 and "another job" in r.output and "cfg" in r.output

    monkeypatch.setattr(generate_npz, "_write_shard", lambda *a, **k: (written.append(a[1]), real_write(*a, **k))[1])
    fid_cli(*job, "--out", tmp_path / "resumed")
    assert written == [0, 1, 2]  # only the missing shards were drawn
    resumed = np.load(tmp_path / "resumed" / "generated.npz")
    assert np.array_equal(resumed["arr_0"], straight["arr_0"])
    assert resumed["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4 and not parts.exists()
    # a finished result of another checkpoint is refused too
    other = tiny_checkpoint(tmp_path / "other", seed=1)
    r = runner.invoke(app, ["fid", *map(str, job[2:]), "--ckpt", str(other), "--out", str(tmp_path / "resumed")])
    assert r.exit_code == 2 and "another job (checkpoint" in r.output.replace("\n", "")


def test_generation_shared_by_ranks_equals_one_process(tmp_path, monkeypatch):
    from transdiff_cli.core.io.checkpoint import load_checkpoint
    from transdiff_cli.core.sampling.inference import open_tokenizer
    from transdiff_cli.core.sampling.settings import sample_settings

    ck = load_checkpoint(tiny_checkpoint(tmp_path / "ck"))
    tok = open_tokenizer(ck, None, torch.device("cpu"))
    settings = sample_settings(ck.config)
    labels = [3, 1, 4, 1, 5, 9, 2]

    def run(path, info):
        ident = generate_npz.generation_identity(ck, weights="ema", settings=settings, seed=0, labels=labels,
                                                 batch_size=2, shard_size=2, tokenizer=tok, precision="fp32",
                                                 compile=False, device=torch.device("cpu"))
        return generate_npz.generate_npz(ck.model, tok, labels, settings, path, ident, batch_size=2, info=info)

    one = np.load(run(tmp_path / "one.npz", DistInfo()))["arr_0"]
    monkeypatch.setattr(generate_npz, "barrier", lambda info: None)  # no process group in this test
    run(tmp_path / "two.npz", DistInfo(rank=1, world_size=2))  # rank 1 of 2 draws shards 1 and 3
    assert sorted(p.name for p in (tmp_path / "two.parts").glob("shard-*")) == ["shard-00001.npz", "shard-00003.npz"]
    two = np.load(run(tmp_path / "two.npz", DistInfo()))["arr_0"]  # one process finishes 0 and 2, merges
    assert np.array_equal(one, two)


def test_sweep_two_values_and_unknown_axis(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck")
    job = ("--ckpt", ck, "--ref", "digits", "--features", "digits", "--num-per-class", 2, "--class", "0,1,2")
    fid_cli(*job, "--sweep", "sampling_steps=1,3", "--out", tmp_path / "o")
    doc = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert [p["sampling_steps"] for p in doc["points"]] == [1, 3] and doc["axes"] == {"sampling_steps": [1, 3]}
    fids = [p["frechet_distance"] for p in doc["points"]]
    assert fids[0] != fids[1] and all(f > 0 for f in fids)
    assert all("inception_score_mean" in p and "class_fidelity" in p for p in doc["points"])
    a = np.load(tmp_path / "o" / "sampling_steps=1" / "generated.npz")["arr_0"]
    b = np.load(tmp_path / "o" / "sampling_steps=3" / "generated.npz")["arr_0"]
    assert not np.array_equal(a, b)
    assert (tmp_path / "o" / "sweep.png").stat().st_size > 0
    assert (tmp_path / "o" / "sweep.md").read_text().count("\n") == 4  # header, rule, 2 rows
    r = runner.invoke(app, ["fid", *map(str, job), "--sweep", "temperature=1,2"])
    assert r.exit_code == 2 and "unknown axis 'temperature'" in r.output


def test_sweep_grid_of_two_axes_table_and_plot(tmp_path):
    from transdiff_cli.core.eval.sweep import parse_sweeps, point_name, sweep_points, write_sweep

    axes = parse_sweeps(["cfg=1.1,1.3", "scale-0=0.9,1"])
    points = sweep_points(axes)
    assert points == [{"cfg": 1.1, "scale_0": 0.9}, {"cfg": 1.1, "scale_0": 1.0},
                      {"cfg": 1.3, "scale_0": 0.9}, {"cfg": 1.3, "scale_0": 1.0}]
    assert point_name(points[1]) == "cfg=1.1,scale_0=1.0"
    rows = [{**p, "frechet_distance": 10 - i, "inception_score_mean": 2.0 + i} for i, p in enumerate(points)]
    written = write_sweep(tmp_path, axes, rows, "frechet_distance")
    table = written["table"].read_text().splitlines()
    assert table[0] == "| cfg | scale_0 | FID | IS |" and table[4] == "| 1.3 | 0.9 | 8.0000 | 4.0000 |"
    assert written["plot"].stat().st_size > 0
    for bad, msg in [(["steps=1,2"], "unknown axis"), (["cfg"], "AXIS=V1"), (["sampling_steps=1.5"], "integers"),
                     (["cfg=1", "cfg=2"], "twice"), (["cfg=1", "scale_0=1", "scale_1=1"], "at most two")]:
        with pytest.raises(TransDiffError, match=msg):
            parse_sweeps(bad)


def test_rank_split_draws_every_image_once():
    for n, shard, world in [(7, 2, 2), (12, 4, 3), (5, 8, 4), (1, 1, 1)]:
        counts = [generate_npz.rank_images(n, shard, DistInfo(rank=r, world_size=world)) for r in range(world)]
        assert sum(counts) == n
    assert [generate_npz.rank_images(7, 2, DistInfo(rank=r, world_size=2)) for r in range(2)] == [4, 3]


def test_evaluate_from_python_reports_through_its_reporter(tmp_path):
    from transdiff_cli.core.eval.engine import Generation, Measurement, evaluate
    from transdiff_cli.core.reporting import Reporter

    class Recorder(Reporter):
        def __init__(self):
            self.messages, self.bars = [], []

        def message(self, text):
            self.messages.append(text)

        def progress(self, description, total, completed=0, unit="", fields=None):
            self.bars.append([description, total, 0])
            return contextlib.nullcontext(lambda done=None, **kw: self.bars[-1].__setitem__(2, done))

    rec, ck = Recorder(), tiny_checkpoint(tmp_path / "ck")
    measurement = Measurement("digits", features="digits")
    generation = Generation(ck, classes=["0", "1"], num_per_class=2, batch_size=2, precision="fp32")
    metrics = evaluate(measurement, tmp_path / "o", generation=generation, reporter=rec)
    assert metrics == json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["num_generated"] == 4 and metrics["nfe"] == 2 and metrics["rows"] == 8
    assert rec.bars == [["rank 0", 4, 4]] and rec.messages[0] == "sampling settings (provenance):"
    assert any(m.startswith("generating 4 images (2 per class, 2 classes)") for m in rec.messages)
    assert rec.messages[-1] == f"wrote {tmp_path / 'o' / 'generated.npz'}"
    with pytest.raises(ValueError, match="exactly one of `gen`"):
        evaluate(measurement, tmp_path / "x")
