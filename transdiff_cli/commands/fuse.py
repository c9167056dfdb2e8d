"""`transdiff fuse`: Mix the semantic features of two classes and decode the blend."""

from __future__ import annotations

import typer

from ._common import not_implemented, user_errors


def register(app: typer.Typer) -> None:
    @app.command("fuse", help="Mix the semantic features of two classes and decode the blend.\n\nExample:\n\n    transdiff fuse --ckpt runs/shapes --a red-circle --b blue-square")
    @user_errors
    def fuse() -> None:
        not_implemented("fuse")
