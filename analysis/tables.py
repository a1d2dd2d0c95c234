"""Quality-versus-cost tables from the tidy table: FID at equal cost, cost to reach a FID, Pareto fronts.

FID between two eval points is interpolated linearly in log-cost (eval points are log-spaced, and FID
curves are close to straight there); outside a run's first and last points nothing is reported: an
empty cell means "not measured", never an extrapolation. Extrapolation lives in scaling.py, labelled."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

COST_AXES = {"device_hours": "device-hours", "pflops": "PFLOPs"}
METRIC_NAMES = {"fid": "FID", "kid_x1000": "KID x 1000"}


def interpolate(costs, values, at: float) -> float:
    """values at cost `at`, linear in log-cost between the surrounding points; NaN outside their range."""
    points = sorted((c, v) for c, v in zip(costs, values, strict=True) if c > 0 and np.isfinite(v))
    if not points or at <= 0 or at < points[0][0] or at > points[-1][0]:
        return math.nan
    for (c0, v0), (c1, v1) in zip(points, points[1:], strict=False):
        if c0 <= at <= c1:
            if c1 == c0:
                return v1
            w = (math.log(at) - math.log(c0)) / (math.log(c1) - math.log(c0))
            return v0 + w * (v1 - v0)
    return points[-1][1]  # at == the only point


def cost_to_reach(costs, values, target: float) -> float:
    """The first cost at which the (log-interpolated) FID reaches `target`; NaN if it never does."""
    points = sorted((c, v) for c, v in zip(costs, values, strict=True) if c > 0 and np.isfinite(v))
    if points and points[0][1] <= target:
        return points[0][0]
    for (c0, v0), (c1, v1) in zip(points, points[1:], strict=False):
        if v1 <= target < v0:
            w = (v0 - target) / (v0 - v1)
            return math.exp(math.log(c0) + w * (math.log(c1) - math.log(c0)))
    return math.nan


def ladder(df: pd.DataFrame, axis: str, rungs: int = 5) -> list[float]:
    """Log-spaced budgets at which to compare, at two significant digits where that stays inside.

    Where the runs' measured ranges overlap, the rungs span that overlap (every run has a number in every
    column, the last being the largest budget all of them reached), plus the largest cost any run reached;
    runs that do not overlap get rungs over the union of their ranges."""
    costs = df[df[axis] > 0]
    if costs.empty:
        return []
    per_run = costs.groupby("run_id")[axis].agg(["min", "max"])
    lo, hi, top = float(per_run["min"].max()), float(per_run["max"].min()), float(per_run["max"].max())
    if lo > hi:  # no budget at which every run measured: span them all
        lo, hi = float(per_run["min"].min()), top
    out = [_round_inside(v, lo, hi) for v in (np.geomspace(lo, hi, rungs) if hi > lo else [lo])]
    if top > hi * 1.01:  # the largest cost any run reached, as a column of its own
        out.append(_round_inside(top, hi * 1.01, top))
    return sorted({float(v) for v in out})


def round_significant(v: float, digits: int, how=round) -> float:
    """v > 0 to `digits` significant digits, by `how` (round, math.ceil or math.floor); the float noise of the
    scaling (0.015 / 0.001 = 15.000000000000002) is not a digit, so a value already round stays."""
    step = 10.0 ** (math.floor(math.log10(v)) - digits + 1)
    return float(f"{how(round(v / step, 9)) * step:.{digits}g}")


def _round_inside(v: float, lo: float, hi: float) -> float:
    """v at two significant digits, else three or four, rounded towards the inside of [lo, hi] (the end rungs sit
    on a run's first or last measured cost, which rounding to nearest can step outside)."""
    for digits in (2, 3, 4):
        for how in (round, math.ceil, math.floor):
            if lo <= (rounded := round_significant(v, digits, how)) <= hi:
                return rounded
    return float(v)


def _per_run(df: pd.DataFrame, fn) -> pd.DataFrame:
    rows = []
    for (model, run_id), run in df.groupby(["model", "run_id"], sort=True):
        rows.append({"model": model, "run_id": run_id, **fn(run)})
    return pd.DataFrame(rows)


def _mean_spread(per_run: pd.DataFrame, columns: list) -> pd.DataFrame:
    """Mean over the seeds (runs) of each curve, with their spread where several runs measured the cell; a
    single run shows its own error (KID's std over subsets) where the table has one (column + "__std")."""
    out = {}
    for model, runs in per_run.groupby("model", sort=True):
        out[model] = {}
        for col in columns:
            values = runs[col].dropna()
            if values.empty:
                out[model][col] = ""
            elif len(values) == 1:
                error = runs[f"{col}__std"].dropna() if f"{col}__std" in runs else []
                out[model][col] = f"{values.iloc[0]:.4g}" + (f" ± {error.iloc[0]:.2g}" if len(error) else "")
            else:
                out[model][col] = f"{values.mean():.4g} ± {values.std(ddof=1):.2g} (n={len(values)} seeds)"
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.name = "model"
    return table


def quality_at_equal_cost(df: pd.DataFrame, axis: str = "device_hours", budgets: list[float] | None = None,
                          metric: str = "fid") -> pd.DataFrame:
    """Each curve's metric at each budget of the ladder (rows: curves, columns: budgets on `axis`); a KID
    cell of a single run carries its std over subsets."""
    budgets = budgets or ladder(df, axis)
    columns = [f"{b:g} {COST_AXES.get(axis, axis)}" for b in budgets]
    error = f"{metric}_std" if f"{metric}_std" in df else None

    def cells(run):
        out = {}
        for col, b in zip(columns, budgets, strict=True):
            out[col] = interpolate(run[axis], run[metric], b)
            if error:
                out[f"{col}__std"] = interpolate(run[axis], run[error], b)
        return out

    return _mean_spread(_per_run(df, cells), columns)


def cost_to_reach_table(df: pd.DataFrame, targets: list[float], axis: str = "device_hours",
                        metric: str = "fid") -> pd.DataFrame:
    columns = [f"{METRIC_NAMES.get(metric, metric)} {t:g}" for t in targets]
    per_run = _per_run(df, lambda run: {col: cost_to_reach(run[axis], run[metric], t)
                                        for col, t in zip(columns, targets, strict=True)})
    return _mean_spread(per_run, columns)


def pareto_front(df: pd.DataFrame, x: str, y: str = "fid") -> pd.DataFrame:
    """Rows not dominated by any other (lower or equal x and y, one strictly lower), sorted by x."""
    rows = df[(df[x] > 0) & df[y].notna()].sort_values([x, y])
    front, best = [], math.inf
    for index, row in rows.iterrows():
        if row[y] < best:
            front.append(index)
            best = row[y]
    beside = [c for c in ("fid", "kid_x1000") if c != y and c in rows]
    return rows.loc[front, ["model", "run_name", "run_id", x, y, *beside]].reset_index(drop=True)


def final_points(df: pd.DataFrame) -> pd.DataFrame:
    """The last eval point of every run: what each run reached with its whole budget."""
    return df.sort_values("images_seen").groupby("run_id", sort=False).tail(1).reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no optional dependency)."""
    table = table.reset_index() if table.index.name else table
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)
