"""User text prints literally: the commands' console interprets no markup, every other rich console
and progress column in the commands is built with markup off, and no message relies on markup."""

import re
from pathlib import Path

from transdiff_cli.commands._common import console

COMMANDS = Path(__file__).resolve().parents[1] / "transdiff_cli" / "commands"


def test_the_shared_console_prints_markup_literally(capsys):
    console.print("[bold red]loud [/] path/[x]")
    assert "[bold red]loud [/] path/[x]" in capsys.readouterr().err.replace("\n", "")


def test_no_command_builds_a_console_or_column_that_reads_markup():
    tag = re.compile(r"\[/?(bold|yellow|green|red|dim|cyan|italic)\]|\[/\]")
    for p in sorted(COMMANDS.glob("*.py")):
        text = p.read_text()
        for call in re.findall(r"(?:Console|TextColumn)\((.*?)\)", text):
            constant = re.fullmatch(r'"[^{}\[]*"', call.strip())  # fixed text such as "ETA"
            numbers = "FIELD_FORMATS" in call or "task.fields" in call  # formatted numbers only
            assert constant or numbers or "markup=False" in call, (p.name, call)
        assert not tag.search(text), (p.name, tag.search(text).group(0))
