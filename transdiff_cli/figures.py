"""The paper's qualitative figures from any checkpoint, drawn through `TransDiffPipeline` (no
sampling code of its own) and written as PNGs with their numbers in `figures.json` and a
`figures.md` that shows them with the command and settings that made them:

- Figure 1 (middle): the decoder given only the first k of the n condition slots, k = n/16, n/4,
  n/2, n (`pipe.decode(features, slots=k)`; the same noise in every column);
- Figure 1 (bottom) / Figure 4: fused features of class pairs (`pipe.fuse`, 1-step models);
- MRAR: the image after every round (`pipe(..., mode="mrar").round_images`);
- Figure 5: the diversity measure per class (`pipe.diversity`), beside a second checkpoint's.

Every call is seeded, so the same options give the same files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .core.data.classes import class_label
from .core.errors import TransDiffError
from .core.fs import staging_folder, swap_folder
from .core.share.export import check_not_cwd
from .pipeline import TransDiffPipeline

FIGURES_JSON = "figures.json"
FIGURES_MD = "figures.md"
Note = Callable[[str], None]


@dataclass
class Figure:
    file: str
    title: str
    caption: str


@dataclass
class Figures:
    out: Path
    figures: list[Figure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # figures that do not apply to this checkpoint
    doc: dict[str, Any] = field(default_factory=dict)


def slot_counts(n: int) -> list[int]:
    """k for Figure 1 (middle): n/16, n/4, n/2 and n slots (the paper's 16, 64, 128, 256 of 256)."""
    return sorted({max(1, n // 16), max(1, n // 4), max(1, n // 2), n})


def parse_pairs(text: str | None) -> list[tuple[str, str]] | None:
    """"a:b,c:d" -> [("a", "b"), ("c", "d")]."""
    if not text:
        return None
    pairs = []
    for item in text.split(","):
        a, sep, b = item.strip().partition(":")
        if not sep or not a.strip() or not b.strip():
            raise TransDiffError(f"`pairs` {text!r}: expected CLASS:CLASS[,CLASS:CLASS...], e.g. macaw:tiger")
        pairs.append((a.strip(), b.strip()))
    return pairs


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TransDiffError(f"`out` {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not (out / FIGURES_JSON).is_file():
        raise TransDiffError(f"`out` {out} is not empty and holds no earlier `figures` output: choose a new or "
                             "empty folder, or pass `overwrite` to replace it")
    check_not_cwd(out)


def image_grid(rows: Sequence[Sequence[Image.Image]], path: Path, *, col_titles: Sequence[str],
               row_titles: Sequence[str], title: str) -> Path:
    """A titled grid of images (matplotlib; small images drawn with nearest interpolation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    nr, nc = len(rows), len(col_titles)
    fig, axes = plt.subplots(nr, nc, figsize=(1.9 * nc + 1.2, 1.9 * nr + 0.7), squeeze=False)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            ax = axes[r][c]
            arr = np.asarray(im)
            ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def diversity_chart(names: Sequence[str], series: dict[str, Sequence[float]], path: Path) -> Path:
    """Grouped bars: the diversity measure per class for each model (lower = more diverse)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(names) + 2), 3.4))
    for i, (label, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, values, width, label=f"{label} (mean {sum(values) / len(values):.3f})")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("mean cosine similarity")
    ax.set_title("Figure 5: diversity of the semantic features per class (lower = more diverse)", fontsize=10)
    top = max(max(v) for v in series.values())
    ax.set_ylim(min(0.0, min(min(v) for v in series.values())), top * 1.3 if top > 0 else 1.0)
    ax.legend(fontsize=8, loc="upper center", ncol=len(series))  # above the bars
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_figures(pipe: TransDiffPipeline, out: str | Path, *, classes: Sequence[int | str] | None = None,
                 pairs: Sequence[tuple[int | str, int | str]] | None = None, compare: TransDiffPipeline | None = None,
                 seed: int = 0, cfg: float | None = None, sampling_steps: int | None = None,
                 command: str | None = None, overwrite: bool = False, note: Note | None = None) -> Figures:
    """Write every figure that applies to `pipe`'s checkpoint into `out` (see the module docstring).
    `classes`: the rows of the image figures (default: the first four classes); `pairs`: the fused
    class pairs (default: the first three pairs of classes); `compare`: a second checkpoint for
    Figure 5."""
    out = Path(out)
    check_out(out, overwrite)
    say = note or (lambda text: None)
    mc = pipe.config
    labels = pipe.labels(list(classes) if classes else list(range(min(4, mc.num_classes))))
    names = [class_label(y, mc.num_classes, pipe.class_names) for y in labels]
    if pairs is None:
        pairs = [(i, i + 1) for i in range(0, min(6, mc.num_classes) - 1, 2)]
    result = Figures(out)
    staging = staging_folder(out.absolute(), "`out`")
    try:
        doc = _draw(pipe, staging, result, labels, names, pairs, compare, seed, cfg, sampling_steps, say)
        doc["command"] = command
        result.doc = doc
        (staging / FIGURES_JSON).write_text(json.dumps(doc, indent=1))
        (staging / FIGURES_MD).write_text(figures_markdown(result, command))
        swap_folder(staging, out.absolute(), "`out`", out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _draw(pipe: TransDiffPipeline, folder: Path, result: Figures, labels: list[int], names: list[str],
          pairs: Sequence[tuple[int | str, int | str]], compare: TransDiffPipeline | None, seed: int,
          cfg: float | None, sampling_steps: int | None, say: Note) -> dict[str, Any]:
    mc = pipe.config
    opts = {"cfg": cfg, "sampling_steps": sampling_steps}
    settings = pipe.settings(mode="1step", **opts)
    doc: dict[str, Any] = {"checkpoint": str(pipe.checkpoint.path), "seed": seed, "classes": labels,
                           "class_names": names, "settings_1step": settings.to_dict()}

    # Figure 1 (middle): the first k slots of the features
    feats = pipe.features(labels)
    n = feats.shape[1]
    ks = slot_counts(n)
    say(f"Figure 1 (middle): decoding from the first {', '.join(map(str, ks))} of {n} slots")
    columns = [pipe.decode(feats, slots=k, seed=seed, **opts).images for k in ks]
    rows = [[col[i] for col in columns] for i in range(len(labels))]
    image_grid(rows, folder / "fig1_middle_features.png", col_titles=[f"k = {k} of {n}" for k in ks],
               row_titles=names, title="Figure 1 (middle): the decoder given only the first k semantic features")
    result.figures.append(Figure("fig1_middle_features.png", "Figure 1 (middle): decoding from k features",
                                 f"Rows: classes; columns: the decoder cross-attends to the first k of the {n} "
                                 "condition slots (the rest dropped), from the same noise in every column."
                                 + (" MRAR model: the first block's slots (no references)." if mc.mrar else "")))
    doc["fig1_middle"] = {"slots": n, "k": ks}

    # Figure 1 (bottom) / Figure 4: fused features
    if mc.mrar:
        result.skipped.append("Figure 4 (fuse): needs a 1-step checkpoint (an MRAR model's features depend on "
                              "its references)")
    else:
        say(f"Figure 4: fusing {len(pairs)} class pair(s)")
        fused_rows, row_titles, doc_pairs = [], [], []
        for a, b in pairs:
            f = pipe.fuse(a, b, seed=seed, **opts)
            na, nb = (class_label(y, mc.num_classes, pipe.class_names) for y in f.labels)
            fused_rows.append(f.images)
            row_titles.append(f"{na} + {nb}")
            doc_pairs.append({"a": f.labels[0], "b": f.labels[1], "slots_from_a": int(f.mask.sum())})
        image_grid(fused_rows, folder / "fig4_fuse.png", col_titles=["class A", "fused (half of each)", "class B"],
                   row_titles=row_titles, title="Figure 4: semantic features of two classes fused")
        result.figures.append(Figure("fig4_fuse.png", "Figure 1 (bottom) / Figure 4: feature fusion",
                                     "Each row: class A, a condition made of the first half of A's slots and "
                                     "the second half of B's, and class B, all from the same noise."))
        doc["fig4_fuse"] = {"pairs": doc_pairs, "ratio": 0.5, "pattern": "halves"}

    # MRAR: every round
    if mc.mrar:
        say("MRAR: sampling every round")
        out = pipe(labels, mode="mrar", seed=seed, progress=False, **opts)
        rows = [[r[i] for r in out.round_images] for i in range(len(labels))]
        image_grid(rows, folder / "mrar_rounds.png", col_titles=[f"round {k + 1}" for k in range(len(rows[0]))],
                   row_titles=names, title="MRAR: the image after every round (same noise in every round)")
        result.figures.append(Figure("mrar_rounds.png", "MRAR rounds",
                                     "Rows: classes; columns: the image after each round; round k+1 sees "
                                     "rounds 1..k as references."))
        doc["mrar_rounds"] = {"settings": out.settings.to_dict()}
    else:
        result.skipped.append("MRAR rounds: needs an MRAR checkpoint")

    # Figure 5: diversity per class
    all_labels = list(range(mc.num_classes))
    all_names = [class_label(y, mc.num_classes, pipe.class_names) for y in all_labels]
    say(f"Figure 5: the diversity measure of {len(all_labels)} classes")
    series = {_kind(pipe): pipe.diversity(all_labels, seed=seed, cfg=cfg).per_class.tolist()}
    if compare is not None:
        if compare.config.num_classes != mc.num_classes:
            raise TransDiffError(f"`compare` has {compare.config.num_classes} classes, this checkpoint "
                                 f"{mc.num_classes}: Figure 5 compares the same classes")
        label = _kind(compare)
        series[label + (" (compare)" if label in series else "")] = compare.diversity(
            all_labels, seed=seed, cfg=cfg).per_class.tolist()
    diversity_chart(all_names, series, folder / "fig5_diversity.png")
    result.figures.append(Figure("fig5_diversity.png", "Figure 5: diversity per class",
                                 "The paper's measure (appendix D): the mean off-diagonal cosine similarity of "
                                 "one image's semantic features; lower = more diverse"
                                 + (", beside the `--compare` checkpoint." if compare is not None else ".")))
    doc["fig5_diversity"] = {"classes": all_names, "per_class": series,
                             "mean": {k: sum(v) / len(v) for k, v in series.items()},
                             "compare": str(compare.checkpoint.path) if compare is not None else None}
    doc["figures"] = [f.file for f in result.figures]
    doc["skipped"] = result.skipped
    return doc


def _kind(pipe: TransDiffPipeline) -> str:
    return "MRAR" if pipe.config.mrar else "1-step"


def figures_markdown(result: Figures, command: str | None) -> str:
    doc = result.doc
    s = doc["settings_1step"]
    lines = ["# TransDiff figures", "", f"Checkpoint: `{doc['checkpoint']}`, seed {doc['seed']}.", ""]
    if command:
        lines += ["Made with:", "", "```bash", command, "```", ""]
    lines += [f"Decoding settings: cfg {', '.join(f'{c:g}' for c in s['cfg'])}, scale_0 {s['scale_0']:g}, "
              f"scale_1 {s['scale_1']:g}, {s['sampling_steps']} {s['sampler']} steps; the numbers are in "
              f"`{FIGURES_JSON}`.", ""]
    for f in result.figures:
        lines += [f"## {f.title}", "", f"![{f.title}]({f.file})", "", f.caption, ""]
    if result.skipped:
        lines += ["## Not drawn for this checkpoint", "", *[f"- {s}" for s in result.skipped], ""]
    return "\n".join(lines)
