"""MLflow runs -> one tidy pandas table, a row per evaluation point of every run."""

from __future__ import annotations

import pandas as pd
from mlflow.tracking import MlflowClient

from benchmark.errors import UserError

# Metrics logged at every eval point (step = images seen) that the table carries.
METRICS = ("images_seen", "epochs", "device_hours", "pflops", "steps", "sample_nfe", "sample_seconds_per_image",
           "sample_gflops_per_image", "fid", "kid_mean", "kid_std", "precision", "recall", "is", "eval_samples",
           "recon_fid")
# How a number was made: only rows equal on all of these are compared with each other.
PROVENANCE = ("eval_samples", "real_samples", "reference", "weights_sha256", "dataset_fingerprint")
HYPER = ("lr", "lr_g", "lr_d", "beta1", "beta2", "batch_size", "seed", "budget")


def collect(experiments: list[str] | None = None, client: MlflowClient | None = None) -> pd.DataFrame:
    """Every run with at least one FID in the named experiments (all but study/report parents by default)."""
    client = client or MlflowClient()
    found = client.search_experiments()
    if experiments:
        missing = set(experiments) - {e.name for e in found}
        if missing:
            raise UserError(f"no MLflow experiment named {', '.join(sorted(missing))} in this store")
        found = [e for e in found if e.name in experiments]
    rows = []
    for exp in found:
        for run in client.search_runs([exp.experiment_id], max_results=5000):
            if "fid" not in run.data.metrics or run.data.tags.get("study.parent") == "true":
                continue
            rows += _eval_points(client, exp.name, run)
    columns = ["run_id", "run_name", "model", "experiment", "status", "spec_hash", *HYPER, "parent_run",
               *PROVENANCE, *[m for m in METRICS if m != "eval_samples"]]
    return pd.DataFrame(rows, columns=columns)


def _eval_points(client: MlflowClient, experiment: str, run) -> list[dict]:
    """A row per step at which FID was logged, with the cost and sampling metrics of that step."""
    tags, params = run.data.tags, run.data.params
    by_step: dict[int, dict] = {}
    for key in METRICS:
        for m in client.get_metric_history(run.info.run_id, key):
            by_step.setdefault(m.step, {})[key] = m.value
    base = {
        "run_id": run.info.run_id, "run_name": run.info.run_name, "model": params.get("model"),
        "experiment": experiment, "status": run.info.status, "spec_hash": tags.get("spec_hash"),
        **{h: _number(params.get(h)) for h in HYPER},
        "parent_run": tags.get("mlflow.parentRunId"),
        "real_samples": _number(tags.get("metrics.real_samples")), "reference": tags.get("metrics.reference"),
        "weights_sha256": tags.get("metrics.weights_sha256"), "dataset_fingerprint": tags.get("dataset_fingerprint"),
    }
    return [{**base, **values} for step, values in sorted(by_step.items()) if "fid" in values]


def _number(text):
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def comparable(df: pd.DataFrame, group: bool = False) -> list[pd.DataFrame]:
    """Split the table into sets of numbers made the same way (same N, reference split, Inception weights
    and data). With group=False a mixed table is refused with a message that names what differs."""
    if df.empty:
        return []
    keys = list(PROVENANCE)
    groups = [g for _, g in df.groupby(keys, dropna=False, sort=True)]
    if len(groups) > 1 and not group:
        differing = [k for k in keys if df[k].nunique(dropna=False) > 1]
        raise UserError("these runs' metrics were not made the same way (they differ in "
                        f"{', '.join(differing)}); compare like with like, or group them with --group")
    return groups
