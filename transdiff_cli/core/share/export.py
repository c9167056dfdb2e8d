"""Exporting any checkpoint (run folder, checkpoint folder, published `.pth`) as a self-describing
model folder with no pickle in it:

    model.safetensors   the weights (EMA unless asked otherwise)
    config.json         model config, tokenizer spec, class names (and `id2label`), the sampling
                        settings with their provenance, and where the weights came from
    README.md           the model card (`model_card`)
    vae/                optional: the VAE as a diffusers AutoencoderKL folder (safetensors)

The folder is an ordinary checkpoint folder for `checkpoint.load_checkpoint` (there is no
`ema.safetensors`, so `model.safetensors` is what loads), and its sampling settings are written into
the model config, so a published file's folder samples with the authors' table by default. It is
written into a staging folder beside `out` and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..data.tokenizer_spec import load_tokenizer, parse_tokenizer_spec
from ..errors import TransDiffError
from ..fs import file_sha256, os_error, staging_folder, swap_folder
from ..io.checkpoint import CONFIG, EMA, MODEL, Checkpoint, load_checkpoint
from ..io.hub import is_hub_id
from ..model.config import ModelConfig
from ..sampling.eval_settings import checkpoint_defaults
from .model_card import AUTHORS_REPO, model_card, paper_numbers

CARD = "README.md"
VAE_DIR = "vae"
FORMAT = "transdiff-cli/1"
WEIGHTS = {"ema": "ema", "raw": "model"}  # the CLI's names -> load_checkpoint's


@dataclass
class Exported:
    out: Path
    files: list[str] = field(default_factory=list)
    needs_vae: str | None = None  # the VAE kind to pass at sampling time, when not bundled
    config: dict[str, Any] = field(default_factory=dict)


def is_export(folder: Path) -> bool:
    """Whether `folder` holds an earlier export (which a new export may replace)."""
    try:
        return "export" in json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError, TypeError):
        return False


def export_model(source: str | Path, out: str | Path, *, weights: str = "ema", vae: str | None = None,
                 with_vae: bool = False, overwrite: bool = False, license: str | None = None) -> Exported:
    """Load `source` and write its model folder to `out`. `weights`: "ema" (default) or "raw";
    `vae`: the tokenizer spec ("kl16:PATH", ...) when the checkpoint names none or another is wanted;
    `with_vae`: include the VAE (safetensors) so the folder needs no `vae` to sample."""
    if weights not in WEIGHTS:
        raise TransDiffError(f"`weights` must be 'ema' or 'raw', not {weights!r}")
    check_out(Path(out), overwrite)
    ck = load_checkpoint(source, weights=WEIGHTS[weights])
    return export_checkpoint(ck, out, vae=vae, with_vae=with_vae, overwrite=overwrite, license=license)


def check_out(out: Path, overwrite: bool, source: Path | None = None) -> None:
    """An existing `out` that is not an earlier export is refused unless `overwrite`; so is the source."""
    if out.exists() and not out.is_dir():
        raise TransDiffError(f"`out` {out} is a file, not a folder")
    if source is not None:
        src, dst = source.resolve(), out.resolve()
        if src == dst or dst in src.parents:
            raise TransDiffError(f"`out` {out} holds the checkpoint being exported: choose another folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not is_export(out):
        raise TransDiffError(f"`out` {out} is not empty and holds no earlier export: choose a new or empty "
                             "folder, or pass `overwrite` to replace it")
    check_not_cwd(out)


def check_not_cwd(out: Path) -> None:
    """`out` is replaced as a whole: never the current folder or one holding it."""
    if out.is_dir() and any(out.iterdir()) and out.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise TransDiffError(f"`out` {out} is the current folder (or holds it) and is not empty: choose a new or "
                             "empty folder")


def export_checkpoint(ck: Checkpoint, out: str | Path, *, vae: str | None = None, with_vae: bool = False,
                      overwrite: bool = False, license: str | None = None, tokenizer: Any = None,
                      state: dict[str, torch.Tensor] | None = None) -> Exported:
    """Write the model folder of a loaded checkpoint. `tokenizer`: an already loaded tokenizer to
    bundle (`with_vae`); `state`: the weights to write (default: the model's, which must be float32)."""
    out = Path(out)
    if ck.path is None:
        raise TransDiffError("this checkpoint has no source file to export from")
    check_out(out, overwrite, ck.path)
    state = ck.model.state_dict() if state is None else state
    if any(v.is_floating_point() and v.dtype != torch.float32 for v in state.values()):
        raise TransDiffError("the weights are not float32 (a model prepared in another precision): export from "
                             "the checkpoint file instead")
    source_file = _source_file(ck)
    config, evaluation = _with_evaluation_settings(ck)
    spec, needs = _tokenizer(ck, vae, with_vae)
    doc: dict[str, Any] = {"format": FORMAT, "model": config.to_dict(), "tokenizer": spec,
                           "class_names": ck.class_names,
                           "id2label": ({str(i): n for i, n in enumerate(ck.class_names)} if ck.class_names else None),
                           "evaluation": evaluation}
    doc.update({k: v for k, v in ck.meta.items()
                if k in ("step", "data", "train") and v is not None})  # what the run was
    if ck.published and ck.meta.get("published_args"):
        doc["published_training_args"] = ck.meta["published_args"]  # training-time flags, never sampling
    doc["export"] = {"source": str(ck.meta.get("source") or ck.path), "source_file": source_file.name,
                     "source_sha256": file_sha256(source_file), "published": ck.published,
                     "weights": "ema" if ck.meta.get("weights", "ema") in ("ema", "model_ema") else "raw",
                     "needs_vae": needs, "tool": _tool(),
                     "license": license or ("mit" if ck.published else "other"),
                     "base_model": AUTHORS_REPO if ck.published and paper_numbers(config) else None}
    staging = staging_folder(out.absolute(), "`out`")
    try:
        _contiguous_save(state, staging / MODEL)
        files = [MODEL]
        if spec and spec.get("bundled"):
            files += _write_vae(tokenizer, spec, ck, vae, staging / VAE_DIR)
        (staging / CARD).write_text(model_card(doc, config, str(out)))
        # config.json last: a folder holding it is complete
        (staging / CONFIG).write_text(json.dumps(doc, indent=1, default=str))
        files += [CARD, CONFIG]
        swap_folder(staging, out.absolute(), "`out`", out)  # an earlier export stays whole until then
    except OSError as e:
        raise os_error(e, out, "`out`") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(out, files, needs, doc)


def _tool() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"transdiff-cli {version('transdiff-cli')}"
    except PackageNotFoundError:
        return "transdiff-cli"


def _source_file(ck: Checkpoint) -> Path:
    """The file the weights were read from: the `.pth`, or the folder's safetensors."""
    p = Path(ck.path)
    if p.is_file():
        return p
    return p / (EMA if ck.meta.get("weights") == "ema" and (p / EMA).is_file() else MODEL)


def _with_evaluation_settings(ck: Checkpoint) -> tuple[ModelConfig, dict[str, Any]]:
    """The config with the checkpoint's sampling defaults written in (for a published file: the
    authors' table, never its saved args), and those settings with their provenance."""
    d = checkpoint_defaults(ck.config, ck.published)
    mrar_cfg = list(d.cfg) if ck.config.mrar and len(set(d.cfg)) > 1 else []
    config = dataclasses.replace(ck.config, cfg=d.cfg[0], mrar_cfg=mrar_cfg, scale_0=d.scale_0,
                                 scale_1=d.scale_1, sampling_steps=d.sampling_steps)
    evaluation = {"cfg": d.cfg, "scale_0": d.scale_0, "scale_1": d.scale_1, "sampling_steps": d.sampling_steps,
                  "sampler": d.sampler, "sources": d.sources}
    return config, evaluation


def _tokenizer(ck: Checkpoint, vae: str | None, with_vae: bool) -> tuple[dict[str, Any] | None, str | None]:
    """(the spec to store, the VAE kind a user must pass when none is bundled)."""
    given = vae or ck.meta.get("tokenizer")
    if given is None:
        if with_vae:
            raise TransDiffError(f"{ck.path} does not say which VAE it was trained with (published checkpoints do "
                                 "not): pass `vae` kl16:PATH with `with_vae`")
        return {"kind": "kl16", "image_size": ck.config.latent_size * 16, "scale_factor": 0.2325}, "kl16"
    spec = parse_tokenizer_spec(given)
    if spec.get("kind") == "pixels":
        return spec, None
    if with_vae:
        return {**spec, "bundled": True}, None
    if spec.get("path") and is_hub_id(spec["path"]):
        return spec, None  # a Hub id is found from any machine
    kept = {k: v for k, v in spec.items() if k not in ("path", "bundled", "image_size")}  # a local path means
    if kept.get("kind") == "kl16":  # nothing elsewhere
        kept["image_size"] = ck.config.latent_size * 16
    return kept, str(spec.get("kind", "kl16"))


def _write_vae(tokenizer: Any, spec: dict[str, Any], ck: Checkpoint, vae: str | None, folder: Path) -> list[str]:
    """The VAE as a diffusers AutoencoderKL folder (config.json + safetensors); `spec` becomes a
    `diffusers` spec relative to the model folder."""
    if tokenizer is None or not hasattr(tokenizer, "vae"):
        tokenizer = load_tokenizer({k: v for k, v in spec.items() if k not in ("bundled", "image_size")},
                                   device="cpu")
    model = tokenizer.vae
    if next(model.parameters()).dtype != torch.float32 or next(model.parameters()).device.type != "cpu":
        import copy

        model = copy.deepcopy(model).to("cpu", torch.float32)  # the pipeline's copy stays as it is
    model.save_pretrained(str(folder), safe_serialization=True)
    image_size = ck.config.latent_size * tokenizer.downsample
    spec.clear()
    spec.update({"kind": "diffusers", "path": VAE_DIR, "bundled": True, "image_size": image_size,
                 "scale_factor": float(tokenizer.scale_factor)})
    return sorted(f"{VAE_DIR}/{p.name}" for p in folder.iterdir())


def _contiguous_save(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))

