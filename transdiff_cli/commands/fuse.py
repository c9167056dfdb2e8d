"""`transdiff fuse`: decode a mix of two classes' semantic features next to the two classes."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..core.data.classes import class_label, resolve_class
from ..core.data.images import save_pngs
from ..core.device import resolve_device
from ..core.sampling.curvature import with_profile
from ..core.sampling.eval_settings import cost_line
from ..core.sampling.fuse import check_fuse, fuse, save_figure
from ..core.sampling.generate import latents_to_images
from ..core.sampling.inference import open_checkpoint, open_tokenizer
from ..core.sampling.settings import checkpoint_settings
from . import _sampling_options as so
from ._common import console, help_text, print_settings, user_errors

HELP = """Fuse the 1-step semantic features of two classes (paper §4.2.2) and decode the blend.

A --ratio share of the condition's slot positions comes from class A, the rest from class B
(--pattern halves: the first positions from A, as in the paper; interleave; random). A, the fused
condition and B are decoded from the same noise and written side by side (fuse.png), with the
single images and a fuse.json of what was done. Needs a 1-step checkpoint.

Example:

    transdiff fuse --ckpt ck.pth --vae kl16:kl16.ckpt --a macaw --b tiger
"""


def register(app: typer.Typer) -> None:
    @app.command("fuse", help=help_text(HELP))
    @user_errors
    def fuse_cmd(
        a: str = typer.Option(..., "--a", help="class A (index or name)"),
        b: str = typer.Option(..., "--b", help="class B (index or name)"),
        ckpt: Path = typer.Option(None, "--ckpt", help="1-step checkpoint (default: the newest run under runs/)"),
        vae: so.Vae = None,
        ratio: float = typer.Option(0.5, "--ratio", help="share of slot positions taken from class A"),
        pattern: str = typer.Option("halves", "--pattern", help="halves, interleave or random"),
        sampling_steps: so.SamplingSteps = None,
        cfg: so.Cfg = None,
        cfg_interval: so.CfgInterval = None,
        scale_0: so.Scale0 = None,
        scale_1: so.Scale1 = None,
        sampler: so.Sampler = None,
        sampler_param: so.SamplerParam = None,
        seed: so.Seed = 0,
        out: Path = typer.Option(Path("fuse"), "--out", "-o", help="output folder"),
        precision: so.Precision = "auto",
        compile: so.Compile = False,
        device: so.Device = None,
        weights: so.Weights = "ema",
    ) -> None:
        dev = resolve_device(device)
        ck = open_checkpoint(ckpt, weights=weights, device=dev, precision=precision, compile=compile)
        mc = ck.config
        opts = so.options(mode="1step", sampling_steps=sampling_steps, cfg=cfg, cfg_interval=cfg_interval,
                          scale_0=scale_0, scale_1=scale_1, sampler=sampler, sampler_param=sampler_param)
        settings = with_profile(ck.model, checkpoint_settings(ck, opts))
        ya, yb = (resolve_class(v, mc.num_classes, ck.class_names) for v in (a, b))
        tokenizer = open_tokenizer(ck, vae, dev)
        check_fuse(mc, ratio, pattern, seed)
        print_settings(settings)
        result = fuse(ck.model, ya, yb, settings, ratio=ratio, pattern=pattern, seed=seed)
        images = latents_to_images(tokenizer, result.latents)
        name_a, name_b = (class_label(y, mc.num_classes, ck.class_names) for y in (ya, yb))
        n_a = int(result.mask.sum())
        titles = [f"A: {name_a} ({ya})", f"fused: {n_a}/{result.mask.numel()} slots from A, {pattern}",
                  f"B: {name_b} ({yb})"]
        out.mkdir(parents=True, exist_ok=True)
        figure = save_figure(images, titles, out / "fuse.png")
        singles = save_pngs(images, out, ["a.png", "fused.png", "b.png"])
        doc = {"checkpoint": str(ck.path), "a": {"class": ya, "name": name_a}, "b": {"class": yb, "name": name_b},
               "ratio": ratio, "pattern": pattern, "seed": seed, "settings": settings.to_dict(),
               "slots": result.mask.numel(), "slots_from_a": [int(i) for i in result.mask.nonzero().flatten()],
               "figure": figure.name, "images": [p.name for p in singles]}
        (out / "fuse.json").write_text(json.dumps(doc, indent=1))
        console.print(f"{cost_line(settings, 3)}")
        console.print(f"wrote {figure} (A | fused | B), {', '.join(p.name for p in singles)} and fuse.json "
                      f"to {out}/")
