"""`transdiff env`: what a bug report needs (versions, devices, CPU, what `auto` means here)."""

from __future__ import annotations

import json
from typing import Any

import typer

from ..core.environment import collect
from ._common import user_errors

HELP = """Print what a bug report needs: the versions of Python, torch and the libraries, the devices,
the CPU (ISA flags, torch's capability, native bf16, which fused kernels run), what --device auto and
--precision auto resolve to here and why, thread counts and the cache folders. Nothing is downloaded.

Paste its output into a bug report. $TRANSDIFF_PRECISION (auto, fp32, bf16) forces what auto means.

Example:

    transdiff env --json > env.json
"""


def _lines(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in record.items():
        if isinstance(value, dict):
            out += _lines(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def register(app: typer.Typer) -> None:
    @app.command("env", help=HELP)
    @user_errors
    def env_cmd(as_json: bool = typer.Option(False, "--json", help="print the record as JSON")) -> None:
        record = collect()
        if as_json:
            typer.echo(json.dumps(record, indent=2))
            return
        rows = _lines(record)
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            shown = json.dumps(value) if isinstance(value, list) else value
            typer.echo(f"{key:<{width}}  {shown}")  # plain text: no markup to escape
