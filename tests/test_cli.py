"""The CLI surface: every subcommand is registered and has a working --help with an example."""

import pytest
from typer.testing import CliRunner

from transdiff_cli.cli import app

COMMANDS = ["encode-latents", "train", "finetune-mrar", "distill", "sample", "fuse", "diversity", "fid", "export",
            "figures"]
runner = CliRunner()


def test_help_lists_all_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_subcommand_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "transdiff " + name in result.output  # the example


def test_version():
    from transdiff_cli import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"transdiff {__version__}"


def test_python_dash_m():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "transdiff_cli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(name in r.stdout for name in COMMANDS)


def test_shell_completion():
    # what the installed completion script asks: the words so far, the one being completed
    env = {"_TRANSDIFF_COMPLETE": "complete_bash", "COMP_WORDS": "transdiff sample --sa", "COMP_CWORD": "2"}
    result = runner.invoke(app, [], env=env, prog_name="transdiff")
    assert result.exit_code == 0
    assert result.output.split() == ["--sampling-steps", "--sampler", "--sampler-param", "--save-rounds"]
    assert "--install-completion" in runner.invoke(app, ["--help"]).output


def test_renamed_flags_keep_working_unlisted(tiny, tmp_path):
    """--steps / --save-steps (MRAR rounds, before "step" meant only a sampler step) still work as
    --rounds / --save-rounds, with a note, and --help lists only the new names."""
    from conftest import png, run_cli

    common = ["sample", "--ckpt", tiny["mrar"], "--class", 3, "--num", 1, "--sampling-steps", 1, "--precision", "fp32"]
    new = run_cli([*common, "--rounds", 2, "--save-rounds", "--out", tmp_path / "new"])
    old = run_cli([*common, "--steps=2", "--save-steps", "--out", tmp_path / "old"])
    assert new.exit_code == old.exit_code == 0, (new.output, old.output)
    assert "note: --steps is now --rounds" in old.stderr and "note: --save-steps is now --save-rounds" in old.stderr
    assert "note:" not in new.stderr
    for name in ("00000_class3.png", "rounds/00000_class3_rounds.png"):
        assert (png(tmp_path / "new" / name) == png(tmp_path / "old" / name)).all(), name
    shown = runner.invoke(app, ["sample", "--help"], terminal_width=200).output
    assert "--rounds" in shown and "--save-rounds" in shown
    assert "--steps " not in shown and "--save-steps" not in shown
    # a command without the new flag does not learn the old one
    assert run_cli(["train", "--steps", 2]).exit_code == 2
