"""`transdiff export`: any checkpoint as a pickle-free model folder with a model card."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.io.hub import upload_folder
from ..core.share.export import export_model
from . import _sampling_options as so
from ._common import console, help_text, user_errors

HELP = """Export a checkpoint (a run folder, a checkpoint folder or a published .pth) as a model
folder: model.safetensors (EMA weights unless --weights raw), config.json (model config, tokenizer,
class names, the sampling settings with their provenance: the authors' table for a published file)
and README.md (a model card). Nothing in the folder is a pickle.

--ckpt, fid --ckpt and TransDiffPipeline.from_pretrained load the folder, also from the Hub as
hf://OWNER/REPO[@REV]. A model trained on VAE latents needs --vae at sampling time unless
--with-vae puts the VAE in the folder (vae/, safetensors). The folder is written beside --out and
renamed into place; an existing --out that is not an earlier export is refused without --overwrite.

Examples:

    transdiff export runs/digits-tiny --out digits-tiny-model
    transdiff export transdiff_l/checkpoint-last.pth --vae kl16:kl16.ckpt --with-vae --out transdiff-l
    transdiff export runs/digits-tiny --out m --push-to-hub me/digits-tiny
"""


def register(app: typer.Typer) -> None:
    @app.command("export", help=help_text(HELP))
    @user_errors
    def export_cmd(
        ckpt: str = typer.Argument(..., help="run folder, checkpoint folder, .pth or hf:// id"),
        out: Path = typer.Option(..., "--out", "-o", help="the model folder to write"),
        weights: str = typer.Option("ema", "--weights", help="ema (default) or raw"),
        vae: so.Vae = None,
        with_vae: bool = typer.Option(False, "--with-vae", help="include the VAE (safetensors) in the folder"),
        license: str = typer.Option(None, "--license", help="the card's license field (default: mit for the "
                                    "authors' published files, other for yours)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
        push_to_hub: str = typer.Option(None, "--push-to-hub", help="then upload the folder to this Hub repo "
                                        "(OWNER/REPO)"),
    ) -> None:
        weights = "raw" if weights == "model" else weights
        done = export_model(ckpt, out, weights=weights, vae=vae, with_vae=with_vae, overwrite=overwrite,
                            license=license)
        ev = done.config["evaluation"]
        source = ev["sources"].get("cfg", "?")
        console.print(f"wrote {out}/: {', '.join(done.files)}", highlight=False)
        console.print(f"sampling defaults: cfg {', '.join(f'{c:g}' for c in ev['cfg'])}, scale_0 {ev['scale_0']:g}, "
                      f"scale_1 {ev['scale_1']:g}, {ev['sampling_steps']} steps ({source})", highlight=False)
        if done.needs_vae:
            console.print(f"note: no VAE in the folder; sample it with --vae {done.needs_vae}:PATH, or export "
                          "again with --with-vae", highlight=False)
        if push_to_hub:
            url = upload_folder(out, push_to_hub)
            console.print(f"uploaded to hf://{push_to_hub}: {url}", highlight=False)
