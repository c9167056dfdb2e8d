"""`transdiff figures`: every figure that applies, for a 1-step and an MRAR tiny model, deterministic."""

import json

from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.figures import slot_counts

runner = CliRunner()


def test_slot_counts_scale_with_the_model():
    assert slot_counts(256) == [16, 64, 128, 256]  # the paper's Figure 1 (middle)
    assert slot_counts(16) == [1, 4, 8, 16] and slot_counts(2) == [1, 2]


def test_figures_for_a_1step_and_an_mrar_model(tmp_path):
    from conftest import make_tiny

    names = ["zero", "one", "two", "three"]  # four classes keep Figure 5 (every class) small
    one, mrar = (make_tiny(tmp_path / n, mrar=n == "mrar", num_classes=4, class_names=names) for n in ("one", "mrar"))
    common = ["--classes", "0,1", "--device", "cpu", "--precision", "fp32", "--seed", "3"]
    r = runner.invoke(app, ["figures", str(one), "--out", str(tmp_path / "f1"), "--pairs", "one:3", *common])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "f1" / "figures.json").read_text())
    assert doc["figures"] == ["fig1_middle_features.png", "fig4_fuse.png", "fig5_diversity.png"]
    assert doc["fig1_middle"]["k"] == [1, 4, 8, 16] and doc["fig4_fuse"]["pairs"][0]["b"] == 3
    md = (tmp_path / "f1" / "figures.md").read_text()
    assert all(f"]({f})" in md for f in doc["figures"]) and "transdiff figures" in md and "--seed 3" in md
    assert all((tmp_path / "f1" / f).stat().st_size > 1000 for f in doc["figures"])

    r = runner.invoke(app, ["figures", str(mrar), "--compare", str(one), "--out", str(tmp_path / "f2"), *common])
    assert r.exit_code == 0, r.output
    doc2 = json.loads((tmp_path / "f2" / "figures.json").read_text())
    assert doc2["figures"] == ["fig1_middle_features.png", "mrar_rounds.png", "fig5_diversity.png"]
    per_class = doc2["fig5_diversity"]["per_class"]
    assert set(per_class) == {"MRAR", "1-step"} and per_class["1-step"] == doc["fig5_diversity"]["per_class"]["1-step"]

    # the same seed redraws the same figures; a folder of other files is refused
    r = runner.invoke(app, ["figures", str(one), "--out", str(tmp_path / "f1"), "--pairs", "one:3", *common])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "f1" / "figures.json").read_text()) == doc
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    r = runner.invoke(app, ["figures", str(one), "--out", str(tmp_path / "mine")])
    assert r.exit_code == 2 and "--overwrite" in r.output
