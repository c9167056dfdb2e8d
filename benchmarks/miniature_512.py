"""The paper's 512×512 recipe in miniature, on a CPU: train a small model on `shapes` at 8×8, then
fine-tune only its diffusion decoder at 16×16 from that run (`train --init-from --image-size 16
--only-train-diff`: same encoder and condition slots, the decoder's 4×4 position grid grown to
8×8 by bicubic interpolation), and sample the same classes at both resolutions.

Writes figure.png (row 1: the 8×8 model, row 2: the 16×16 fine-tune, same classes and seeds,
both shown at 64×64 with nearest-neighbour upscaling) and results.json into --out. Run from the
repository root:

    python benchmarks/miniature_512.py --out benchmarks/miniature_512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transdiff_cli.core.data.images import to_uint8  # noqa: E402
from transdiff_cli.core.data.tokenizer_spec import load_tokenizer  # noqa: E402
from transdiff_cli.core.io.checkpoint import load_checkpoint  # noqa: E402
from transdiff_cli.core.sampling.loop import sample_rounds  # noqa: E402
from transdiff_cli.core.sampling.seeding import initial_noise  # noqa: E402

CLASSES = ["red-circle", "green-square", "blue-triangle", "yellow-circle", "blue-square",
           "red-triangle"]


def transdiff(*args: str) -> None:
    cmd = [sys.executable, "-m", "transdiff_cli.cli", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


@torch.no_grad()
def samples(run: Path, classes: list[str], steps: int, seed: int) -> torch.Tensor:
    """One EMA sample per class, (K, 3, s, s) in [-1, 1]; noise seeded per image index."""
    ck = load_checkpoint(run)
    model = ck.model.eval()
    labels = torch.tensor([ck.class_names.index(c) for c in classes])
    noise = initial_noise(model.config, list(range(len(classes))), seed)
    latents = sample_rounds(model, labels, noise=noise, sampling_steps=steps)[-1]
    return load_tokenizer(ck.meta["tokenizer"]).to_images(latents).clamp(-1, 1)


def figure(rows: list[torch.Tensor], names: list[str], classes: list[str], path: Path,
           cell: int = 64) -> Path:
    label_w, pad = 44, 12
    k = rows[0].shape[0]
    out = Image.new("RGB", (label_w + k * (cell + pad), len(rows) * (cell + pad) + 14), "white")
    draw = ImageDraw.Draw(out)
    for j, c in enumerate(classes):
        draw.text((label_w + j * (cell + pad), 1), c, fill="black")
    for i, (row, name) in enumerate(zip(rows, names)):
        y = 14 + i * (cell + pad)
        draw.text((2, y + cell // 2 - 5), name, fill="black")
        for j, img in enumerate(to_uint8(row)):
            tile = Image.fromarray(img).resize((cell, cell), Image.NEAREST)
            out.paste(tile, (label_w + j * (cell + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, optimize=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/miniature_512"))
    ap.add_argument("--work", type=Path, default=Path("runs/miniature_512"), help="run folders")
    ap.add_argument("--steps", type=int, default=120, help="training steps at 8x8")
    ap.add_argument("--finetune-steps", type=int, default=60, help="decoder steps at 16x16")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3, help="lr at 8x8 (short run, small model)")
    ap.add_argument("--finetune-lr", type=float, default=5e-4, help="decoder lr at 16x16")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--sampling-steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    config_file = work / "model.yaml"
    config_file.write_text(yaml.safe_dump({
        "model": {"width": args.width, "heads": 2, "encoder_depth": 1, "decoder_depth": 2},
        "train": {"grid_classes": 2, "grid_per_class": 2, "grid_sampling_steps": 4}}))
    common = ["--config", str(config_file), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
              "--ckpt-every", "100000", "--log-every", "10", "--no-progress", "--device", "cpu",
              "--warmup-steps", "10"]
    t0 = time.time()
    low, high = work / "shapes-8", work / "shapes-16"
    transdiff("train", "--data", "shapes", "--image-size", "8", "--max-steps", str(args.steps),
              "--lr", str(args.lr), "--run-dir", str(low), *common)
    transdiff("train", "--init-from", str(low), "--image-size", "16", "--only-train-diff",
              "--max-steps", str(args.finetune_steps), "--lr", str(args.finetune_lr), "--run-dir", str(high), *common)
    rows = [samples(r, CLASSES, args.sampling_steps, args.seed) for r in (low, high)]
    fig = figure(rows, ["8x8", "16x16"], CLASSES, args.out / "figure.png")
    results = {"steps": args.steps, "finetune_steps": args.finetune_steps, "lr": args.lr,
               "finetune_lr": args.finetune_lr,
               "batch_size": args.batch_size, "width": args.width,
               "sampling_steps": args.sampling_steps, "seed": args.seed, "classes": CLASSES,
               "seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {fig}")


if __name__ == "__main__":
    main()
