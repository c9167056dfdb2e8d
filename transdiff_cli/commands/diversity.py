"""`transdiff diversity`: The paper's cosine-similarity diversity measure of a checkpoint's features."""

from __future__ import annotations

import typer

from ._common import not_implemented, user_errors


def register(app: typer.Typer) -> None:
    @app.command("diversity", help="The paper's cosine-similarity diversity measure of a checkpoint's features.\n\nExample:\n\n    transdiff diversity runs/digits --json")
    @user_errors
    def diversity() -> None:
        not_implemented("diversity")
