"""`transdiff train`: train a 1-step TransDiff model."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.text import Text

from ..core.training.train_run import run_training
from ..core.training.trainer import TrainResult
from . import _train_options as o
from ._common import console, user_errors

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
        report(run_training(req))


def report(result: TrainResult) -> None:
    """Rank 0 says what happened; every rank exits 130 when a signal stopped the run."""
    s = result.summary
    if not result.is_main:
        if result.stopped_early:
            raise typer.Exit(130)
        return
    if result.stopped_early:
        console.print(f"stopped by {s['stopped_by']} at step {s['step']}; checkpoint saved "
                      f"to {s['checkpoint']} — run the same command again to resume", style="yellow")
    else:
        console.print(Text.assemble(("done", "green"), f": {s['step']} steps in {s['seconds']} s "
                                              f"({s['images_per_s']} images/s)"))
    console.print(f"checkpoint: {s['checkpoint']}\nsamples:    {s['grid']}")
    typer.echo(json.dumps(s))
    if result.stopped_early:
        raise typer.Exit(130)
