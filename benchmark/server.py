"""MLflow's web servers, started for the user and announced only once they answer: `bench ui` (the UI on a
store, at the runs table) and `bench server` (a team tracking server: a database for runs, proxied artifacts)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
from mlflow.tracking import MlflowClient

from benchmark.data import cache_root
from benchmark.errors import UserError
from benchmark.metrics import leading_metric
from benchmark.redact import masked
from benchmark.runs_view import has_view, runs_table_url, save_view
from benchmark.tracking import find_experiments


def experiment_to_open(name: str | None, client: MlflowClient) -> str | None:
    """The id of the named experiment (or a spec file's), else of the one with the latest run; None if empty."""
    if name:
        return find_experiments([name], client)[0].experiment_id
    ids = [e.experiment_id for e in client.search_experiments()]
    latest = client.search_runs(ids, max_results=1, order_by=["attributes.start_time DESC"]) if ids else []
    return latest[0].info.experiment_id if latest else None


def lead_of(client: MlflowClient, experiment_id: str) -> str:
    """The metric that leads at the N of the experiment's latest scored run (runs made before saved views)."""
    runs = client.search_runs([experiment_id], "tags.`metrics.eval_samples` != ''", max_results=1,
                              order_by=["attributes.start_time DESC"])
    if not runs:
        return "kid_mean"
    tags = runs[0].data.tags
    return leading_metric(int(tags["metrics.eval_samples"]), int(tags["metrics.real_samples"]))


def ui(uri: str, host: str, port: int, experiment: str | None, timeout: float) -> None:
    """`mlflow ui` on uri; prints the runs table's address once it answers."""
    client = MlflowClient(uri)
    experiment_id = experiment_to_open(experiment, client)
    warn_if_open(host, "read (and through the UI, change) runs")
    base = f"http://{reachable(host)}:{port}"
    if experiment_id:
        saved = has_view(client, experiment_id) or save_view(client, experiment_id, lead_of(client, experiment_id))
        where = runs_table_url(base, experiment_id, saved)
    else:
        where = f"{base}/ (the store has no runs yet)"
    serve(["ui"], host, port, timeout, f"open {where}", {"MLFLOW_BACKEND_STORE_URI": uri})


def tracking_server(backend: str, artifacts: str, host: str, port: int, workers: int, timeout: float) -> None:
    """`mlflow server` with a database backend and proxied artifact storage: clients on other machines log
    runs, grids and checkpoints over HTTP alone (their artifact URIs are mlflow-artifacts:/...)."""
    if "://" not in backend:
        raise UserError(f"--backend-store-uri {backend!r} is not a database URL (sqlite:///runs.db, "
                        "postgresql+psycopg2://user@host/db)")
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    warn_if_open(host, "read and write runs")
    address = f"http://{reachable(host)}:{port}"
    serve(["server", "--artifacts-destination", artifacts, "--serve-artifacts", "--workers", str(workers)], host,
          port, timeout, f"tracking server at {address} (runs in {masked(backend)}, artifacts in {artifacts}); on "
          f"each client: export MLFLOW_TRACKING_URI={address}", {"MLFLOW_BACKEND_STORE_URI": backend})


LOCAL = ("127.0.0.1", "localhost", "::1")
EVERY_INTERFACE = ("0.0.0.0", "::", "")


def warn_if_open(host: str, what: str) -> None:
    if host not in LOCAL:
        click.echo(f"warning: serving on {host}: anyone who reaches this port can {what} (MLflow's server has no "
                   "authentication here); put it behind a proxy with auth", err=True)


def reachable(host: str) -> str:
    """The address to tell clients: 0.0.0.0 is where a server listens (every interface), not an address anyone
    can reach; this machine's name is."""
    return socket.getfqdn() if host in EVERY_INTERFACE else host


def serve(command: list[str], host: str, port: int, timeout: float, announce: str, env: dict[str, str]) -> None:
    """Start `mlflow COMMAND`, wait until /health answers (tens of seconds on a small CPU), print `announce`,
    and stay in the foreground until Ctrl-C or SIGTERM, which stop the server too. The store's URL goes through
    `env`, not the command line, which anyone on the machine can read (ps)."""
    log_path = cache_root() / "servers" / f"mlflow-{command[0]}-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as server_log:
        # MLflow 3's job runner (GenAI judges, trace roll-ups) is a second process we have no use for: without
        # it the server answers ~4 s sooner on 2 cores and leaves them to training (the user's setting wins)
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **env}
        server = subprocess.Popen([sys.executable, "-m", "mlflow", *command, "--host", host, "--port", str(port)],
                                  stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    click.echo(f"starting mlflow {command[0]} on http://{host}:{port} (its log: {log_path}) ...", err=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stop as Ctrl-C does: the server goes too
    try:
        local = "127.0.0.1" if host in EVERY_INTERFACE else host  # where this machine reaches it
        _wait_until_healthy(server, f"http://{local}:{port}/health", timeout, log_path)
        click.echo(announce)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        _stop(server)
        signal.signal(signal.SIGTERM, previous)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _wait_until_healthy(server: subprocess.Popen, url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UserError(f"mlflow exited ({server.returncode}) before it answered: {_last_line(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    _stop(server)
    raise UserError(f"mlflow did not answer within {timeout:.0f} s; its log: {log_path}")


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
