"""`transdiff finetune-mrar`: Fine-tune a 1-step checkpoint into a multi-reference (MRAR) model."""

from __future__ import annotations

import typer

from ._common import not_implemented, user_errors


def register(app: typer.Typer) -> None:
    @app.command("finetune-mrar", help="Fine-tune a 1-step checkpoint into a multi-reference (MRAR) model.\n\nExample:\n\n    transdiff finetune-mrar --from runs/digits --max-steps 300")
    @user_errors
    def finetune_mrar() -> None:
        not_implemented("finetune-mrar")
