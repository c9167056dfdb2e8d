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
    assert result.output.split() == ["--sampling-steps", "--sampler", "--sampler-param", "--save-steps"]
    assert "--install-completion" in runner.invoke(app, ["--help"]).output
