"""Options shared by `train` and `finetune-mrar` (declared once, used in both signatures), and the end
of every training command (`report`, also for `distill`)."""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.text import Text

from ..core.distributed import check_gpus, relaunch_with_torchrun, under_torchrun
from ..core.schema import MODEL_SCHEMA, TRAIN_SCHEMA
from ..core.training.train_run import RunRequest
from ..core.training.trainer import TrainResult
from ._common import RichReporter, console

Data = Annotated[str | None, typer.Option(
    "--data", help="digits | shapes | an ImageNet-style image folder | an encode-latents folder")]
Vae = Annotated[str | None, typer.Option(
    "--vae", help="tokenizer for image folders: pixels | kl16:PATH | diffusers:DIR")]
ImageSize = Annotated[int | None, typer.Option("--image-size", help="resize images to this size")]
Config = Annotated[str | None, typer.Option(
    "--config", help="YAML file with `model:` / `train:` sections overriding the size preset")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="global batch size")]
GradAccum = Annotated[int | None, typer.Option("--grad-accum", help="gradient accumulation steps")]
Lr = Annotated[float | None, typer.Option("--lr", help="absolute learning rate")]
BaseLr = Annotated[float | None, typer.Option("--base-lr", help="lr = base lr x batch / 256")]
Schedule = Annotated[str | None, typer.Option("--schedule", help="constant | cosine after warm-up")]
Warmup = Annotated[int | None, typer.Option("--warmup-steps", help="linear lr warm-up, in steps")]
WarmupEpochs = Annotated[float | None, typer.Option(
    "--warmup-epochs", help="linear lr warm-up, in epochs (instead of --warmup-steps)")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", help="optimizer steps to train")]
Epochs = Annotated[float | None, typer.Option("--epochs", help="epochs to train (instead of steps)")]
EmaRate = Annotated[float | None, typer.Option("--ema-rate")]
Precision = Annotated[str | None, typer.Option(
    "--precision", help="auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16 | fp16")]
Seed = Annotated[int | None, typer.Option("--seed")]
CkptEvery = Annotated[int | None, typer.Option("--ckpt-every", help="checkpoint (+ grid) every N steps")]
LogEvery = Annotated[int | None, typer.Option("--log-every")]
Workers = Annotated[int | None, typer.Option("--num-workers", help="data-loader workers")]
GradCkpt = Annotated[bool, typer.Option("--grad-checkpointing", help="trade compute for memory")]
RunDirOpt = Annotated[str | None, typer.Option("--run-dir", help="run folder (default runs/<name>)")]
Name = Annotated[str | None, typer.Option("--name", help="run name under runs/")]
Resume = Annotated[bool | None, typer.Option(
    "--resume/--no-resume", help="continue the run folder's latest checkpoint (default: when one exists)")]
Device = Annotated[str | None, typer.Option("--device", help="cpu | cuda | cuda:N | mps (default: best)")]
Gpus = Annotated[int, typer.Option(
    "--gpus", help="processes per node; >1 relaunches through torchrun (with --device cpu: gloo)")]
Nnodes = Annotated[int, typer.Option("--nnodes")]
NodeRank = Annotated[int, typer.Option("--node-rank")]
MasterAddr = Annotated[str, typer.Option("--master-addr")]
MasterPort = Annotated[int, typer.Option("--master-port")]
EvalEvery = Annotated[int | None, typer.Option(
    "--eval-every", help="FID of the EMA model every N steps into metrics.jsonl and fid.png (0: off)")]
EvalImages = Annotated[int | None, typer.Option("--eval-images", help="images per evaluation (class-balanced)")]
EvalRef = Annotated[str | None, typer.Option(
    "--eval-ref", help="FID reference: image folder, .npz (ADM's), encode-latents folder or 'digits'")]
EvalFeatures = Annotated[str | None, typer.Option("--eval-features", help="inception | digits")]
EvalInception = Annotated[str | None, typer.Option(
    "--eval-inception-weights", help="torch-fidelity's InceptionV3 weights file (local)")]
Tensorboard = Annotated[bool, typer.Option(
    "--tensorboard", help="also log to runs/<name>/tensorboard (pip install -e \".[tensorboard]\")")]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="no progress bar (logs only)")]


def maybe_relaunch(gpus: int, nnodes: int, node_rank: int, master_addr: str, master_port: int,
                   device: str | None) -> None:
    """`--gpus N` (N > 1) or several nodes, outside torchrun: run this command under torchrun."""
    if under_torchrun() or (gpus == 1 and nnodes == 1):
        return
    check_gpus(gpus, "cpu" if (device or "").startswith("cpu") else "cuda")
    raise typer.Exit(relaunch_with_torchrun(gpus, nnodes, node_rank, master_addr, master_port))


# The options of both commands, declared once: (parameter, annotation, default). A parameter named
# like a training or model key is that key (`--lr` sets `lr`); unset options stay None so that the
# preset and the YAML file decide (core/training/run_plan.py has the precedence).
SHARED: list[tuple[str, Any, Any]] = [
    ("config", Config, None), ("data", Data, None), ("vae", Vae, None), ("image_size", ImageSize, None),
    ("batch_size", BatchSize, None), ("grad_accum", GradAccum, None), ("lr", Lr, None),
    ("base_lr", BaseLr, None), ("schedule", Schedule, None), ("warmup_steps", Warmup, None),
    ("warmup_epochs", WarmupEpochs, None), ("max_steps", MaxSteps, None), ("epochs", Epochs, None),
    ("ema_rate", EmaRate, None), ("precision", Precision, None), ("seed", Seed, None),
    ("ckpt_every", CkptEvery, None), ("log_every", LogEvery, None), ("num_workers", Workers, None),
    ("grad_checkpointing", GradCkpt, False), ("run_dir", RunDirOpt, None), ("name", Name, None),
    ("resume", Resume, None), ("device", Device, None), ("gpus", Gpus, 1), ("nnodes", Nnodes, 1),
    ("node_rank", NodeRank, 0), ("master_addr", MasterAddr, "127.0.0.1"), ("master_port", MasterPort, 29500),
    ("no_progress", NoProgress, False), ("eval_every", EvalEvery, None), ("eval_images", EvalImages, None),
    ("eval_ref", EvalRef, None), ("eval_features", EvalFeatures, None),
    ("eval_inception_weights", EvalInception, None), ("tensorboard", Tensorboard, False),
]


def with_train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command (declared with `**options`) the shared options after its own: typer reads
    the combined signature, the command receives the shared ones in `options`."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)  # the command module's string annotations
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
              for name, ann, default in SHARED]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        return fn(**kwargs)

    command.__signature__ = sig.replace(parameters=[
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared)  # type: ignore[attr-defined]
    command.__annotations__ = {**hints, **{name: ann for name, ann, _ in SHARED}}
    return command


def run_request(options: dict[str, Any], **fields: Any) -> RunRequest:
    """The shared options sorted into a RunRequest: training keys by their names, the rest by
    hand. `fields`: the command's own (size, init_from, finetune_from, ...)."""
    o = options
    maybe_relaunch(o["gpus"], o["nnodes"], o["node_rank"], o["master_addr"], o["master_port"], o["device"])
    train = {k: v for k, v in o.items() if k in TRAIN_SCHEMA and v is not None and v is not False}
    model = {k: v for k, v in o.items() if k in MODEL_SCHEMA and v is not None and v is not False}
    return RunRequest(
        config_file=o["config"], run_dir=o["run_dir"], name=o["name"], device=o["device"],
        resume=o["resume"], progress=not o["no_progress"], reporter=RichReporter(),
        model_overrides=model, train_overrides=train, **fields)


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
