"""Where a checkpoint's sampling defaults come from (docs/architecture.md#recipes).

A published `.pth` carries the authors' *training-time* flags in its `args` (cfg 1.0, scales 1.0,
`num_sampling_steps` "100", `sampler` ""): they are never sampling settings. So:
- a published checkpoint of a known size (B/L/H, 1-step or MRAR, 256; L at 512) gets the authors'
  evaluation table, with 100 Euler-Maruyama steps;
- a published checkpoint of any other size gets the tool's generic defaults;
- our own checkpoints keep the settings stored in their config.
Flags given by the user override all of these; every setting records its provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..model.config import MRAR_SAMPLING, PRESETS, ModelConfig

FLAG = "flag"
CHECKPOINT = "checkpoint"
TOOL_DEFAULT = "tool default"
SETTINGS = ("cfg", "scale_0", "scale_1", "sampling_steps", "sampler")
PUBLISHED_STEPS = 100  # the authors' evaluation never passes num_sampling_steps
DEFAULT_SAMPLER = "em"

# (size, MRAR, latent size) -> (cfg, scale_0, scale_1): the authors' README table. Latent size 16
# is 256x256 through the KL-16 VAE (256 decoder tokens), 32 is 512x512 (1024 decoder tokens).
PUBLISHED_EVAL: dict[tuple[str, bool, int], tuple[float, float, float]] = {
    **{(s, False, 16): (PRESETS[s]["cfg"], PRESETS[s]["scale_0"], PRESETS[s]["scale_1"])
       for s in ("B", "L", "H")},
    **{(s, True, 16): (v["cfg"], v["scale_0"], v["scale_1"]) for s, v in MRAR_SAMPLING.items()},
    ("L", False, 32): (1.30, 0.87, 0.87),
}


@dataclass
class SettingDefaults:
    """What sampling uses for every setting the user does not give, and where each came from."""

    cfg: list[float]  # one scale per MRAR round (all the same for a 1-step model)
    scale_0: float
    scale_1: float
    sampling_steps: int
    sampler: str
    sources: dict[str, str] = field(default_factory=dict)  # setting -> provenance


def _generic() -> dict[str, object]:
    """The tool's generic defaults: ModelConfig's own field defaults (no guidance, plain scales)."""
    d = {f.name: f.default for f in fields(ModelConfig) if f.name in SETTINGS}
    return {"cfg": float(d["cfg"]), "scale_0": float(d["scale_0"]), "scale_1": float(d["scale_1"]),
            "sampling_steps": int(d["sampling_steps"]), "sampler": DEFAULT_SAMPLER}


def published_table_entry(config: ModelConfig) -> tuple[str, tuple[float, float, float]] | None:
    """(provenance label, (cfg, scale_0, scale_1)) for a published model of a known size, else None."""
    key = (config.size, bool(config.mrar), config.latent_size)
    values = PUBLISHED_EVAL.get(key)
    if values is None:
        return None
    resolution = config.latent_size * 16  # the KL-16 VAE: 16 pixels per latent cell
    label = f"published table (TransDiff-{config.size}, {'MRAR' if config.mrar else '1-step'}, {resolution})"
    return label, values


def checkpoint_defaults(config: ModelConfig, published: bool) -> SettingDefaults:
    """The sampling defaults of a checkpoint: see the module docstring. Never reads saved `args`."""
    k = config.mrar_rounds if config.mrar else 1
    if not published:
        src = dict.fromkeys(("cfg", "scale_0", "scale_1", "sampling_steps"), CHECKPOINT)
        src["sampler"] = CHECKPOINT if config.sampler else TOOL_DEFAULT  # set by `distill`
        return SettingDefaults(config.cfg_schedule()[:k], config.scale_0, config.scale_1, config.sampling_steps,
                               config.sampler or DEFAULT_SAMPLER, src)
    entry = published_table_entry(config)
    if entry is not None:
        label, (cfg, s0, s1) = entry
        return SettingDefaults([cfg] * k, s0, s1, PUBLISHED_STEPS, DEFAULT_SAMPLER,
                               dict.fromkeys(SETTINGS, label))
    g = _generic()
    return SettingDefaults([g["cfg"]] * k, g["scale_0"], g["scale_1"], g["sampling_steps"],
                           g["sampler"], dict.fromkeys(SETTINGS, TOOL_DEFAULT))


def settings_block(settings: object) -> list[str]:
    """What every sampling command prints first: a title and `describe`'s lines."""
    return ["sampling settings (provenance):", *describe(settings)]


def cost_line(settings: Any, images: int) -> str:
    """NFE per image (a guided pair batched counts once) and the network rows it computed."""
    c = settings.cost()
    if c["nfe"] is None:
        return "NFE: measured with the curvature grid"
    return (f"NFE {c['nfe']} per image ({c['rows']} network rows per image, "
            f"{c['rows'] * images} for {images} image(s))")


def describe(settings: object) -> list[str]:
    """Lines saying each sampling setting and where it came from (for the start of a command)."""
    d = settings.to_dict() if hasattr(settings, "to_dict") else dict(vars(settings))
    sources = d.pop("sources", {})
    lines = []
    for name, value in d.items():
        if name == "profile" or (name == "rows" and value is None):
            continue
        if isinstance(value, list):
            value = ", ".join(f"{v:g}" for v in value)
        elif isinstance(value, float):
            value = f"{value:g}"
        elif value is None:
            value = "-"
        lines.append(f"  {name:<15}{str(value):<22}({sources.get(name, '?')})")
    return lines
