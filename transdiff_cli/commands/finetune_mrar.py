"""`transdiff finetune-mrar`: turn a 1-step checkpoint into a multi-reference (MRAR) model."""

from __future__ import annotations

from typing import Annotated

import typer

from ..core.training.train_run import run_training
from . import _train_options as o
from ._common import user_errors
from .train import report

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
    def finetune_mrar(
        from_: Annotated[str, typer.Option("--from", help="1-step checkpoint (folder, run or .pth)")],
        mrar_steps: Annotated[int | None, typer.Option("--mrar-steps", help="K (default 4)")] = None,
        groups: Annotated[str | None, typer.Option(
            "--groups", help='fixed groups: JSON lines {"cate": CLASS, "files": [K names]} (default: random)')] = None,
        config: o.Config = None, data: o.Data = None, vae: o.Vae = None,
        image_size: o.ImageSize = None, batch_size: o.BatchSize = None,
        grad_accum: o.GradAccum = None, lr: o.Lr = None, base_lr: o.BaseLr = None,
        schedule: o.Schedule = None, warmup_steps: o.Warmup = None,
        warmup_epochs: o.WarmupEpochs = None, max_steps: o.MaxSteps = None,
        epochs: o.Epochs = None, ema_rate: o.EmaRate = None, precision: o.Precision = None,
        seed: o.Seed = None, ckpt_every: o.CkptEvery = None, log_every: o.LogEvery = None,
        num_workers: o.Workers = None, grad_checkpointing: o.GradCkpt = False,
        run_dir: o.RunDirOpt = None, name: o.Name = None, resume: o.Resume = None,
        device: o.Device = None, gpus: o.Gpus = 1, nnodes: o.Nnodes = 1, node_rank: o.NodeRank = 0,
        master_addr: o.MasterAddr = "127.0.0.1", master_port: o.MasterPort = 29500,
        no_progress: o.NoProgress = False, eval_every: o.EvalEvery = None, eval_images: o.EvalImages = None,
        eval_ref: o.EvalRef = None, eval_features: o.EvalFeatures = None,
        eval_inception_weights: o.EvalInception = None, tensorboard: o.Tensorboard = False,
    ) -> None:
        o.maybe_relaunch(gpus, nnodes, node_rank, master_addr, master_port, device)
        req = o.run_request(locals(), finetune_from=from_)
        if groups is not None:
            req.train_overrides["groups"] = groups
        report(run_training(req))
