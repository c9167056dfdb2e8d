"""The CLI surface: every subcommand is registered and has a working --help with an example."""

import pytest
from typer.testing import CliRunner

from transdiff_cli.cli import app

COMMANDS = ["encode-latents", "train", "finetune-mrar", "sample", "fuse", "diversity", "fid"]
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
