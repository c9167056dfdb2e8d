"""Numbers from the user checked where settings are resolved: seeds in the range every generator
takes in full, scales finite and within a range the float32 sampler can carry."""

from __future__ import annotations

import math

from .errors import TransDiffError

SEED_MAX = 2**63 - 1  # torch and numpy seeds use every bit below this; nothing is cut
SCALE_MAX = 1e4  # larger guidance or noise scales overflow float32 sampling


def check_seed(seed: int, option: str = "`seed`") -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise TransDiffError(f"{option} {seed} is out of range: give an integer from 0 to 2**63-1 "
                             f"({SEED_MAX})")
    return seed


def check_scale(value: float, option: str, *, low: float = 0.0, high: float = SCALE_MAX) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise TransDiffError(f"{option} {value} is not a finite number")
    if not low <= v <= high:
        raise TransDiffError(f"{option} {value} is out of range: give a number from {low:g} to "
                             f"{high:g}")
    return v
