"""Shared CLI plumbing: user errors as one red line with a non-zero exit."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..core.errors import TransDiffError
from ..core.fs import cause

console = Console(stderr=True)

# the weights' dtype for sampling (sample, fid --ckpt, fuse)
SamplingPrecision = Annotated[str, typer.Option(
    "--precision", help="auto (bf16 where it is native: GPU, or a CPU with avx512_bf16/AMX; else fp32), "
    "fp32, bf16 (emulated, slower, on other CPUs) or fp16 (GPU)")]


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Warnings from the core as one yellow line, without Python's source-location prefix."""
    console.print(f"[yellow]warning:[/] {escape(str(message))}")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn TransDiffError, OSError (and Ctrl-C) into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except TransDiffError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # a full or read-only disk, a file where a folder should be
            where = f"{e.filename}: " if e.filename else ""
            typer.secho(f"error: {where}{cause(e)}", fg="red", err=True)
            raise typer.Exit(TransDiffError.exit_code) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", fg="yellow", err=True)
            raise typer.Exit(130) from None

    return wrapper


def print_settings(settings: Any) -> None:
    """The sampling settings and where each came from, at the start of a sampling command."""
    from ..core.eval_settings import describe

    console.print("sampling settings (provenance):", highlight=False)
    for line in describe(settings):
        console.print(line, highlight=False, markup=False)


def print_json(doc: Any) -> None:
    """One JSON object on stdout (--dry-run)."""
    import json

    typer.echo(json.dumps(doc, indent=1))


def not_implemented(command: str) -> None:
    typer.secho(f"error: `transdiff {command}` is not implemented yet in this release",
                fg="red", err=True)
    raise typer.Exit(2)
