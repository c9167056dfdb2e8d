"""`transdiff sample`: Generate class-conditional images (1-step or MRAR) into PNG files and a grid."""

from __future__ import annotations

import typer

from ._common import not_implemented, user_errors


def register(app: typer.Typer) -> None:
    @app.command("sample", help="Generate class-conditional images (1-step or MRAR) into PNG files and a grid.\n\nExample:\n\n    transdiff sample --ckpt runs/digits --class 7 --num 16")
    @user_errors
    def sample() -> None:
        not_implemented("sample")
