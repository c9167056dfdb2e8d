"""The model card (`README.md`) of an exported model folder: YAML front matter as the Hugging Face
Hub reads it, then what the model is, its sampling settings with their provenance, the paper's
numbers for a published file, and how to sample from it."""

from __future__ import annotations

from typing import Any

import yaml

from ..model.config import ModelConfig

AUTHORS_REPO = "zhendch/Transdiff"  # where the authors publish their `.pth` files
PAPER = "https://arxiv.org/abs/2506.09482"
# (size, MRAR, latent size) -> (FID-50K, Inception Score, parameters): the authors' README table,
# 256x256 (latent 16) and 512x512 (latent 32), 50,000 images against ADM's reference batches.
PAPER_NUMBERS: dict[tuple[str, bool, int], tuple[float, float, str]] = {
    ("B", False, 16): (2.47, 244.2, "290M"), ("L", False, 16): (1.69, 244.3, "683M"),
    ("H", False, 16): (1.61, 282.0, "1.3B"), ("B", True, 16): (2.25, 282.2, "290M"),
    ("L", True, 16): (1.49, 293.4, "683M"), ("H", True, 16): (1.42, 301.2, "1.3B"),
    ("L", False, 32): (2.51, 286.6, "683M"),
}


# how to sample, as the card shows it (the command line for CLI users, the Python API)
USAGE = """## Sampling

```bash
transdiff sample --ckpt {name} --class 3 --num 8
```

```python
from transdiff_cli import TransDiffPipeline

pipe = TransDiffPipeline.from_pretrained("{name}"{vae_arg})
out = pipe([3], num_per_class=8, seed=0)
out.images[0].save("sample.png")
```"""
USAGE_VAE = """## Sampling

```bash
transdiff sample --ckpt {name} --vae {vae}:PATH --class 3 --num 8
```

```python
from transdiff_cli import TransDiffPipeline

pipe = TransDiffPipeline.from_pretrained("{name}"{vae_arg})
out = pipe([3], num_per_class=8, seed=0)
out.images[0].save("sample.png")
```

This folder holds no VAE: pass the KL-16 VAE file as `--vae {vae}:PATH` (`vae=` in Python), or export
with `--with-vae` to include it."""


def paper_numbers(config: ModelConfig) -> tuple[float, float, str] | None:
    return PAPER_NUMBERS.get((config.size, bool(config.mrar), config.latent_size))


def front_matter(doc: dict[str, Any], config: ModelConfig) -> dict[str, Any]:
    export = doc["export"]
    tags = ["transdiff", "image-generation", "class-conditional", "diffusion", "rectified-flow",
            "autoregressive", "mrar" if config.mrar else "1-step"]
    meta: dict[str, Any] = {"library_name": "transdiff", "tags": tags, "license": export["license"]}
    if export.get("base_model"):
        meta["base_model"] = export["base_model"]
    return meta


def _settings_rows(evaluation: dict[str, Any]) -> list[str]:
    src = evaluation.get("sources", {})
    values = [("cfg", ", ".join(f"{c:g}" for c in evaluation["cfg"])), ("scale_0", f"{evaluation['scale_0']:g}"),
              ("scale_1", f"{evaluation['scale_1']:g}"), ("sampling_steps", evaluation["sampling_steps"]),
              ("sampler", evaluation["sampler"])]
    return [f"| `{k}` | {v} | {src.get(k, '?')} |" for k, v in values]


def model_card(doc: dict[str, Any], config: ModelConfig, name: str) -> str:
    """The README.md text for the folder whose config.json is `doc`; `name` is what to load it by
    in the examples (the folder, or its Hub id)."""
    export, evaluation = doc["export"], doc["evaluation"]
    tok = doc.get("tokenizer") or {}
    kind = "MRAR (multi-reference autoregression)" if config.mrar else "1-step AR"
    needs = export.get("needs_vae")
    vae_arg = f', vae="{needs}:PATH"' if needs else ""
    classes = doc.get("class_names") or []
    lines = ["---", yaml.safe_dump(front_matter(doc, config), sort_keys=False).strip(), "---", "",
             f"# TransDiff {config.size} ({kind})", "",
             f"A class-conditional image generator of *Marrying Autoregressive Transformer and Diffusion with "
             f"Multi-Reference Autoregression* ([paper]({PAPER})): an autoregressive transformer encodes the "
             "class into semantic features, a rectified-flow diffusion decoder turns them into "
             + ("pixels." if tok.get("kind") == "pixels" else "VAE latents."), "",
             "Exported by `transdiff export`: `model.safetensors` (weights), `config.json` (model config, "
             "tokenizer, class names, sampling settings with their provenance)"
             + (", `vae/` (the VAE as a diffusers AutoencoderKL)" if tok.get("bundled") else "")
             + ". Nothing here is a pickle.", "",
             "## Model", "",
             "| | |", "| --- | --- |",
             f"| width / heads | {config.width} / {config.heads} |",
             f"| encoder blocks / decoder blocks | {config.encoder_blocks} / {config.decoder_depth} |",
             f"| condition slots / decoder tokens | {config.num_slots} / {config.num_tokens} |",
             f"| latents | {config.latent_channels} x {config.latent_size} x {config.latent_size} |",
             f"| classes | {config.num_classes}"
             + (f" ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})" if classes else "") + " |",
             f"| tokenizer | {_tokenizer_text(tok, needs)} |",
             f"| weights | {export['weights']} |", "",
             "## Sampling settings", "",
             "Used by default when sampling from this folder; the last column says where each came from.", "",
             "| setting | value | provenance |", "| --- | --- | --- |", *_settings_rows(evaluation), ""]
    numbers = paper_numbers(config) if export.get("published") else None
    if numbers:
        res = config.latent_size * 16
        lines += ["## The paper's numbers", "",
                  f"The authors' README reports for this model at {res}x{res} (50,000 images, 50 per class, "
                  "against ADM's ImageNet reference batches, with the settings above):", "",
                  "| FID-50K | Inception Score | parameters |", "| --- | --- | --- |",
                  f"| {numbers[0]} | {numbers[1]} | {numbers[2]} |", ""]
    usage = USAGE_VAE if needs else USAGE
    lines += usage.format(name=name, vae=needs, vae_arg=vae_arg).splitlines() + [""]
    lines += ["## Source", "",
              f"- exported from `{export['source']}`" + (" (a published `.pth`)" if export.get("published") else ""),
              f"- sha256 of `{export['source_file']}`: `{export['source_sha256']}`",
              f"- by {export['tool']}", ""]
    return "\n".join(lines)


def _tokenizer_text(tok: dict[str, Any], needs: str | None) -> str:
    if tok.get("kind") == "pixels":
        return f"pixels ({tok.get('image_size')}x{tok.get('image_size')}, {tok.get('image_channels')} channel(s))"
    if tok.get("bundled"):
        return f"VAE in `vae/` (scale {tok.get('scale_factor')})"
    if needs:
        return f"{needs} VAE, not included (scale {tok.get('scale_factor')})"
    return f"{tok.get('kind')}: {tok.get('path')}"
