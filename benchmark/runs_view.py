"""Where the tool sends people in MLflow's UI. MLflow 3 opens an experiment as GenAI work and its runs table
on run name, dataset and duration; the address it prints opens the model-training layout on a saved view
of the experiment (MLflow's own shared-view state, an experiment tag) whose columns are the answer: the
leading metric, what it cost and the model, sorted by the metric."""

from __future__ import annotations

import json

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

VIEW = "facebench"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW}"  # where MLflow's UI looks up ?viewStateShareKey=facebench
LAYOUT = "workflowType=machine_learning"  # runs, models, model registry: not traces and judges


COST = ("device_hours", "pflops", "sample_seconds_per_image")  # the chart view's Cost section
GRID = "samples/grid"  # the key eval points log their sample grid under


def view(lead: str) -> dict:
    """The runs table sorted by the leading metric (kid_mean or fid, lower is better), with it and the cost
    beside the model; its chart view opens on quality, the samples, then cost (MLflow appends the keys no chart
    names, the losses, as "Model metrics", then "System metrics")."""
    other = "fid" if lead == "kid_mean" else "kid_mean"
    columns = ["params.`model`", f"metrics.`{lead}`", f"metrics.`{other}`", "metrics.`images_seen`",
               "metrics.`device_hours`", "params.`budget`", "attributes.`Dataset`"]
    sections = [{"uuid": f"facebench-{name.lower()}", "name": name, "display": True, "isReordered": False,
                 "deleted": False, "isGenerated": False} for name in ("Quality", "Samples", "Cost")]
    # the grid card's caption would otherwise list every param of the run over the grid
    grid = {**_card("IMAGE", "facebench-samples-grid", "facebench-samples"), "imageKeys": [GRID], "step": 0,
            "showRunParams": False}
    charts = [*(_line(key, "facebench-quality") for key in (lead, other, "recall", "precision", "diversity")),
              grid,
              *(_line(key, "facebench-cost") for key in COST)]
    return {"orderByKey": f"metrics.`{lead}`", "orderByAsc": True, "selectedColumns": columns,
            "columnOrder": columns,  # else MLflow puts metrics alphabetically: device_hours, fid, ... kid_mean
            "compareRunSections": sections, "compareRunCharts": charts,
            "isAccordionReordered": True,  # else MLflow sorts the sections by name
            "hideEmptyCharts": True}  # a family without a key (the GANs have no recon_fid) shows no empty card


def _card(kind: str, uuid: str, section: str) -> dict:
    """The fields every MLflow chart card has (its RunsChartsCardConfig)."""
    return {"uuid": uuid, "type": kind, "runsCountToCompare": 10, "metricSectionId": section, "deleted": False,
            "isGenerated": False}


def _line(key: str, section: str) -> dict:
    """A metric against its step (images seen), as MLflow's own generated line charts are."""
    return {**_card("LINE", f"{section}-{key}", section), "metricKey": key, "displayName": key,
            "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear", "range": {}, "xAxisKey": "step",
            "selectedXAxisMetricKey": "", "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False,
            "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}


def save_view(client: MlflowClient, experiment_id: str, lead: str) -> bool:
    """Write (or update) the experiment's saved view; False where the store takes no writes (read-only)."""
    try:
        client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(view(lead)))
        return True
    except (MlflowException, OSError):
        return False


def has_view(client: MlflowClient, experiment_id: str) -> bool:
    return VIEW_TAG in client.get_experiment(experiment_id).tags


def runs_table_url(base: str, experiment_id: str, saved: bool = True) -> str:
    """The experiment's runs table (on its saved view where it has one)."""
    share = f"&viewStateShareKey={VIEW}" if saved else ""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{LAYOUT}{share}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """One run's page, in the model-training layout (its plain address opens the GenAI one)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{LAYOUT}"
