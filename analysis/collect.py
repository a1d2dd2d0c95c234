"""MLflow runs -> one tidy pandas table, a row per evaluation point of every run."""

from __future__ import annotations

import json

import pandas as pd
from mlflow.tracking import MlflowClient

from benchmark.errors import UserError
from benchmark.tracking import find_experiments

# Metrics logged at every eval point (step = images seen) that the table carries.
METRICS = ("images_seen", "epochs", "device_hours", "pflops", "steps", "sample_nfe", "sample_seconds_per_image",
           "sample_gflops_per_image", "fid", "kid_mean", "kid_std", "precision", "recall", "diversity", "is",
           "eval_samples", "recon_fid")
# How a number was made: only rows equal on all of these are compared with each other.
PROVENANCE = ("eval_samples", "real_samples", "reference", "weights_sha256", "inception_precision",
              "dataset_fingerprint")
HYPER = ("lr", "lr_g", "lr_d", "beta1", "beta2", "batch_size", "seed", "budget")


# Spec fields that do not change what is trained: a model's curve is its spec without them (the eval.*
# settings are provenance, compared by `comparable`).
NOT_TRAINING = ("seed", "log_every", "checkpoint_minutes")


def collect(experiments: list[str] | None = None, client: MlflowClient | None = None,
            include_trials: bool = False) -> pd.DataFrame:
    """Every run with at least one FID in the named experiments (study and report parents never, study trials
    only with include_trials). `model` names a curve: one training spec, its seeds pooled (see curves)."""
    client = client or MlflowClient()
    found = find_experiments(experiments, client) if experiments else client.search_experiments()
    rows, params = [], {}
    for exp in found:
        for run in client.search_runs([exp.experiment_id], max_results=5000):
            if "fid" not in run.data.metrics or run.data.tags.get("study.parent") == "true":
                continue
            if "optuna.trial" in run.data.tags and not include_trials:
                continue
            rows += _eval_points(client, exp.name, run)
            params[run.info.run_id] = run.data.params
    columns = ["run_id", "run_name", "model", "family", "curve", "alias", "bn", "experiment", "status", "spec_hash",
               "hardware", "point", *HYPER, "parent_run", *PROVENANCE, *[m for m in METRICS if m != "eval_samples"],
               "kid_x1000", "kid_x1000_std"]
    df = pd.DataFrame(rows, columns=columns)
    df["kid_x1000"], df["kid_x1000_std"] = 1000 * df["kid_mean"], 1000 * df["kid_std"]
    return label_curves(df, params)


def training_params(params: dict[str, str]) -> dict[str, str]:
    """The params that decide what is trained: the spec without its seed, logging and eval.* settings."""
    return {k: v for k, v in params.items() if k not in NOT_TRAINING and not k.startswith("eval.")}


def curve_key(params: dict[str, str]) -> str:
    """Runs that share it are seeds of one curve."""
    return json.dumps(training_params(params), sort_keys=True)


def label_curves(df: pd.DataFrame, params: dict[str, dict[str, str]]) -> pd.DataFrame:
    """`model` becomes the curve's name: the family where it has one spec, else the name each of its specs ran
    under (`bench compare --models seed-dcgan.toml,...`) where those tell them apart, else the family and what
    differs between its specs (`dcgan lr_g=0.0002`); `family` keeps the family."""
    if df.empty:
        return df
    df["family"] = df["model"]
    df["model"] = df["model"].astype(str)
    for fam, runs in df.groupby("family", sort=True):
        first = runs.drop_duplicates("curve").set_index("curve")  # one run speaks for its curve
        if len(first) == 1:
            continue
        if first["alias"].notna().all() and first["alias"].is_unique:
            df.loc[runs.index, "model"] = runs["curve"].map(first["alias"])
            continue
        specs = {curve: training_params(params[run_id]) for curve, run_id in first["run_id"].items()}
        fields = sorted({k for spec in specs.values() for k in spec}, key=_field_order)
        differing = [k for k in fields if len({spec.get(k) for spec in specs.values()}) > 1]
        labels = {curve: f"{fam} " + " ".join(f"{k}={spec.get(k)}" for k in differing[:4])
                  + (" ..." if len(differing) > 4 else "") for curve, spec in specs.items()}
        df.loc[runs.index, "model"] = runs["curve"].map(labels)
    return df


def _field_order(key: str) -> tuple[int, str]:
    """Hyperparameters first in labels, the rest by name."""
    return (HYPER.index(key) if key in HYPER else len(HYPER), key)


def _eval_points(client: MlflowClient, experiment: str, run) -> list[dict]:
    """A row per step at which FID was logged, with the cost and sampling metrics of that step."""
    tags, params = run.data.tags, run.data.params
    by_step: dict[int, dict] = {}
    for key in METRICS:
        for m in client.get_metric_history(run.info.run_id, key):
            by_step.setdefault(m.step, {})[key] = m.value
    base = {
        "run_id": run.info.run_id, "run_name": run.info.run_name, "model": params.get("model"),
        "curve": curve_key(params), "alias": tags.get("model_alias"), "bn": tags.get("metrics.bn", "n/a"),
        "experiment": experiment, "status": run.info.status, "spec_hash": tags.get("spec_hash"),
        **{h: _number(params.get(h)) for h in HYPER},
        "parent_run": tags.get("mlflow.parentRunId"),
        "real_samples": _number(tags.get("metrics.real_samples")), "reference": tags.get("metrics.reference"),
        "weights_sha256": tags.get("metrics.weights_sha256"),
        # runs scored before features had a precision computed them in fp32
        "inception_precision": tags.get("metrics.inception_precision", "fp32"),
        "dataset_fingerprint": tags.get("dataset_fingerprint"),
        "hardware": hardware(tags),
    }
    scored = [values for _, values in sorted(by_step.items()) if "fid" in values]
    return [{**base, **values, "point": i} for i, values in enumerate(scored)]  # point: the eval point's index


def hardware(tags: dict[str, str]) -> str:
    """What a run's device-hours were measured on: device, cores and threads it had, ranks. Runs made before
    cores and threads were tagged say only their device."""
    text = tags.get("device", "unknown device").partition(":")[2] or tags.get("device", "unknown device")
    if "cores" in tags:
        text += f", {tags['cores']} cores, {tags.get('threads', '?')} threads"
    ranks = int(tags.get("world_size", "1"))
    return text + (f", {ranks} ranks" if ranks > 1 else "")


def _number(text):
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def comparable(df: pd.DataFrame, group: bool = False) -> list[pd.DataFrame]:
    """Split the table into sets of numbers made the same way (same N, reference split, Inception weights and
    precision, data, and BatchNorm sampling statistics among models that have them). With group=False a mixed table is
    refused with a message that names what differs."""
    if df.empty:
        return []
    # BatchNorm statistics matter only between models that have BatchNorm (n/a: diffusion) in their sampler
    modes = sorted(set(df["bn"]) - {"n/a"})
    df = df.assign(bn_group=df["bn"].where(df["bn"] != "n/a", modes[0] if len(modes) == 1 else "n/a"))
    keys = [*PROVENANCE, "bn_group"]
    groups = [g.drop(columns="bn_group") for _, g in df.groupby(keys, dropna=False, sort=True)]
    if len(groups) > 1 and not group:
        differing = [k.replace("bn_group", "bn (BatchNorm sampling statistics)") for k in keys
                     if df[k].nunique(dropna=False) > 1]
        raise UserError("these runs' metrics were not made the same way (they differ in "
                        f"{', '.join(differing)}); compare like with like, or group them with --group")
    return groups
