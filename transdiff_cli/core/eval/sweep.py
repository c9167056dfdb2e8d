"""Sampler sweeps for `transdiff fid --sweep`: one axis or a grid of two over the sampling options
(cfg, cfg_interval, sampling_steps, sampler) and every sampler's declared parameters (scale_0,
scale_1, grid, shift, ...): how the authors chose their per-size settings. Written as a table (with
each point's NFE), JSON and a plot of FID and IS against the swept value."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from ..errors import TransDiffError
from ..plot_text import drawable
from ..sampling.eval_settings import DEFAULT_SAMPLER
from ..sampling.options import SamplingOptions
from ..sampling.samplers import SAMPLERS

# cfg_interval values are written LO:HI (the comma separates the sweep's values); nfe picks each
# sampler's sampling_steps: the most steps within that many network evaluations
AXES: dict[str, type] = {"cfg": float, "scale_0": float, "scale_1": float, "sampling_steps": int, "sampler": str,
                         "cfg_interval": str, "nfe": int,
                         **{n: p.type for cls in SAMPLERS.values() for n, p in cls.params().items()}}
IS_KEY = "inception_score_mean"


def parse_sweeps(specs: list[str] | None) -> list[tuple[str, list[float | int]]]:
    """["cfg=1.1,1.2", "scale_0=0.9,1"] -> [("cfg", [1.1, 1.2]), ("scale_0", [0.9, 1.0])]."""
    axes: list[tuple[str, list[float | int]]] = []
    for spec in specs or []:
        name, eq, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not values.strip():
            raise TransDiffError(f"`sweep` {spec!r}: write AXIS=V1,V2,... (axes: {', '.join(AXES)})")
        if name not in AXES:
            raise TransDiffError(f"`sweep`: unknown axis {name!r}; choose from {', '.join(AXES)}")
        if name in (a for a, _ in axes):
            raise TransDiffError(f"`sweep`: axis {name} given twice")
        try:
            parsed = [AXES[name](v.strip()) for v in values.split(",") if v.strip()]
        except ValueError:
            raise TransDiffError(f"`sweep` {spec!r}: values of {name} must be "
                                 f"{'integers' if AXES[name] is int else 'numbers'}") from None
        if name == "sampler" and set(parsed) - set(SAMPLERS):
            raise TransDiffError(f"`sweep` sampler: choose from {', '.join(SAMPLERS)}")
        if name in ("sampling_steps", "nfe") and min(parsed) < 1:
            raise TransDiffError(f"`sweep` {name}: values must be at least 1")
        axes.append((name, parsed))
    if len(axes) > 2:
        raise TransDiffError("`sweep`: at most two axes (a grid of two)")
    if {"nfe", "sampling_steps"} <= {a for a, _ in axes}:
        raise TransDiffError("`sweep`: nfe sets sampling_steps; sweep one of them")
    return axes


def point_options(options: SamplingOptions, point: dict[str, Any]) -> SamplingOptions:
    """The sampling options of one sweep point (an `nfe` value becomes the sampler's step count)."""
    values = dict(point)
    nfe = values.pop("nfe", None)
    if nfe is not None:
        name = values.get("sampler") or options.sampler or DEFAULT_SAMPLER
        values["sampling_steps"] = SAMPLERS[name].steps_for_nfe(nfe)
    return options.with_values(values)


def sweep_points(axes: list[tuple[str, list[float | int]]]) -> list[dict[str, float | int]]:
    names = [a for a, _ in axes]
    return [dict(zip(names, combo)) for combo in itertools.product(*(v for _, v in axes))]


def point_name(point: dict[str, float | int]) -> str:
    """The sub-folder of one setting, e.g. `cfg=1.3,scale_0=0.9`."""
    return ",".join(f"{k}={v}" for k, v in point.items())


def write_sweep(out: Path, axes: list[tuple[str, list[float | int]]], rows: list[dict[str, Any]],
                fid_key: str) -> dict[str, Path]:
    """sweep.json (every metric of every point), sweep.md (the table) and sweep.png."""
    out.mkdir(parents=True, exist_ok=True)
    names = [a for a, _ in axes]
    doc = {"axes": {a: v for a, v in axes}, "fid_key": fid_key, "points": rows}
    (out / "sweep.json").write_text(json.dumps(doc, indent=1))
    extra = [k for k in (IS_KEY, "class_fidelity", "precision", "recall", "nfe", "rows_per_image")
             if any(k in r for r in rows)]
    labels = {IS_KEY: "IS", "class_fidelity": "class fidelity", "nfe": "NFE", "rows_per_image": "rows/image"}
    head = [*names, "FID", *(labels.get(k, k) for k in extra)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [str(r[a]) for a in names] + [f"{r[fid_key]:.4f}"] + \
                [("" if k not in r else str(r[k]) if isinstance(r[k], int) else f"{r[k]:.4f}") for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    return {"json": out / "sweep.json", "table": out / "sweep.md", "plot": plot_sweep(out / "sweep.png", names,
                                                                                      rows, fid_key)}


def plot_sweep(path: Path, names: list[str], rows: list[dict[str, Any]], fid_key: str) -> Path:
    """FID (and IS when measured) against the first axis; one line per value of the second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [(fid_key, "FID (lower is better)")] + \
        ([(IS_KEY, "IS (higher is better)")] if all(IS_KEY in r for r in rows) else [])
    fig, axs = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), dpi=120, squeeze=False)
    x_axis = names[0]
    groups = sorted({r[names[1]] for r in rows}) if len(names) > 1 else [None]
    for ax, (key, label) in zip(axs[0], metrics):
        for g in groups:
            pts = sorted((r[x_axis], r[key]) for r in rows if g is None or r[names[1]] == g)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=None if g is None else drawable(f"{names[1]}={g}"))
        ax.set_xlabel(drawable(x_axis))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
