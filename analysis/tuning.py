"""How good is the best model a study finds, as a function of its tuning budget? (Lucic et al. 2018, "Are GANs
Created Equal?"): the expected best value after k trials, by bootstrap over a study's finished trials, with
its band, against k and against the device-hours k trials cost. Reads MLflow only."""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient


def expected_best(values: list[float], k: int) -> float:
    """The exact expected minimum of k draws with replacement from values: with v(1) <= ... <= v(n), the
    minimum is v(i) with probability ((n - i + 1) / n)^k - ((n - i) / n)^k."""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    above = (n - np.arange(n)) / n  # share of values >= v(i), i = 1..n
    return float(np.sum(v * (above**k - (above - 1 / n) ** k)))


def best_after_k(values: list[float], ks: list[int], draws: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Per k: the mean of the best of k trials drawn with replacement, and its 5%-95% band, over `draws`
    bootstrap draws."""
    rng = np.random.default_rng(seed)
    v = np.asarray(values, dtype=float)
    rows = []
    for k in ks:
        best = rng.choice(v, size=(draws, k)).min(axis=1)
        rows.append({"k": k, "mean": best.mean(), "lo": np.quantile(best, 0.05), "hi": np.quantile(best, 0.95)})
    return pd.DataFrame(rows)


def study_trials(client: MlflowClient, parent_run_id: str, metric: str) -> pd.DataFrame:
    """A study's trial runs: Optuna's state, the objective at the last eval point of a COMPLETE one (NaN for a
    pruned or failed one, whose last value is not its budget's) and the device-hours each spent, failed ones too."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=5000)
    rows = []
    for r in runs:
        state = r.data.tags.get("optuna.state", "")
        rows.append({"run_id": r.info.run_id, "state": state,
                     "value": r.data.metrics.get(metric, np.nan) if state == "COMPLETE" else np.nan,
                     "device_hours": r.data.metrics.get("device_hours", float(r.data.tags.get("device_hours") or 0))})
    return pd.DataFrame(rows, columns=["run_id", "state", "value", "device_hours"])


def tuning_curve(trials: pd.DataFrame, scale: float = 1.0) -> pd.DataFrame:
    """Expected best value after k = 1..n complete trials (x scale: KID x 1000) with its band, and what k trials
    cost: k times the mean device-hours of a trial, failed and pruned ones included (they were paid for)."""
    values = trials["value"].dropna().to_numpy() * scale
    if len(values) == 0:
        return pd.DataFrame(columns=["k", "mean", "lo", "hi", "device_hours"])
    curve = best_after_k(list(values), list(range(1, len(values) + 1)))
    per_trial = trials["device_hours"].mean() * len(trials) / len(values)  # the cost of one complete trial
    return curve.assign(device_hours=curve["k"] * per_trial)
