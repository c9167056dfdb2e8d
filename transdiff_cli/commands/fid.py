"""`transdiff fid`: FID / IS / precision-recall of generated images against a reference."""

from __future__ import annotations

import typer

from ._common import not_implemented, user_errors


def register(app: typer.Typer) -> None:
    @app.command("fid", help="FID / IS / precision-recall of generated images against a reference.\n\nExample:\n\n    transdiff fid --gen samples/ --ref ref_images/")
    @user_errors
    def fid() -> None:
        not_implemented("fid")
