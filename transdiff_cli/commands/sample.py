"""`transdiff sample`: class-conditional images (1-step or MRAR) -> PNG files, a grid, an .npz."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.data.classes import class_label, resolve_classes
from ..core.device import resolve_device
from ..core.sampling.curvature import with_profile
from ..core.sampling.eval_settings import cost_line
from ..core.sampling.generate import check_num_images, generate_to_folder
from ..core.sampling.generate_npz import (
    SHARD_IMAGES,
    check_sample_shards,
    generate_folder_and_npz,
    generation_identity,
    sample_parts_dir,
    shard_size_for,
)
from ..core.sampling.inference import open_checkpoint, open_tokenizer
from ..core.sampling.memory import check_batch_fits
from ..core.sampling.outputs import ROUNDS, check_outputs, grid_rows
from ..core.sampling.settings import checkpoint_settings
from ..core.validate import check_seed
from . import _sampling_options as so
from ._common import console, help_text, print_json, print_settings, progress_bar, user_errors, warn

HELP = """Generate class-conditional images (1-step or MRAR) into PNG files and a grid.

Classes are indices, the checkpoint's own class names, or ImageNet names ("golden retriever",
"tiger"); --num images are drawn per class. Defaults (cfg, scales, sampling steps) come from the
checkpoint; a published B/L/H file gets the authors' evaluation settings for its size (never its
saved training args). The settings and where each came from are printed first; --dry-run prints
them as JSON and stops. The same --seed and --batch-size give identical files. A numeric --class is an index
unless only a class of that name exists; say which with index:10 or name:10.

Output: everything is written into a fresh folder beside --out that replaces it when done, so a
rerun never mixes old and new images and an interrupted run leaves the old outputs untouched. Only
files an earlier `sample` wrote (those its samples.json lists) are ever replaced: an --out holding
any other file, or an existing --npz this command did not write, is refused before any work unless
--overwrite is given. A symlinked --out is written through to its target.

With --npz the images are drawn into resumable shards first, kept beside the .npz
(NAME.parts/) or, when the .npz lies inside --out, beside --out (OUT.parts/): rerunning the same
command after an interruption continues from the finished shards and gives exactly the files of an
uninterrupted run. Shards of another checkpoint or other settings are refused. The PNGs, grid,
strips and the .npz are then written from the shards and the shards removed; rerunning a finished
command finds everything in place and does nothing.

Example:

    transdiff sample --ckpt runs/digits --class 7 --num 16

    transdiff sample --ckpt ck.pth --vae kl16:vae.ckpt --class tiger
"""


def register(app: typer.Typer) -> None:
    @app.command("sample", help=help_text(HELP))
    @user_errors
    def sample(
        ckpt: Path = typer.Option(None, "--ckpt", help="checkpoint folder, run folder, published .pth or "
                                  "hf://OWNER/REPO/FILE[@REV] (default: the newest run under runs/)"),
        vae: so.Vae = None,
        classes: list[str] = typer.Option(None, "--class", "-c", help="class index or name; repeat or "
                                          "comma-separate for several (default: every class)"),
        num: int = typer.Option(4, "--num", "-n", min=1, help="images per class"),
        mode: so.Mode = None,
        rounds: so.Rounds = None,
        sampling_steps: so.SamplingSteps = None,
        cfg: so.Cfg = None,
        cfg_interval: so.CfgInterval = None,
        scale_0: so.Scale0 = None,
        scale_1: so.Scale1 = None,
        sampler: so.Sampler = None,
        sampler_param: so.SamplerParam = None,
        seed: so.Seed = 0,
        out: Path = typer.Option(Path("samples"), "--out", "-o", help="output folder"),
        batch_size: int = typer.Option(16, "--batch-size", min=1),
        save_rounds: bool = typer.Option(False, "--save-rounds", help="also write a strip of each MRAR round"),
        npz: Path = typer.Option(None, "--npz", help="also write all images as an .npz (arr_0 uint8 NHWC); "
                                 "generation then resumes from finished shards"),
        shard_size: int = typer.Option(None, "--shard-size", min=1, help="--npz: images per resumable "
                                       "shard (rounded up to whole batches; default about 1024)"),
        precision: so.Precision = "auto",
        compile: so.Compile = False,
        device: so.Device = None,
        weights: so.Weights = "ema",
        size: so.Size = None,
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an --out holding files `sample` "
                                       "did not write, or an --npz it did not write (an earlier `sample` output is "
                                       "always replaced)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved run as JSON; write nothing"),
    ) -> None:
        opts = so.options(mode=mode, rounds=rounds, sampling_steps=sampling_steps, cfg=cfg, cfg_interval=cfg_interval,
                          scale_0=scale_0, scale_1=scale_1, sampler=sampler, sampler_param=sampler_param)
        if dry_run:
            from ..core.sampling.dry_run import generation_plan

            plan = generation_plan(ckpt, opts, weights=weights, size=size, vae=vae, classes=classes, num_per_class=num,
                                   precision=precision, device=device, seed=seed, batch_size=batch_size)
            plan["outputs"] = {"folder": str(out), "pngs": plan["num_images"], "grid": str(out / "grid.png"),
                               "info": str(out / "samples.json"), "npz": str(npz) if npz else None,
                               "rounds": str(out / ROUNDS) if save_rounds else None,
                               "shards": str(sample_parts_dir(out, npz)) if npz else None}
            print_json({"command": "sample", **plan})
            return
        check_outputs(out, npz, overwrite)  # every output path, before the checkpoint is even opened
        dev = resolve_device(device)
        ck = open_checkpoint(ckpt, weights=weights, size=size, device=dev, precision=precision, compile=compile)
        mc = ck.config
        notes: list[str] = []
        settings = checkpoint_settings(ck, opts, warnings=notes)
        if save_rounds and settings.rounds == 1:
            notes.append("--save-rounds: 1-step sampling has a single round; each strip holds one image")
        picked = resolve_classes(classes, mc.num_classes, ck.class_names, warnings=notes)
        if shard_size is not None and npz is None:
            notes.append("--shard-size is ignored without --npz")
        for note in notes:
            warn(note)
        check_num_images(len(picked) * num)  # before a list of that size is built
        labels = [y for y in picked for _ in range(num)]
        tokenizer = open_tokenizer(ck, vae, dev)
        check_seed(seed)  # fail before the work starts, not after minutes of sampling
        with_profile(ck.model, settings)  # a curvature grid is measured once the inputs are checked
        identity = None if npz is None else generation_identity(
            ck, weights=weights, settings=settings, seed=seed, labels=labels, batch_size=batch_size,
            shard_size=shard_size_for(batch_size, shard_size or SHARD_IMAGES), tokenizer=tokenizer,
            precision=precision, compile=compile, device=dev, save_rounds=save_rounds)
        if identity is not None:
            check_sample_shards(out, npz, identity)
        check_batch_fits(ck.model, tokenizer, min(batch_size, len(labels)), settings)
        print_settings(settings)
        names = ", ".join(f"{y} ({class_label(y, mc.num_classes, ck.class_names)})" for y in picked[:8])
        console.print(f"sampling {len(labels)} image(s) of {names}{' ...' if len(picked) > 8 else ''}: "
                      f"{settings.mode}, cfg {settings.cfg}, {settings.sampling_steps} {settings.sampler} steps, "
                      f"seed {seed}; {cost_line(settings, len(labels))}")
        options = dict(seed=seed, batch_size=batch_size, nrow=grid_rows(num) if len(picked) > 1 else None,
                       class_names=ck.class_names, info={"checkpoint": str(ck.path)}, overwrite=overwrite)
        with progress_bar() as bar:
            task = bar.add_task("sampling", total=len(labels))
            advance = lambda n: bar.advance(task, n)  # noqa: E731
            if identity is None:
                written = generate_to_folder(ck.model, tokenizer, labels, settings, out, save_rounds=save_rounds,
                                             on_batch=advance, **options)
            else:
                writing = bar.add_task("writing", total=len(labels), visible=False)

                def on_write(n: int) -> None:
                    bar.update(writing, advance=n, visible=True)

                try:
                    written = generate_folder_and_npz(ck.model, tokenizer, labels, settings, out, npz, identity,
                                                      on_batch=advance, on_write=on_write, **options)
                except KeyboardInterrupt:
                    console.print(f"finished shards are kept in {sample_parts_dir(out, npz)}: run the "
                                  "same command again to continue", style="yellow")
                    raise
        if written.done:
            console.print(f"nothing to do: {written.out}/ and {written.npz} already hold this run's "
                          f"{len(written.pngs)} image(s)")
            return
        console.print(f"wrote {len(written.pngs)} PNG(s) to {written.out}/, grid {written.grid}")
        if written.strips:
            console.print(f"wrote {len(written.strips)} round strip(s) to {written.out / ROUNDS}/")
        if written.npz:
            console.print(f"wrote {written.npz} (arr_0 {len(labels)} images, labels)")
        console.print(cost_line(settings, len(labels)))
