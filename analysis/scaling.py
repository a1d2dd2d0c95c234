"""A fitted scaling curve per model, FID(c) = a * c^-b + e over its eval points: projections of the FID
at a larger budget and of the cost to reach a target FID, with bootstrap intervals. Extrapolation,
and labelled so everywhere it is shown."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

B_GRID = np.linspace(0.01, 3.0, 300)
UNDETERMINED = 0.10  # share of bootstrap refits with a parameter on a bound above which a fit says so


def _bounded(params: np.ndarray) -> np.ndarray:
    """(k, 3) parameter rows (a, b, e) -> (k, 3) booleans: a = 0, b at an end of its grid, e = 0."""
    a, b, e = params[:, 0], params[:, 1], params[:, 2]
    return np.stack([a <= 1e-12, (b <= B_GRID[0]) | (b >= B_GRID[-1]), e <= 1e-12], axis=1)


def power_law(c, a, b, e):
    return a * np.power(c, -b) + e


@dataclass
class Fit:
    """FID(c) = a * (c / scale)^-b + e: cost is fitted in units of the largest measured cost, which keeps
    the problem well conditioned whether costs are 1e-5 device-hours or 1e4 PFLOPs."""

    a: float
    b: float
    e: float
    points: int
    samples: np.ndarray  # bootstrap parameter draws (k, 3), for intervals
    scale: float = 1.0

    @property
    def on_bounds(self) -> list[str]:
        """Why the data do not determine the curve, if they do not: a parameter on a bound of the fit (a = 0:
        no gain with cost seen; e = 0: no floor seen; b at either end of its grid), or in at least
        UNDETERMINED of the bootstrap refits. A projection from such a fit is the bounds', not the data's."""
        best = _bounded(np.array([[self.a, self.b, self.e]]))[0]
        said = [name for name, on in zip(("a = 0", f"b = {self.b:g}", "e = 0"), best, strict=True) if on]
        refits = float(_bounded(self.samples).any(axis=1).mean())
        if refits >= UNDETERMINED:
            said.append(f"{refits:.0%} of bootstrap refits")
        return said

    @property
    def a_raw(self) -> float:
        """a in FID(c) = a c^-b + e with c in the caller's units."""
        return self.a * self.scale**self.b

    def fid_at(self, cost: float) -> tuple[float, float, float]:
        """(estimate, 5th, 95th percentile) of FID at cost."""
        c = cost / self.scale
        draws = power_law(c, self.samples[:, 0], self.samples[:, 1], self.samples[:, 2])
        return float(power_law(c, self.a, self.b, self.e)), *map(float, np.percentile(draws, [5, 95]))

    def cost_for(self, target: float) -> tuple[float, float, float]:
        """(estimate, 5th, 95th percentile) of the cost at which FID reaches target; inf if never (e >= target)."""

        def invert(a, b, e):
            if not (target > e and a > 0 and b > 0):
                return math.inf
            # in logs: a target just above the floor with a small b is a cost beyond any float, not an error
            log_cost = math.log(self.scale) + (math.log(a) - math.log(target - e)) / b
            return math.exp(log_cost) if log_cost < 700 else math.inf

        draws = np.array([invert(*p) for p in self.samples])
        return invert(self.a, self.b, self.e), *map(float, np.percentile(draws, [5, 95], method="nearest"))


def fit(costs, fids, bootstrap: int = 100, seed: int = 0, points=None) -> Fit | None:
    """Least-squares fit in FID with a, e >= 0 and b in (0, 3]; None with fewer than 4 distinct cost points (3
    parameters). `points` names each row's eval point: the seeds of one curve at one eval point are one cost
    point, however their device-hours jitter."""
    from scipy.optimize import nnls

    c = np.asarray(costs, dtype=float)
    y = np.asarray(fids, dtype=float)
    keep = (c > 0) & np.isfinite(y)
    c, y = c[keep], y[keep]
    distinct = len(np.unique(np.asarray(points)[keep])) if points is not None else len(np.unique(c))
    if len(c) < 4 or distinct < 4:
        return None
    scale = float(c.max())
    c = c / scale

    def solve(cc, yy):
        """For a fixed b the model is linear in (a, e): non-negative least squares on a grid of b."""
        best_params, best_err = None, math.inf
        for b in B_GRID:
            X = np.stack([np.power(cc, -b), np.ones_like(cc)], axis=1)
            (a, e), err = nnls(X, yy)
            if err < best_err:
                best_params, best_err = (a, b, e), err
        return np.array(best_params)

    try:
        best = solve(c, y)
    except (RuntimeError, ValueError):
        return None
    rng = np.random.default_rng(seed)
    # Fitted residuals are smaller than the noise by the 3 parameters they were fitted with: rescaled by
    # sqrt(n / (n - 3)). The 5-95% band still covers a known curve less often than 90% (8 noisy points:
    # 78% -> 81% of 100 draws, at 0.2x to 20x the largest cost): read it as a lower bound on the spread.
    residuals = (y - power_law(c, *best)) * math.sqrt(len(c) / (len(c) - 3))
    draws = []
    for _ in range(bootstrap):  # residual bootstrap: the spread of curves these points allow
        try:
            draws.append(solve(c, power_law(c, *best) + rng.choice(residuals, len(c))))
        except (RuntimeError, ValueError):
            continue
    return Fit(*map(float, best), points=len(c), samples=np.array(draws) if draws else np.array([best]), scale=scale)
