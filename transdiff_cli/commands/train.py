"""`transdiff train`: train a 1-step TransDiff model."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..core.training.train_run import run_training
from . import _train_options as o
from ._common import user_errors

HELP = """Train a 1-step TransDiff model: CPU, one GPU, N GPUs (--gpus N relaunches through
torchrun) or N nodes. Without options it trains the small default model on the built-in digits.

Example:

    transdiff train --size tiny --data digits --max-steps 600

    transdiff train --size L --data latents/imagenet --gpus 8 --nnodes 4 --node-rank 0 \\
        --master-addr node0 --master-port 29500

    transdiff train --init-from runs/in256-L --data latents/in512 --only-train-diff --gpus 8
"""


def register(app: typer.Typer) -> None:
    @app.command("train", help=HELP)
    @user_errors
    @o.with_train_options
    def train(
        size: Annotated[str | None, typer.Option("--size", help="tiny | S | B | L | H")] = None,
        init_from: Annotated[str | None, typer.Option(
            "--init-from", help="start from this checkpoint (folder, run or .pth), at the data's "
            "resolution: the decoder position embedding is resized to the new token grid")] = None,
        only_train_diff: Annotated[bool, typer.Option(
            "--only-train-diff", help="with --init-from: train only the diffusion decoder "
            "(encoder, class and condition embeddings frozen), the paper's 512 recipe")] = False,
        **options: Any,
    ) -> None:
        req = o.run_request(options, size=size, init_from=init_from)
        if only_train_diff:
            req.train_overrides["only_train_diff"] = True
        o.report(run_training(req))

