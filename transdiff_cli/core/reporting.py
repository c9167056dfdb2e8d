"""How long-running core work reports to its caller: messages and progress go through a `Reporter`,
so nothing below the commands needs a terminal library. The CLI renders them with rich
(`commands/_common.RichReporter`); the default prints plain lines and draws no bar."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

# update(completed, **fields): the units done so far and the named numbers shown beside the bar
Update = Callable[..., None]


class Reporter:
    """Plain reporter: messages to stderr, progress ignored (scripts, logs, notebooks)."""

    def message(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def warning(self, text: str) -> None:
        self.message(f"warning: {text}")

    @contextlib.contextmanager
    def progress(self, description: str, total: int, completed: int = 0, unit: str = "",
                 fields: dict[str, Any] | None = None) -> Iterator[Update]:
        """A bar of `total` units; the yielded function moves it. `fields` are named numbers shown
        beside it (e.g. loss, lr), updated by keyword."""
        yield lambda completed=None, **kw: None


class SilentReporter(Reporter):
    def message(self, text: str) -> None:
        pass
