"""Time grids for the few-step samplers: t_0 = 1 > t_1 > ... > t_n = 0 (noise -> data).

- uniform: t_i = 1 - i / n;
- shifted: the uniform grid mapped by t' = s t / (1 + (s - 1) t) (SD3's shift; s > 1 puts more steps
  at high noise, s < 1 more near the data);
- curvature: the steps placed where the learned velocity bends most. `density_grid` inverts the
  cumulative of a measured per-interval weight (see `curvature.measure_curvature`), so every step
  covers an equal share of it.
"""

from __future__ import annotations

from collections.abc import Sequence

GRIDS = ("uniform", "shifted", "curvature")


def uniform(n: int) -> list[float]:
    return [1.0 - i / n for i in range(n)] + [0.0]


def shifted(n: int, shift: float) -> list[float]:
    """The uniform grid through t' = s t / (1 + (s - 1) t); s = 1 is the uniform grid."""
    return [shift * t / (1.0 + (shift - 1.0) * t) for t in uniform(n)]


def density_grid(n: int, weights: Sequence[float], floor: float = 0.1) -> list[float]:
    """n steps from 1 to 0 with equal mass each under a piecewise-constant density: `weights[j]` on
    the j-th of len(weights) equal intervals of [0, 1], counted from t = 1 down. `floor` (a share of
    the mean weight) keeps a step from growing without bound where the velocity is straight."""
    m = len(weights)
    mean = sum(weights) / m if m else 0.0
    if m == 0 or mean <= 0.0:
        return uniform(n)
    w = [max(float(x), 0.0) + floor * mean for x in weights]
    cum = [0.0]
    for x in w:
        cum.append(cum[-1] + x)
    total = cum[-1]
    grid, j = [1.0], 0
    for i in range(1, n):
        target = total * i / n
        while cum[j + 1] < target:
            j += 1
        s = (j + (target - cum[j]) / w[j]) / m  # distance travelled from t = 1
        grid.append(1.0 - s)
    return grid + [0.0]
