"""`transdiff figures`: the paper's qualitative figures from a checkpoint, as PNGs and figures.md."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer

from ..figures import make_figures, parse_pairs
from ..pipeline import TransDiffPipeline
from . import _sampling_options as so
from ._common import console, help_text, user_errors

HELP = """Draw the paper's qualitative figures from a checkpoint into --out: Figure 1 (middle), the
decoder given only the first k of the n semantic features (k = n/16, n/4, n/2, n); Figure 1
(bottom) / Figure 4, fused features of class pairs (--pairs, 1-step models); the image after every
MRAR round (MRAR models); Figure 5, the diversity measure per class, beside a second checkpoint's
with --compare. Writes PNGs, figures.json (the numbers) and figures.md (the figures with this
command and its settings). The same --seed gives the same files.

Examples:

    transdiff figures runs/digits-tiny --out figures
    transdiff figures runs/digits-tiny-mrar --compare runs/digits-tiny --out figures-mrar
    transdiff figures transdiff_l.pth --vae kl16:kl16.ckpt --pairs macaw:tiger,88:292 --out figs
"""


def register(app: typer.Typer) -> None:
    @app.command("figures", help=help_text(HELP))
    @user_errors
    def figures_cmd(
        ckpt: str = typer.Argument(None, help="checkpoint (default: the newest run under runs/)"),
        out: Path = typer.Option(Path("figures"), "--out", "-o", help="output folder"),
        classes: str = typer.Option(None, "--classes", help="rows of the image figures, e.g. 0,3,7 "
                                    "(default: the first four classes)"),
        pairs: str = typer.Option(None, "--pairs", help="class pairs to fuse, e.g. macaw:tiger,3:8 "
                                  "(default: 0:1,2:3,4:5)"),
        compare: str = typer.Option(None, "--compare", help="a second checkpoint for Figure 5 (e.g. the 1-step "
                                    "model an MRAR model was fine-tuned from)"),
        vae: so.Vae = None,
        cfg: float = typer.Option(None, "--cfg", help="guidance scale (default: the checkpoint's)"),
        sampling_steps: so.SamplingSteps = None,
        seed: so.Seed = 0,
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an --out that holds other files"),
        precision: so.Precision = "auto",
        device: so.Device = None,
        weights: so.Weights = "ema",
    ) -> None:
        pipe = TransDiffPipeline.from_pretrained(ckpt, vae=vae, device=device, precision=precision, weights=weights)
        other = (TransDiffPipeline.from_pretrained(compare, vae=vae, device=device, precision=precision,
                                                   weights=weights) if compare else None)
        rows = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        command = _command(ckpt, out=out, classes=classes, pairs=pairs, compare=compare, vae=vae, cfg=cfg,
                           sampling_steps=sampling_steps, seed=seed, precision=precision, weights=weights)
        done = make_figures(pipe, out, classes=rows, pairs=parse_pairs(pairs), compare=other, seed=seed, cfg=cfg,
                            sampling_steps=sampling_steps, command=command, overwrite=overwrite,
                            note=lambda text: console.print(text, highlight=False, markup=False))
        console.print(f"wrote {', '.join(f.file for f in done.figures)}, figures.json and figures.md to {out}/",
                      highlight=False)
        for why in done.skipped:
            console.print(f"skipped {why}", highlight=False, markup=False)


def _command(ckpt: str | None, **options: Any) -> str:
    """The command line that redraws these figures (every option that differs from its default)."""
    defaults = {"precision": "auto", "weights": "ema", "seed": 0}
    words = ["transdiff", "figures"] + ([str(ckpt)] if ckpt else [])
    for name, value in options.items():
        if value is not None and value != defaults.get(name):
            words += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(words)
