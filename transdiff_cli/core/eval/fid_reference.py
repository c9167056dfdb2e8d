"""Reference sides for FID / precision-recall: the cached features of an ADM reference batch, the
images of an encode-latents folder, and writing statistics (+ a reference batch) in ADM's layout
for any dataset (`transdiff fid --save-stats`).

ADM's `.npz` (`VIRTUAL_imagenet256_labeled.npz`) holds `mu`, `sigma` (Inception pool3 statistics
of the training set) and `arr_0`, 10,000 reference images (uint8 NHWC). FID uses `mu`/`sigma`;
precision and recall need per-image features of `arr_0`, which take minutes to extract: they are
cached, keyed by the file's checksum and the extractor's identity (network, weights, layer).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..data.npz_stream import iter_npz_array, npz_array_info
from ..errors import TransDiffError
from ..fs import atomic_write, file_sha256, write_text_atomic
from .features import Extractor, ImageSet, statistics

CACHE_ENV = "TRANSDIFF_CACHE_DIR"


def default_cache_dir() -> Path:
    """$TRANSDIFF_CACHE_DIR, else $XDG_CACHE_HOME/transdiff, else ~/.cache/transdiff."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transdiff"


def cached_reference_features(npz: Path, extractor: Extractor, cache_dir: str | Path | None,
                              batch_size: int = 64) -> torch.Tensor:
    """Features of `npz`'s arr_0: read from the cache, or extracted (streaming) and cached."""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = cache / "reference-features" / f"{_checksum(npz, cache)[:32]}-{extractor.identity()}.npy"
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path)).double()
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed
    shape, dtype = npz_array_info(npz)
    if len(shape) != 4 or dtype != np.uint8 or shape[-1] not in (1, 3):
        raise TransDiffError(f"{npz}: arr_0 must be uint8 (N, H, W, 1 or 3), got {dtype} {shape}")
    feats = torch.cat([extractor(chunk, batch_size)[0] for chunk in iter_npz_array(npz, rows=max(batch_size, 256))])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, suffix=".npy") as tmp:
            np.save(tmp, feats.float().numpy())
    except OSError as e:
        raise TransDiffError(f"cannot write the feature cache {path.parent}: {e.strerror}; "
                             "choose another `cache_dir`") from None
    return feats


def _checksum(npz: Path, cache: Path) -> str:
    """The file's sha256, remembered per (path, size, modification time): ADM's 512 file is 8 GB."""
    memo_path = cache / "checksums.json"
    st = npz.stat()
    key, stamp = str(npz.resolve()), [st.st_size, st.st_mtime_ns]
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if isinstance(memo.get(key), dict) and memo[key].get("stamp") == stamp:
        return memo[key]["sha256"]
    digest = file_sha256(npz)
    memo[key] = {"stamp": stamp, "sha256": digest}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        write_text_atomic(memo_path, json.dumps(memo, indent=1))
    except OSError:
        pass  # the memo only saves time
    return digest


@torch.no_grad()
def latent_folder_images(folder: Path, batch_size: int = 64) -> ImageSet:
    """An encode-latents folder as images: each posterior mean decoded by the folder's tokenizer
    (a VAE folder needs its VAE file at the path the manifest names)."""
    from ..data.images import to_uint8
    from ..data.tokenizer_spec import load_tokenizer
    from ..data.training_data import LatentDataset

    data = LatentDataset(folder, flip=False)
    tokenizer = load_tokenizer(data.tokenizer_spec)
    scale = float(data.manifest.get("scale_factor", 1.0))
    arrays = []
    for i in range(0, len(data), batch_size):
        mean = data.moments[i:i + batch_size, : data.latent_channels].float()
        arrays.append(to_uint8(tokenizer.to_images(mean * scale).float().clamp(-1, 1)))
    return ImageSet(np.concatenate(arrays), np.asarray(data.targets, dtype=np.int64), str(folder))


def save_reference_stats(ref: ImageSet, extractor: Extractor, out: str | Path, *, with_images: int | None = None,
                         batch_size: int = 64, seed: int = 0) -> dict[str, object]:
    """`mu`, `sigma` of `ref`'s features (float64) and, with `with_images`, a seeded random batch of
    that many reference images as `arr_0` (uint8 NHWC, RGB) with their `labels`: ADM's layout."""
    out = Path(out)
    if out.suffix != ".npz":
        raise TransDiffError(f"`save_stats` {out}: the file name must end in .npz")
    feats, _ = extractor(ref.images, batch_size)
    st = statistics(feats)
    arrays: dict[str, np.ndarray] = {"mu": st.mu.astype(np.float64), "sigma": st.sigma.astype(np.float64),
                                     "features": np.asarray(extractor.identity())}
    if with_images:
        n = min(with_images, len(ref.images))
        pick = np.sort(np.random.default_rng(seed).choice(len(ref.images), n, replace=False))
        images = ref.images[pick]
        arrays["arr_0"] = images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)
        if ref.labels is not None:
            arrays["labels"] = ref.labels[pick]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return {"stats": str(out), "reference": ref.source, "num_reference": len(ref.images),
            "features": extractor.name, "feature_dim": int(st.mu.shape[0]),
            "num_images_saved": int(len(arrays["arr_0"])) if "arr_0" in arrays else 0}
