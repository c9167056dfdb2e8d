"""`transdiff train`: Train a 1-step TransDiff model (CPU, 1 GPU, or many under torchrun)."""

from __future__ import annotations

import typer

from ._common import not_implemented, user_errors


def register(app: typer.Typer) -> None:
    @app.command("train", help="Train a 1-step TransDiff model (CPU, 1 GPU, or many under torchrun).\n\nExample:\n\n    transdiff train --size tiny --data digits --max-steps 600")
    @user_errors
    def train() -> None:
        not_implemented("train")
