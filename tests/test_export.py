"""`transdiff export` model folders: pixels equal to the source checkpoint's, no pickle, a parsing
model card, the authors' settings for published files, hf:// folders from an offline cache,
save_pretrained / push_to_hub."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from transdiff_cli import TransDiffPipeline
from transdiff_cli.cli import app
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.model.config import preset
from transdiff_cli.core.share.export import _with_evaluation_settings, export_model
from transdiff_cli.core.share.model_card import model_card

runner = CliRunner()
SHA = "89abcdef0123456789abcdef0123456789abcdef"


def pixels(pipe, **kw):
    out = pipe([3], sampling_steps=2, seed=7, progress=False, **kw)
    return np.stack([np.asarray(im) for im in out.images])


def front_matter(card: str) -> dict:
    _, head, _ = card.split("---\n", 2)
    return yaml.safe_load(head)


def assert_no_pickle(folder: Path) -> None:
    """Every file opens with safetensors, json or as text; none is a pickle or a torch zip."""
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        head = f.read_bytes()[:2]
        assert head not in (b"\x80\x02", b"\x80\x04", b"PK"), f
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as st:
                assert list(st.keys())
        elif f.suffix == ".json":
            json.loads(f.read_text())
        else:
            assert f.name == "README.md", f


def test_published_fixture_exports_to_a_folder_with_the_same_pixels(fixtures, tmp_path):
    pth, vae = fixtures / "transdiff_1step.pth", f"kl16:{fixtures / 'vae_kl.ckpt'}"
    done = export_model(pth, tmp_path / "m", vae=vae, with_vae=True)
    assert sorted(done.files) == ["README.md", "config.json", "model.safetensors", "vae/config.json",
                                  "vae/diffusion_pytorch_model.safetensors"]
    assert_no_pickle(tmp_path / "m")
    ref = TransDiffPipeline.from_pretrained(pth, vae=vae, device="cpu", precision="fp32")
    folder = TransDiffPipeline.from_pretrained(tmp_path / "m", device="cpu", precision="fp32")  # its own VAE
    assert np.array_equal(pixels(ref), pixels(folder))
    assert folder.settings().sources["cfg"] == "checkpoint: tool default"  # the export's provenance, kept
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["export"]["published"] and doc["export"]["weights"] == "ema"
    assert len(doc["export"]["source_sha256"]) == 64 and "published_training_args" in doc
    meta = front_matter((tmp_path / "m" / "README.md").read_text())
    assert meta["library_name"] == "transdiff" and meta["license"] == "mit" and "transdiff" in meta["tags"]

    # without the VAE the folder says which one it needs, on export and when sampling
    assert export_model(pth, tmp_path / "bare").needs_vae == "kl16"
    assert "--vae kl16:PATH" in (tmp_path / "bare" / "README.md").read_text()
    with pytest.raises(TransDiffError, match="kl16"):
        TransDiffPipeline.from_pretrained(tmp_path / "bare", device="cpu")


def test_published_sizes_export_the_authors_settings():
    """A published L file's folder carries the authors' table (never its saved cfg 1.0) and the
    paper's numbers in the card."""
    config = preset("L", latent_channels=16, latent_size=16, patch_size=1, num_classes=1000)
    config.cfg = config.scale_0 = config.scale_1 = 1.0  # what the saved args say
    ck = SimpleNamespace(config=config, published=True)
    new, evaluation = _with_evaluation_settings(ck)
    assert (new.cfg, new.scale_0, new.scale_1, new.sampling_steps) == (1.3, 0.89, 0.95, 100)
    assert evaluation["sources"]["cfg"] == "published table (TransDiff-L, 1-step, 256)"
    doc = {"evaluation": evaluation, "tokenizer": None, "class_names": None,
           "export": {"license": "mit", "base_model": "zhendch/Transdiff", "published": True, "weights": "ema",
                      "needs_vae": "kl16", "source": "transdiff_l/checkpoint-last.pth",
                      "source_file": "checkpoint-last.pth", "source_sha256": "0" * 64, "tool": "t"}}
    card = model_card(doc, new, "transdiff-l")
    assert front_matter(card)["base_model"] == "zhendch/Transdiff"
    assert "| 1.69 | 244.3 | 683M |" in card and "| `cfg` | 1.3 | published table" in card


def hub_cache(tmp_path, monkeypatch, folder: Path, repo: str) -> Path:
    """HF_HOME/hub in huggingface_hub's layout holding `folder` as repo `repo`; offline."""
    home = tmp_path / "hf_home"
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(SHA)
    snap = root / "snapshots" / SHA
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).symlink_to(f)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_folders_load_locally_and_from_the_hub_cache_and_save_pretrained(tmp_path, monkeypatch):
    from conftest import make_tiny

    ck = make_tiny(tmp_path / "ck")
    r = runner.invoke(app, ["export", str(ck), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert_no_pickle(tmp_path / "m")
    kw = dict(device="cpu", precision="fp32")
    want = pixels(TransDiffPipeline.from_pretrained(ck, **kw))
    assert np.array_equal(want, pixels(TransDiffPipeline.from_pretrained(tmp_path / "m", **kw)))

    # the CLI: --ckpt FOLDER samples what --ckpt CHECKPOINT does
    for name, src in (("a", ck), ("b", tmp_path / "m")):
        r = runner.invoke(app, ["sample", "--ckpt", str(src), "--class", "3", "--num", "2", "--precision", "fp32",
                                "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "grid.png").read_bytes() == (tmp_path / "b" / "grid.png").read_bytes()

    # an existing folder that is not an export is refused; an export is replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["export", str(ck), "--out", str(tmp_path / "other")])
    assert r.exit_code == 2 and "--overwrite" in r.output and (tmp_path / "other" / "notes.txt").is_file()
    assert runner.invoke(app, ["export", str(ck), "--out", str(tmp_path / "m"), "--weights", "raw"]).exit_code == 0

    # hf://OWNER/REPO[@REV] through an offline cache
    hub_cache(tmp_path, monkeypatch, tmp_path / "m", "me/tiny")
    for source in ("hf://me/tiny", f"hf://me/tiny@{SHA}"):
        assert np.array_equal(want, pixels(TransDiffPipeline.from_pretrained(source, **kw)))
    r = runner.invoke(app, ["sample", "--ckpt", "hf://me/other", "--num", "1", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "hf download me/other" in r.output, r.output

    # save_pretrained writes the same folder; push_to_hub offline names what it would upload
    pipe = TransDiffPipeline.from_pretrained(tmp_path / "m", **kw)
    pipe.save_pretrained(tmp_path / "saved")
    assert np.array_equal(want, pixels(TransDiffPipeline.from_pretrained(tmp_path / "saved", **kw)))
    with pytest.raises(TransDiffError, match=r"offline.*config\.json.*model\.safetensors.*hf://me/new"):
        pipe.push_to_hub("me/new")
