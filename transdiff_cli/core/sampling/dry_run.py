"""`--dry-run`: everything a generation run would use, resolved without loading weights, sampling or
writing anything, as one JSON-able dict (checked before launching 50,000 images on 8 GPUs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.classes import class_label, resolve_classes
from ..data.tokenizer_spec import parse_tokenizer_spec
from ..device import resolve_device, weights_dtype
from ..errors import TransDiffError
from ..io.checkpoint import inspect_checkpoint, newest_run_checkpoint
from ..io.hub import local_path
from .inference import tokenizer_spec
from .options import SamplingOptions
from .settings import checkpoint_settings


def _tokenizer(spec: Any) -> dict[str, Any]:
    """The tokenizer spec, its file found (a Hub file resolved through the cache) but not loaded."""
    d = parse_tokenizer_spec(spec)
    out = {k: v for k, v in d.items() if k in ("kind", "path", "image_size", "image_channels", "scale_factor")}
    if d.get("path"):
        local = local_path(d["path"])
        if not local.exists():
            raise TransDiffError(f"`vae` {d['kind']}:{d['path']}: not found")
        out["local_path"] = str(local)
    return out


def generation_plan(ckpt: str | Path | None, options: SamplingOptions | None = None, *, weights: str = "ema",
                    size: str | None = None, vae: str | None = None, classes: Sequence[str] | None = None,
                    num_per_class: int = 1, precision: str = "auto", device: str | None = None, seed: int = 0,
                    batch_size: int = 16) -> dict[str, Any]:
    """The settings, checkpoint facts and workload of a generation run; errors are the ones the
    real run would raise (TransDiffError, naming the parameter)."""
    dev = resolve_device(device)
    dtype = weights_dtype(dev, precision)  # validates the flag as the real run does
    info = inspect_checkpoint(newest_run_checkpoint("runs") if ckpt is None else ckpt,
                              weights=weights, size=size)
    mc = info.config
    settings = checkpoint_settings(info, options or SamplingOptions())
    picked = resolve_classes(classes, mc.num_classes, info.class_names)
    s = settings.to_dict()
    sources = s.pop("sources")
    return {
        "checkpoint": {"path": str(info.path), "kind": "published" if info.published else "transdiff-cli",
                       "size": mc.size, "parameters": info.parameters, "mrar": mc.mrar,
                       "weights": weights, "latent_shape": [mc.latent_channels, mc.latent_size, mc.latent_size]},
        **s,
        "provenance": sources,
        "precision": precision, "weights_dtype": str(dtype).removeprefix("torch."), "device": str(dev),
        "tokenizer": _tokenizer(tokenizer_spec(info, vae)),
        "classes": [{"index": y, "name": class_label(y, mc.num_classes, info.class_names)} for y in picked],
        "num_per_class": num_per_class, "num_images": len(picked) * num_per_class,
        "seed": seed, "batch_size": batch_size,
    }
