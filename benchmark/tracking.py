"""MLflow: the run's lifecycle, params, tags, batched metrics, files, and resuming into the same run."""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import torch
from mlflow.entities import Metric, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from benchmark.data import cache_root
from benchmark.errors import UserError

log = logging.getLogger(__name__)


def use_tracking_uri(uri: str | None) -> str:
    """Point MLflow at uri; with none, MLflow's own default (mlflow.db + ./mlruns in the working dir)."""
    if uri:
        mlflow.set_tracking_uri(uri)
    return mlflow.get_tracking_uri()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


class Tracker:
    """One MLflow run. Files are written into `dir`; on a local store that is the artifact folder itself."""

    def __init__(self, run_id: str):
        self.client = MlflowClient()
        self.run_id = run_id
        run = self.client.get_run(run_id)
        self.experiment_id = run.info.experiment_id
        local = local_path(run.info.artifact_uri)
        self.remote_artifacts = local is None
        self.dir = local if local is not None else cache_root() / "runs" / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, experiment_name: str, run_name: str | None, params: dict, tags: dict) -> Tracker:
        client = MlflowClient()
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
        run = client.create_run(experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
        tracker = cls(run.info.run_id)
        params = {k: str(v) for k, v in params.items()}
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i : i + 100]])
        return tracker

    @classmethod
    def resume(cls, run_id: str) -> Tracker:
        client = MlflowClient()
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise UserError(f"no MLflow run {run_id!r} in {mlflow.get_tracking_uri()}") from None
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "resumed", str(int(run.data.tags.get("resumed", "0")) + 1))
        return cls(run_id)

    def end(self, status: str, reason: str | None = None) -> None:
        self.flush()
        if reason:
            self.client.set_tag(self.run_id, "failure_reason", reason[:5000])
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))

    # ------------------------------------------------------------ metrics and files

    def metric(self, key: str, value: float, step: int) -> None:
        self._pending.append(Metric(key, float(value), int(time.time() * 1000), int(step)))

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.metric(key, value, step)

    def maybe_flush(self, every_seconds: float = 10.0) -> None:
        """One log call per step costs ~5 ms on SQLite, so metrics go out in batches."""
        if time.monotonic() - self._last_flush > every_seconds:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            self.client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def tags(self, values: dict) -> None:
        for key, value in values.items():
            self.client.set_tag(self.run_id, key, str(value))

    def publish(self, relpath: str) -> None:
        """Make a file under `dir` an artifact; on a local store it already is one."""
        if self.remote_artifacts:
            path = self.dir / relpath
            self.client.log_artifact(self.run_id, str(path), str(Path(relpath).parent) if "/" in relpath else None)

    def history(self, key: str) -> list[tuple[int, float]]:
        self.flush()
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]


def environment_tags(device: torch.device) -> dict[str, str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "git_commit": git_commit(),
        "device": f"{device.type}:{name}",
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def runs_table_url(base: str, experiment_id: str) -> str:
    """MLflow 3's UI opens an experiment on an overview page; the runs table lives here."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"

