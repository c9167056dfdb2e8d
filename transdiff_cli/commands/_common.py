"""Shared CLI plumbing: user errors as one red line with a non-zero exit, help text, progress bars and
the reporter that shows the core's messages. Every command imports from here, never from another command."""

from __future__ import annotations

import contextlib
import functools
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from ..core.errors import TransDiffError
from ..core.fs import cause
from ..core.reporting import Reporter, Update

# markup off: user text (class names, paths) prints literally; colour is given with `style`
console = Console(stderr=True, markup=False)

_PARAM = re.compile(r"`([a-z][a-z0-9_]*)`")


FLAGS: dict[str, str] = {}  # parameter name -> flag, for every option of the app (`register_flags`)


def register_flags(root: TyperCommand | TyperGroup) -> None:
    """Record every `--flag` of the app under its parameter spelling (scale_0 -> --scale-0), and under
    the Python name where that differs."""
    for cmd in [root, *getattr(root, "commands", {}).values()]:
        for param in cmd.params:
            flags = [opt for opt in getattr(param, "opts", []) if opt.startswith("--")]
            FLAGS.update({opt[2:].replace("-", "_"): opt for opt in flags})
            if flags and param.name:
                FLAGS.setdefault(param.name, flags[0])


def cli_words(text: str) -> str:
    """The core names parameters (`sampling_steps`, as the Python API spells them); on the command
    line those are flags (--sampling-steps). Other quoted words stay as they are."""
    return _PARAM.sub(lambda m: FLAGS.get(m.group(1), m.group(0)), text)


def warn(text: str) -> None:
    console.print(Text.assemble(("warning:", "yellow"), " ", cli_words(text)))


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Warnings from the core as one yellow line, without Python's source-location prefix."""
    warn(str(message))


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn TransDiffError, OSError (and Ctrl-C) into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except TransDiffError as e:
            typer.secho(f"error: {cli_words(str(e))}", fg="red", err=True)
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
    from ..core.sampling.eval_settings import settings_block

    for line in settings_block(settings):
        console.print(line, highlight=False, markup=False)


def help_text(text: str) -> str:
    """Join each prose paragraph into one line (rich keeps source line breaks and would wrap them
    twice); indented example lines stay as they are."""
    paragraphs = []
    for para in text.strip().split("\n\n"):
        lines = para.splitlines()
        paragraphs.append(para if lines[0].startswith("    ") else " ".join(ln.strip() for ln in lines))
    return "\n\n".join(paragraphs)


def print_json(doc: Any) -> None:
    """One JSON object on stdout (--dry-run)."""
    import json

    typer.echo(json.dumps(doc, indent=1))


class _Rate(ProgressColumn):
    """Units per second from the updates so far ("12.5 img/s"); a rate per second under one is shown
    the other way round ("2.0 s/img"), which reads better for slow runs."""

    def __init__(self, unit: str = "img/s") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text(f"-- {self.unit}")
        per, slash, seconds = self.unit.rpartition("/")
        if speed < 1 and slash and seconds == "s":
            return Text(f"{1 / speed:.1f} s/{per.removesuffix('s')}")  # images/s -> s/image
        return Text(f"{speed:,.1f} {self.unit}")


def progress_bar() -> Progress:
    """The sampling bar: advances after every batch, with the elapsed time and the rate so far."""
    return Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), _Rate(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


# how a named number beside a bar is shown
FIELD_FORMATS = {"loss": "loss {task.fields[loss]:.4f}", "lr": "lr {task.fields[lr]:.2e}"}


class RichReporter(Reporter):
    """The core's messages and progress on the terminal: rich bars with rate, elapsed time and ETA
    (`transient`: a bar is removed when done, as the sampling bars are)."""

    def __init__(self, transient: bool = False) -> None:
        self.transient = transient

    def message(self, text: str) -> None:
        console.print(cli_words(text), markup=False, highlight=False)

    def warning(self, text: str) -> None:
        warn(text)

    @contextlib.contextmanager
    def progress(self, description: str, total: int, completed: int = 0, unit: str = "",
                 fields: dict[str, Any] | None = None) -> Iterator[Update]:
        fields = dict(fields or {})
        columns: list[Any] = [TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                              MofNCompleteColumn()]
        columns += [TextColumn(FIELD_FORMATS.get(k, f"{k} {{task.fields[{k}]}}")) for k in fields if k != "ips"]
        if "ips" in fields:  # a rate the caller measures itself (images per second over its log window)
            columns.append(TextColumn("{task.fields[ips]:.0f} " + (unit or "/s")))
        elif unit:
            columns.append(_Rate(unit))
        columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=self.transient) as bar:
            task = bar.add_task(description, total=total, completed=completed, **fields)
            yield lambda done=None, **kw: bar.update(task, completed=done, **kw)
