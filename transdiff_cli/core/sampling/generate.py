"""Class-conditional generation in batches: the sampling loop (`loop.sample_latents`, seeded per
image) run over batches, decoded through the tokenizer, and written as PNGs, a grid and MRAR round
strips into a fresh folder (the resumable `.npz` of `fid --ckpt` and `sample --npz` is
`generate_npz`'s); loading a checkpoint and its tokenizer for generation; the MRAR diversity measure.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.classes import class_label
from ..data.images import make_grid, save_pngs, to_uint8
from ..data.tokenizers import Tokenizer, load_tokenizer
from ..errors import TransDiffError
from ..eval.diversity import cosine_measure, diversity
from ..fs import check_file_target, ensure_dir, os_error
from ..io.checkpoint import Checkpoint, load_checkpoint, newest_run_checkpoint
from ..model.transdiff import TransDiff
from ..validate import check_seed
from .inference import prepare
from .loop import model_device_dtype, sample_latents
from .settings import SampleSettings

GRID_MAX = 256  # images shown in grid.png; the PNG files and the .npz hold every image


@torch.no_grad()
def decode_images(tokenizer: Tokenizer, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [-1, 1] on the CPU (the tokenizer runs in float32)."""
    return tokenizer.decode(latents.float()).float().clamp(-1, 1).cpu()


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a batch on `device`: the GPU's free memory, the host's MemAvailable (or free
    pages) for the CPU; None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def batch_bytes(model: TransDiff, tokenizer: Tokenizer, batch_size: int, settings: SampleSettings) -> int:
    """A rough lower bound of the activation memory of one batch: the transformer's token states
    and attention scores (doubled under guidance) with the per-round latents kept, plus the
    decoded images and the tokenizer's widest feature map (128 channels for a VAE)."""
    mc = model.config
    rows = batch_size * (2 if any(c != 1.0 for c in settings.cfg) else 1)
    tokens = mc.buffer_size + mc.num_tokens * (mc.mrar_steps if mc.mrar else 1)
    depth = mc.encoder_depth + mc.decoder_depth
    per_row = 4 * (tokens * mc.width * (8 + 2 * depth) + mc.heads * tokens * tokens)
    latents = 4 * batch_size * mc.num_tokens * mc.token_dim * (settings.rounds + 2)
    side = int(getattr(tokenizer, "image_size", None) or mc.latent_size)
    feature = 3 if tokenizer.kind == "pixels" else 128
    pixels = 4 * batch_size * side * side * (3 + feature)
    return rows * per_row + latents + pixels


def check_batch_fits(model: TransDiff, tokenizer: Tokenizer, batch_size: int, settings: SampleSettings) -> None:
    """Refuse a batch that cannot fit in memory before it is allocated, with a batch size that can."""
    device, _ = model_device_dtype(model)
    free = available_memory(device)
    need = batch_bytes(model, tokenizer, batch_size, settings)
    if free is None or need <= free * 0.8:
        return
    fits = max(1, int(batch_size * free * 0.5 / need))
    raise TransDiffError(f"`batch_size` {batch_size} needs about {_size(need)} for activations but only "
                         f"{_size(free)} is available on {device}: try `batch_size` {fits}")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@dataclass
class Batch:
    indices: list[int]
    labels: list[int]
    images: torch.Tensor  # (B, C, H, W) in [-1, 1], CPU
    rounds: list[torch.Tensor] | None = None  # decoded image of every MRAR round, with save_steps


def generate(model: TransDiff, tokenizer: Tokenizer, labels: Sequence[int], settings: SampleSettings, *,
             seed: int = 0, batch_size: int = 16, indices: Sequence[int] | None = None,
             save_steps: bool = False) -> Iterator[Batch]:
    """Generate image `indices[j]` of class `labels[j]` for every j, `batch_size` at a time.
    `indices` (default 0..N-1) are the global image numbers that seed the noise: a rank given a
    slice of them draws exactly the images a single process would."""
    if batch_size < 1:
        raise TransDiffError(f"`batch_size` must be at least 1, not {batch_size}")
    check_seed(seed)
    check_batch_fits(model, tokenizer, min(batch_size, max(1, len(labels))), settings)
    indices = list(range(len(labels))) if indices is None else list(indices)
    if len(indices) != len(labels):
        raise ValueError("indices and labels differ in length")
    for start in range(0, len(labels), batch_size):
        idx = indices[start:start + batch_size]
        lab = [int(v) for v in labels[start:start + batch_size]]
        rounds = sample_latents(model, lab, idx, settings, seed)
        if save_steps:  # every round's latents through the tokenizer in one call
            decoded = list(decode_images(tokenizer, torch.cat(rounds)).split(len(idx)))
            yield Batch(idx, lab, decoded[-1], decoded)
        else:
            yield Batch(idx, lab, decode_images(tokenizer, rounds[-1]))


def generate_arrays(model: TransDiff, tokenizer: Tokenizer, labels: Sequence[int], settings: SampleSettings, *,
                    seed: int = 0, batch_size: int = 16, indices: Sequence[int] | None = None,
                    on_batch: Any = None) -> np.ndarray:
    """All images as one uint8 (N, H, W, C) array (for FID: no PNG round trip)."""
    arrays = []
    for batch in generate(model, tokenizer, labels, settings, seed=seed, batch_size=batch_size, indices=indices):
        arrays.append(to_uint8(batch.images))
        if on_batch is not None:
            on_batch(len(batch.indices))
    return np.concatenate(arrays)


@dataclass
class Written:
    out: Path
    pngs: list[Path] = field(default_factory=list)
    grid: Path | None = None
    strips: list[Path] = field(default_factory=list)
    npz: Path | None = None
    info: Path | None = None
    done: bool = False  # already there from an earlier run of the same job: nothing was written


def file_name(index: int, label: int) -> str:
    return f"{index:05d}_class{label}.png"


SAMPLES_JSON = "samples.json"
GRID_PNG = "grid.png"


def strip_file(out: Path, png: str) -> Path:
    """Where `save_steps` puts the strip of every MRAR round of image file `png`."""
    return out / "steps" / png.replace(".png", "_steps.png")


def check_outputs(out: str | Path, npz: str | Path | None = None, overwrite: bool = False) -> None:
    """Everything about `--out` / `--npz` that can fail, checked before any work (writes nothing
    but the folder above `--out`)."""
    if npz is not None:
        check_file_target(npz, "`npz`")
    _check_out(Path(out), overwrite)
    ensure_dir(Path(out).resolve().parent, "`out`")


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TransDiffError(f"`out` {out} is a file, not a folder")
    if out.is_dir() and not overwrite and not (out / SAMPLES_JSON).is_file() and any(out.iterdir()):
        raise TransDiffError(f"`out` {out} is not empty and holds no earlier `sample` output: choose a new or "
                             "empty folder, or pass `overwrite` to replace it")
    full = out.resolve()
    if out.is_dir() and any(out.iterdir()) and full in (Path.cwd(), *Path.cwd().parents):
        raise TransDiffError(f"`out` {out} is the current folder (or holds it) and is not empty: "
                             "choose a new or empty folder")


def prepare_out(out: Path, overwrite: bool = False) -> Path:
    """Check `--out` before any work and return a fresh staging folder beside it. A folder holding
    anything but an earlier `sample` output (a samples.json) is refused unless `overwrite`."""
    _check_out(out, overwrite)
    full = out.resolve()
    ensure_dir(full.parent, "`out`")
    for stale in full.parent.glob(f".{full.name}.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    return ensure_dir(full.parent / f".{full.name}.tmp-{uuid.uuid4().hex[:8]}", "`out`")


def swap_in(staging: Path, out: Path) -> None:
    """Replace `out` by `staging` with renames: the old outputs stay whole until the new are."""
    try:
        if out.is_dir() and any(out.iterdir()):
            full = out.resolve()
            old = full.parent / f".{full.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            os.replace(staging, out)
    except OSError as e:
        raise os_error(e, out, "`out`") from None


def generate_to_folder(model: TransDiff, tokenizer: Tokenizer, labels: Sequence[int], settings: SampleSettings,
                       out: str | Path, *, seed: int = 0, batch_size: int = 16, save_steps: bool = False,
                       nrow: int | None = None, class_names: Sequence[str] | None = None,
                       info: dict[str, Any] | None = None, on_batch: Any = None, overwrite: bool = False) -> Written:
    """One PNG per image, `grid.png` (the first GRID_MAX images), with `save_steps` a strip of each
    MRAR round per image under `steps/`, and `samples.json` (what was done), all drawn in memory
    batch by batch (`generate_npz.generate_folder_and_npz` draws through resumable shards instead).
    `on_batch(n)` is called after every batch with its size (a progress bar)."""
    check_seed(seed)
    batches = generate(model, tokenizer, labels, settings, seed=seed, batch_size=batch_size, save_steps=save_steps)
    return into_fresh_folder(Path(out), overwrite, lambda staging: write_samples(
        batches, labels, settings, staging, seed=seed, batch_size=batch_size, num_classes=model.config.num_classes,
        nrow=nrow, class_names=class_names, info=info, on_batch=on_batch))


def into_fresh_folder(out: Path, overwrite: bool, write: Callable[[Path], Written]) -> Written:
    """`write(staging)` fills a fresh folder beside `out` that replaces it at the end, so a rerun
    never mixes old and new images and a killed run leaves the old outputs as they were. The
    returned paths are those under `out`."""
    staging = prepare_out(out, overwrite)
    try:
        w = write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, out)
    moved = lambda p: None if p is None else out / p.relative_to(staging)  # noqa: E731
    return Written(out, [moved(p) for p in w.pngs], moved(w.grid), [moved(p) for p in w.strips],
                   w.npz if w.npz is None or not w.npz.is_relative_to(staging) else moved(w.npz), moved(w.info))


def samples_doc(labels: Sequence[int], settings: SampleSettings, *, seed: int, batch_size: int, num_classes: int,
                class_names: Sequence[str] | None, info: dict[str, Any] | None) -> str:
    """The text of samples.json: what was done, one entry per image file."""
    doc = {"settings": settings.to_dict(), "seed": seed, "batch_size": batch_size,
           "images": [{"file": file_name(i, int(y)), "class": int(y),
                       "name": class_label(int(y), num_classes, class_names)} for i, y in enumerate(labels)],
           **(info or {})}
    return json.dumps(doc, indent=1)


def write_samples(batches: Iterable[Batch], labels: Sequence[int], settings: SampleSettings, out: Path, *,
                  seed: int, batch_size: int, num_classes: int, nrow: int | None,
                  class_names: Sequence[str] | None, info: dict[str, Any] | None, on_batch: Any = None) -> Written:
    """The PNGs, grid, round strips (batches with `rounds`) and samples.json of `batches` in `out`;
    one batch in memory at a time (and the GRID_MAX images of the grid)."""
    w = Written(out)
    shown: list[torch.Tensor] = []
    for batch in batches:
        names = [file_name(i, y) for i, y in zip(batch.indices, batch.labels)]
        w.pngs += save_pngs(batch.images, out, names)
        if len(shown) < GRID_MAX:
            shown += list(batch.images[: GRID_MAX - len(shown)])
        if batch.rounds is not None:
            per_image = torch.stack(batch.rounds, dim=1)  # (B, rounds, C, H, W)
            for name, strip in zip(names, per_image):
                p = strip_file(out, name)
                p.parent.mkdir(exist_ok=True)
                make_grid(strip, nrow=strip.shape[0]).save(p)
                w.strips.append(p)
        if on_batch is not None:
            on_batch(len(batch.indices))
    if shown:
        grid = torch.stack(shown)
        w.grid = out / GRID_PNG
        make_grid(grid, nrow=nrow if nrow and nrow <= 32 else None).save(w.grid)
    w.info = out / SAMPLES_JSON
    w.info.write_text(samples_doc(labels, settings, seed=seed, batch_size=batch_size, num_classes=num_classes,
                                  class_names=class_names, info=info))
    return w


# --------------------------------------------------------------------------- loading for generation
def open_checkpoint(ckpt: str | Path | None, *, weights: str = "ema", size: str | None = None,
                    device: torch.device, precision: str = "auto", compile: bool = False) -> Checkpoint:
    """Load `ckpt` (default: the newest run under runs/) and ready its model for generation."""
    path = newest_run_checkpoint("runs") if ckpt is None else ckpt
    ck = load_checkpoint(path, weights=weights, size=size, device="cpu")
    ck.model = prepare(ck.model, device, precision, compile)
    return ck


def tokenizer_spec(ck: Any, vae: str | None) -> Any:
    """`--vae` if given, else the tokenizer the checkpoint names (published files name none)."""
    spec: Any = vae if vae else ck.meta.get("tokenizer")
    if spec is None:
        raise TransDiffError(f"{ck.path} does not say which tokenizer it was trained with (published "
                             "checkpoints do not): pass `vae` kl16:PATH (the KL-16 VAE checkpoint)")
    return spec


def open_tokenizer(ck: Checkpoint, vae: str | None, device: torch.device) -> Tokenizer:
    """`--vae` if given, else the tokenizer the checkpoint was trained with; its latents must be the
    model's."""
    spec = tokenizer_spec(ck, vae)
    mc = ck.config
    tok = load_tokenizer(spec, image_size=mc.latent_size, image_channels=mc.latent_channels, device=device)
    got = getattr(tok, "latent_channels", mc.latent_channels)
    if got != mc.latent_channels:
        raise TransDiffError(f"the tokenizer gives {got}-channel latents but the model was trained on "
                             f"{mc.latent_channels}-channel latents: wrong `vae`?")
    if getattr(tok, "image_channels", 3) not in (1, 3):
        raise TransDiffError(f"tokenizer {spec!r} turns these {mc.latent_channels}-channel latents into "
                             f"{tok.image_channels}-channel arrays, not images: pass `vae` kl16:PATH")
    return tok


def grid_rows(num_per_class: int) -> int | None:
    """One class per grid row when that stays readable."""
    return num_per_class if 1 < num_per_class <= 32 else None


# --------------------------------------------------------------------------- MRAR diversity
@torch.no_grad()
def mrar_feature_diversity(model: TransDiff, labels: Sequence[int], settings: SampleSettings, *,
                           seed: int = 0, num_refs: int = 1, batch_size: int = 16
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The diversity measure of an MRAR model's features, which depend on the images it sampled.
    For every label, `num_refs` MRAR samples are drawn; with their rounds 0..K-2 as references the
    encoder gives the K blocks of features that condition the last image. Returns (per label: the
    measure of all K blocks together, the same feature count as the 1-step model's; per round k and
    label: the measure of block k alone), each averaged over the `num_refs` samples."""
    mc = model.config
    r = mc.ref_tokens
    rounds = settings.rounds
    expanded = [int(y) for y in labels for _ in range(num_refs)]
    full, blocks = [], []
    for start in range(0, len(expanded), batch_size):
        lab = expanded[start:start + batch_size]
        idx = list(range(start, start + len(lab)))
        latents = sample_latents(model, lab, idx, settings, seed)
        refs = torch.cat([model.reference_tokens(s) for s in latents[:-1]], dim=1) if rounds > 1 else None
        y = torch.as_tensor(lab, device=latents[0].device)
        feats = model.features(model.class_emb(y), refs).float()
        full.append(cosine_measure(feats))
        blocks.append(torch.stack([cosine_measure(feats[:, k * r:(k + 1) * r]) for k in range(rounds)]))
    per_label = torch.cat(full).view(len(labels), num_refs).mean(1)
    per_round = torch.cat(blocks, dim=1).view(rounds, len(labels), num_refs).mean(2)
    return per_label.cpu(), per_round.cpu()


def measure_diversity(model: TransDiff, labels: Sequence[int], settings: SampleSettings, *, seed: int = 0,
                      num_refs: int = 1, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The paper's measure per label, and in MRAR mode per round (`mrar_feature_diversity`). In 1-step
    mode (an MRAR checkpoint too: its first block, which sees no references) nothing is sampled."""
    if settings.mode == "mrar":
        return mrar_feature_diversity(model, labels, settings, seed=seed, num_refs=num_refs, batch_size=batch_size)
    device, _ = model_device_dtype(model)
    per_label = [diversity(model, torch.tensor(list(labels[i:i + batch_size]), device=device))
                 for i in range(0, len(labels), batch_size)]
    return torch.cat(per_label).cpu(), None
