"""`transdiff finetune-mrar`: turn a 1-step checkpoint into a multi-reference (MRAR) model."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..core.training.train_run import run_training
from . import _train_options as o
from ._common import user_errors

HELP = """Fine-tune a 1-step checkpoint (ours or the published .pth) into a multi-reference (MRAR)
model: 64 (or data-sized) distinct mask tokens, z_proj for 2x2-patch references, block-causal
attention; trained on groups of K same-class images with teacher forcing: random ones, or the
fixed groups of --groups FILE (the authors' Imagenet2012_mrar_files.txt format). For B/L/H the
defaults are the authors' recipe (40 epochs, 10 warm-up epochs, lr 5e-5, batch 2048); the EMA
continues the source checkpoint's EMA.

Example:

    transdiff finetune-mrar --from runs/digits-tiny --max-steps 300
"""


def register(app: typer.Typer) -> None:
    @app.command("finetune-mrar", help=HELP)
    @user_errors
    @o.with_train_options
    def finetune_mrar(
        from_: Annotated[str, typer.Option("--from", help="1-step checkpoint (folder, run or .pth)")],
        mrar_rounds: Annotated[int | None, typer.Option("--mrar-rounds", help="K (default 4)")] = None,
        groups: Annotated[str | None, typer.Option(
            "--groups", help='fixed groups: JSON lines {"cate": CLASS, "files": [K names]} (default: random)')] = None,
        **options: Any,
    ) -> None:
        req = o.run_request(options, finetune_from=from_)
        if mrar_rounds is not None:
            req.model_overrides["mrar_rounds"] = mrar_rounds
        if groups is not None:
            req.train_overrides["groups"] = groups
        o.report(run_training(req))
