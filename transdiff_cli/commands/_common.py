"""Shared CLI plumbing: user errors as one red line with a non-zero exit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from ..core.errors import TransDiffError
from ..core.fs import cause

console = Console(stderr=True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn TransDiffError, OSError (and Ctrl-C) into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
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


def not_implemented(command: str) -> None:
    typer.secho(f"error: `transdiff {command}` is not implemented yet in this release",
                fg="red", err=True)
    raise typer.Exit(2)
