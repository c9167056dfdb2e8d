"""`transdiff encode-latents`: images -> cached posterior moments (image + mirror) in sharded safetensors."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.data.latents import encode_latents as encode
from ..core.data.latents import read_manifest
from ..core.device import resolve_device
from ..core.distributed import cleanup, init_distributed
from ._common import RichReporter, console, user_errors

HELP = (
    "Encode images into cached latents (and those of their horizontal flips) for `train`.\n\n"
    "--data is `digits`, `shapes` or an ImageNet-style folder (DIR/train/<wnid or class>/*.JPEG); "
    "--vae is `pixels` (the default for digits/shapes), `kl16:PATH` (the MAR KL-16 checkpoint) or "
    "`diffusers:DIR` (a local AutoencoderKL folder). Unreadable images are skipped and listed in the "
    "manifest. Re-running the same command resumes an interrupted run. Under torchrun each process "
    "encodes its share of the shards.\n\n"
    "Example:\n\n"
    "    transdiff encode-latents --data digits --vae pixels --out latents/digits\n\n"
    "    transdiff encode-latents --data /data/imagenet --vae kl16:kl16.ckpt --out latents/in256\n\n"
    "    torchrun --nproc_per_node 8 -m transdiff_cli.cli encode-latents --data /data/imagenet "
    "--vae kl16:kl16.ckpt --out latents/in256\n"
)


def register(app: typer.Typer) -> None:
    @app.command("encode-latents", help=HELP)
    @user_errors
    def encode_latents(
        data: str = typer.Option(..., "--data", help="digits, shapes or an image folder"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder (created; resumed if it holds the same job)"),
        vae: str = typer.Option(None, "--vae", help="pixels, kl16:PATH or diffusers:DIR (default: pixels for "
                                "digits/shapes)"),
        image_size: int = typer.Option(None, "--image-size", min=1, help="image side in pixels (default: 8 for "
                                       "digits, 16 for shapes, 256 for folders)"),
        batch_size: int = typer.Option(64, "--batch-size", min=1),
        shard_size: int = typer.Option(1024, "--shard-size", min=1, help="images per shard file"),
        num_workers: int = typer.Option(None, "--num-workers", min=0, help="image decoding processes "
                                        "(default: 0 for digits/shapes, up to 8 for folders)"),
        device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:N, mps (default: best available)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    ) -> None:
        dev = resolve_device(device)
        dist = init_distributed(dev)
        try:
            folder = encode(data, vae, out, image_size=image_size, batch_size=batch_size, device=dev,
                            shard_size=shard_size, num_workers=num_workers, progress=not quiet, dist=dist,
                            reporter=RichReporter())
        finally:
            cleanup(dist)
        if not dist.is_main:
            return
        m = read_manifest(folder)
        c, h, w = m["latent_shape"]
        console.print(f"encoded {m['num_encoded']} image(s) (+ flips) of {len(m['class_names'])} classes into "
                      f"{m['num_shards']} shard(s) in {folder}/: latents {c}x{h}x{w}, scale {m['scale_factor']}")
        if m["skipped"]:
            console.print(f"skipped {m['num_skipped']} unreadable image(s) (listed in {folder}/manifest.json):",
                          style="yellow")
            for s in m["skipped"][:10]:
                console.print(f"  {s['file']}: {s['reason']}")
            if m["num_skipped"] > 10:
                console.print(f"  ... and {m['num_skipped'] - 10} more")
