"""Where the learned velocity bends: the profile behind the `curvature` time grid, measured on the
model rather than assumed (docs/samplers.md#the-math).

A few pilot trajectories (PILOT_IMAGES images over the classes, fixed noise) follow the probability-
flow ODE in PILOT_STEPS uniform Euler steps with the run's first-round guidance; the curvature of
fine interval j is the mean over the pilots of ||v(t_j) - v(t_{j+1})|| / ||v||, the relative change of
the velocity across it (v at t = 0 is evaluated for the last interval). Euler's local error on a step
h is about h^2 |dv/dt| / 2, so the total error is smallest when the step density follows
sqrt(curvature); the grid is built that way (`grids.density_grid`). The profile is deterministic for a
model and a guidance scale, measured once per process (PILOT_STEPS + 1 evaluations of PILOT_IMAGES
images, outside any run's NFE) and written into the settings, so samples.json and shard identities
record the grid that was used.
"""

from __future__ import annotations

import math
import weakref

import torch

from ..model.transdiff import TransDiff
from .seeding import initial_noise
from .settings import SampleSettings

PILOT_IMAGES = 8
PILOT_STEPS = 32
PILOT_SEED = 0
_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {cfg: profile}


@torch.no_grad()
def measure_curvature(model: TransDiff, cfg: float = 1.0, *, images: int = PILOT_IMAGES,
                      steps: int = PILOT_STEPS, seed: int = PILOT_SEED) -> list[float]:
    """The curvature of each of `steps` equal intervals from t = 1 down to 0 (see the module)."""
    mc = model.config
    dev, dtype = model.class_emb.weight.device, model.class_emb.weight.dtype
    labels = torch.tensor([i % mc.num_classes for i in range(images)], device=dev)
    guided = cfg != 1.0
    emb = model.class_embedding(labels)
    c = model.condition(model.features(emb))
    if guided:
        c = torch.cat([c, model.null_condition(images).to(c.dtype)])
    times = [1.0 - j / steps for j in range(steps + 1)]
    velocity = model.velocity(c, images, guided, times)
    x = initial_noise(mc, range(images), seed).to(device=dev, dtype=dtype).float()
    prev, curv = None, []
    for j, t in enumerate(times):
        v_c, v_u = velocity(x, t)
        v = v_c if v_u is None else torch.lerp(v_u, v_c, cfg)
        v = v.float().flatten(1)
        if prev is not None:
            rel = (v - prev).norm(dim=1) / prev.norm(dim=1).clamp_min(1e-12)
            curv.append(float(rel.mean()))
        prev = v
        if j < steps:
            x = x + (-1.0 / steps) * v.view_as(x)
    return [c if math.isfinite(c) else 0.0 for c in curv]


def with_profile(model: TransDiff, settings: SampleSettings) -> SampleSettings:
    """`settings`, its curvature grid's profile filled in (measured once per model and scale; the
    grid follows sqrt(curvature)). Other grids are returned untouched."""
    if settings.params.get("grid") != "curvature" or settings.params.get("profile") is not None:
        return settings
    cfg = settings.cfg[0]
    per_model = _MEASURED.setdefault(model, {})
    if cfg not in per_model:
        per_model[cfg] = tuple(round(math.sqrt(k), 6) for k in measure_curvature(model, cfg))
    settings.params["profile"] = per_model[cfg]
    settings.sources["profile"] = f"measured ({PILOT_IMAGES} pilot trajectories, {PILOT_STEPS} steps)"
    return settings
