"""`transdiff distill`: a few-step decoder student from a teacher checkpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from ..core.training.distill import DistillRequest, run_distill
from . import _train_options as o
from ._common import user_errors

HELP = """Distil the diffusion decoder of a checkpoint (1-step or MRAR, ours or the published .pth
with --vae) into a few-step student. The teacher's guided Euler ODE (--teacher-steps, cfg = the
teacher's unless --cfg) is drawn once into a resumable pool of trajectories inside the run folder;
the student starts from the teacher's decoder and learns to cross each of the K = --student-steps
segments in one Euler step. The encoder and the embeddings stay frozen (the teacher's features).
The result is an ordinary checkpoint whose defaults are the student's (sampler ode, K steps,
cfg 1: guidance is distilled in), so sample, fid --ckpt, fuse and the API use it as it is.

Example:

    transdiff distill --from runs/digits-tiny            # -> runs/digits-tiny-distill4
    transdiff sample --ckpt runs/digits-tiny-distill4 --class 3 --num 16

    transdiff distill --from checkpoint-last.pth --vae kl16:kl16.ckpt --gpus 8 --eval-every 2000 \\
        --eval-ref VIRTUAL_imagenet256_labeled.npz
"""


def register(app: typer.Typer) -> None:
    @app.command("distill", help=HELP)
    @user_errors
    def distill(
        from_: Annotated[str, typer.Option("--from", help="teacher checkpoint (folder, run or .pth)")],
        student_steps: Annotated[int, typer.Option(
            "--student-steps", help="K: the student's Euler ODE steps (its network evaluations)")] = 4,
        teacher_steps: Annotated[int | None, typer.Option(
            "--teacher-steps", help="Euler ODE steps of the teacher's trajectories (a multiple of K; "
            "default 100)")] = None,
        cfg: Annotated[str | None, typer.Option(
            "--cfg", help="guidance scale distilled into the student (MRAR: one or one per round); "
            "default: the teacher's")] = None,
        pool_size: Annotated[int | None, typer.Option(
            "--pool-size", help="teacher trajectories (class-balanced); default per size")] = None,
        vae: o.Vae = None, config: o.Config = None, batch_size: o.BatchSize = None,
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
        run = o.run_request({**locals(), "data": None, "image_size": None, "vae": None})
        o.report(run_distill(DistillRequest(run, from_, vae=vae, student_steps=student_steps,
                                          teacher_steps=teacher_steps, cfg=cfg, pool_size=pool_size)))
