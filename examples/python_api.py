"""TransDiff from Python: sample, read and decode semantic features, fuse two classes, measure diversity.

Train a run with the CLI first (a few minutes on a laptop CPU), then point this script at it:

    transdiff train                                  # -> runs/digits-tiny
    python examples/python_api.py runs/digits-tiny   # -> api-out/*.png

Any run folder, checkpoint folder or published .pth works (published ones need --vae kl16:PATH).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transdiff_cli import TransDiffPipeline


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", default="runs/digits-tiny", help="run folder, checkpoint or .pth")
    ap.add_argument("--vae", default=None, help="tokenizer, e.g. kl16:PATH (default: the checkpoint's)")
    ap.add_argument("--out", default="api-out", help="folder for the images")
    ap.add_argument("--sampling-steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.sampling_steps

    pipe = TransDiffPipeline.from_pretrained(args.source, vae=args.vae, device=args.device)
    classes = list(range(min(4, pipe.config.num_classes)))

    # 1. sampling: two images per class, classes by index or name; same seed -> `transdiff sample`'s pixels
    result = pipe(classes, num_per_class=2, sampling_steps=steps, seed=0)
    for i, (image, label) in enumerate(zip(result.images, result.labels)):
        image.save(out / f"sample_{i}_class{label}.png")
    print(f"sampled {len(result.images)} images ({result.settings.mode}, cfg {result.settings.cfg}), "
          f"latents {tuple(result.latents.shape)}")
    if result.settings.rounds > 1:  # MRAR: every round's image
        for k, images in enumerate(result.round_images):
            images[0].save(out / f"round{k}.png")

    # 2. semantic features: what the encoder gives each class, and back through the decoder
    features = pipe.features(classes)
    print(f"features {tuple(features.shape)} (classes x slots x width)")
    decoded = pipe.decode(features, sampling_steps=steps, seed=7)
    for label, image in zip(classes, decoded.images):
        image.save(out / f"decoded_class{label}.png")

    # 3. fusion (1-step models): half of the slots from class A, half from class B, one noise
    if not pipe.config.mrar and len(classes) >= 2:
        fused = pipe.fuse(classes[0], classes[1], ratio=0.5, pattern="halves", sampling_steps=steps)
        for name, image in zip(("a", "fused", "b"), fused.images):
            image.save(out / f"fuse_{name}.png")
        print(f"fused classes {fused.labels}: {int(fused.mask.sum())}/{fused.mask.numel()} slots from A")

    # 4. the paper's diversity measure of the features (lower = more diverse)
    div = pipe.diversity(classes, sampling_steps=steps or 10)
    print("diversity per class:", [round(v, 4) for v in div.per_class.tolist()], f"mean {div.mean:.4f}")
    print(f"wrote the images to {out}/")


if __name__ == "__main__":
    main()
