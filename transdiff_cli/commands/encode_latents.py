"""`transdiff encode-latents`: Encode images into cached VAE/pixel latents (and their flips)."""

from __future__ import annotations

import typer

from ._common import not_implemented, user_errors


def register(app: typer.Typer) -> None:
    @app.command("encode-latents", help="Encode images into cached VAE/pixel latents (and their flips).\n\nExample:\n\n    transdiff encode-latents --data digits --vae pixels --out latents/digits")
    @user_errors
    def encode_latents() -> None:
        not_implemented("encode-latents")
