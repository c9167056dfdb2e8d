"""The sampling options shared by `sample`, `fid --ckpt`, `fuse` and `diversity`, declared once
(as `_train_options` does for training). Defaults of None mean: the checkpoint's setting, or for a
published file the authors' evaluation table."""

from __future__ import annotations

from typing import Annotated

import typer

Vae = Annotated[str | None, typer.Option("--vae", help="tokenizer, e.g. kl16:PATH or kl16:hf://OWNER/REPO/PATH "
                                         "(default: the checkpoint's)")]
Mode = Annotated[str | None, typer.Option("--mode", help="1step or mrar (default: the checkpoint's kind)")]
Rounds = Annotated[int | None, typer.Option("--steps", help="MRAR rounds K (at most the trained K)")]
SamplingSteps = Annotated[int | None, typer.Option("--sampling-steps", help="sampler steps per image")]
Cfg = Annotated[str | None, typer.Option("--cfg", help="guidance scale, or one per MRAR step: 1,1.3,1.3,1.3")]
Scale0 = Annotated[float | None, typer.Option("--scale-0", help="Euler-Maruyama drift scale")]
Scale1 = Annotated[float | None, typer.Option("--scale-1", help="Euler-Maruyama noise scale")]
Sampler = Annotated[str | None, typer.Option("--sampler", help="em (Euler-Maruyama, default) or ode (plain Euler)")]
Seed = Annotated[int, typer.Option("--seed", help="noise seed (0 to 2**63-1)")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the decoder")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N, mps (default: best available)")]
Weights = Annotated[str, typer.Option("--weights", help="ema or model")]
Size = Annotated[str | None, typer.Option("--size", help="check the checkpoint is this size (B, L, H, ...)")]
# the weights' dtype for sampling
Precision = Annotated[str, typer.Option(
    "--precision", help="auto (bf16 where it is native: GPU, or a CPU with avx512_bf16/AMX; else fp32), "
    "fp32, bf16 (emulated, slower, on other CPUs) or fp16 (GPU)")]
