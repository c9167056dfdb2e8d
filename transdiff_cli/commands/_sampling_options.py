"""The sampling options shared by `sample`, `fid --ckpt`, `fuse` and `diversity`, declared once
(as `_train_options` does for training) and turned into one `SamplingOptions` by `options`. Defaults
of None mean: the checkpoint's setting, or for a published file the authors' evaluation table."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from ..core.errors import TransDiffError
from ..core.sampling.options import SamplingOptions
from ..core.sampling.samplers import SAMPLERS

Vae = Annotated[str | None, typer.Option("--vae", help="tokenizer, e.g. kl16:PATH or kl16:hf://OWNER/REPO/PATH "
                                         "(default: the checkpoint's)")]
Mode = Annotated[str | None, typer.Option("--mode", help="1step or mrar (default: the checkpoint's kind)")]
Rounds = Annotated[int | None, typer.Option("--rounds", help="MRAR rounds K (at most the trained K)")]
SamplingSteps = Annotated[str | None, typer.Option(
    "--sampling-steps", help="sampler steps per round, or one count per MRAR round: 8,8,8,50")]
Cfg = Annotated[str | None, typer.Option("--cfg", help="guidance scale, or one per MRAR round: 1,1.3,1.3,1.3")]
CfgInterval = Annotated[str | None, typer.Option(
    "--cfg-interval", help="guidance only at times t in LO,HI (t = 1 noise, 0 data); elsewhere the "
    "unconditional rows are not computed")]
Scale0 = Annotated[float | None, typer.Option("--scale-0", help="Euler-Maruyama drift scale")]
Scale1 = Annotated[float | None, typer.Option("--scale-1", help="Euler-Maruyama noise scale")]
Sampler = Annotated[str | None, typer.Option("--sampler", help=", ".join(
    f"{name} ({cls.summary})" for name, cls in SAMPLERS.items()) + "; default em")]
SamplerParam = Annotated[list[str] | None, typer.Option(
    "--sampler-param", "-P", help="a sampler parameter NAME=VALUE (repeat, or comma-separate): " + "; ".join(
        f"{name}: {', '.join(f'{p.name} ({p.help})' for p in cls.params().values()) or '-'}"
        for name, cls in SAMPLERS.items()))]
Seed = Annotated[int, typer.Option("--seed", help="noise seed (0 to 2**63-1)")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the decoder")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N, mps (default: best available)")]
Weights = Annotated[str, typer.Option("--weights", help="ema or model")]
Size = Annotated[str | None, typer.Option("--size", help="check the checkpoint is this size (B, L, H, ...)")]
# the weights' dtype for sampling
Precision = Annotated[str, typer.Option(
    "--precision", help="auto (bf16 where it is native: GPU, or a CPU with avx512_bf16/AMX; else fp32), "
    "fp32, bf16 (emulated, slower, on other CPUs) or fp16 (GPU)")]


def options(*, mode: str | None = None, rounds: int | None = None, sampling_steps: str | None = None,
            cfg: str | None = None, cfg_interval: str | None = None, scale_0: float | None = None,
            scale_1: float | None = None, sampler: str | None = None,
            sampler_param: list[str] | None = None) -> SamplingOptions:
    """The command line's sampling flags as one SamplingOptions (values parsed by the settings)."""
    return SamplingOptions.build(mode=mode, rounds=rounds, sampling_steps=sampling_steps, cfg=cfg,
                                 cfg_interval=cfg_interval, scale_0=scale_0, scale_1=scale_1, sampler=sampler,
                                 sampler_params=parse_params(sampler_param))


def parse_params(specs: list[str] | None) -> dict[str, str]:
    """["grid=shifted,shift=3", "scale_1=0"] -> {"grid": "shifted", "shift": "3", "scale_1": "0"}."""
    out: dict[str, str] = {}
    for spec in specs or []:
        for item in re.split(r",(?=\s*[A-Za-z_][\w-]*\s*=)", spec):
            name, eq, value = item.partition("=")
            if not eq or not name.strip() or not value.strip():
                raise TransDiffError(f"--sampler-param {item!r}: write NAME=VALUE")
            out[name.strip().replace("-", "_")] = value.strip()
    return out
