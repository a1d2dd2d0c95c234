"""Work beyond one process: `bench server` (a team tracking server on PostgreSQL with proxied artifacts),
`bench compare --workers` against it, and `bench compare --print-commands` for a cluster's scheduler."""

import os
import shlex
import socket
import subprocess
import sys
import urllib.request

import psutil
from mlflow.tracking import MlflowClient

from conftest import ROOT, bench, bench_inprocess, free_port

SMALL = ["--set", "batch_size=16", "--set", "eval.samples=6", "--set", "eval.real_samples=16", "--set",
         "eval.points=2", "--set", "eval.grid=4", "--set", "ngf=8", "--set", "ndf=8", "--set", "wgan-gp:n_critic=2"]


PASSWORD = "S3cret-pw"


def test_a_two_worker_compare_logs_everything_through_a_team_server(postgres_server, celeba, tmp_path):
    """Served on every interface, on purpose, from a database URL with a password (the test server trusts any):
    a warning, an address clients can reach (never 0.0.0.0), and the password nowhere (output, ps)."""
    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    backend = postgres_server("mlflow").replace("postgres@", f"postgres:{PASSWORD}@")
    server = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "server", "--host", "0.0.0.0", "--port",
                               str(port), "--backend-store-uri", backend, "--artifacts-destination", str(artifacts)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = server.stdout.readline()  # printed once the server answers
        told = f"http://{socket.getfqdn()}:{port}"
        assert line.startswith(f"tracking server at {told} ") and f"export MLFLOW_TRACKING_URI={told}" in line
        assert "postgres:***@" in line and PASSWORD not in line, line
        started = [" ".join(p.cmdline()) for p in psutil.Process(server.pid).children(recursive=True)]
        assert any("mlflow" in line for line in started) and not any(PASSWORD in line for line in started), started
        uri = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200

        proc = bench("compare", "--models", "dcgan,wgan-gp", "--budget", "32img", "--data", str(celeba), *SMALL,
                     "--workers", "2", "--experiment-name", "team", "--tracking-uri", uri, "--quiet")
        assert proc.stdout.strip() == f"report: {os.path.join('reports', 'team', 'index.html')}"
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("team").experiment_id])
        assert sorted(r.info.run_name for r in runs) == ["dcgan-32img-s0", "wgan-gp-32img-s0"]
        for run in runs:
            assert run.info.status == "FINISHED" and run.data.tags["compare"] == "team"
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # over HTTP, through the server
            assert len(client.get_metric_history(run.info.run_id, "kid_mean")) == 2
            listed = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints/remote")}
            assert "checkpoints/remote/latest.json" in listed
            # the files live where the server keeps them, not on the client's side
            assert [p for p in artifacts.rglob("latest.json") if run.info.run_id in p.parts]
        assert sorted(p.name for p in (tmp_path / "reports" / "team" / "logs").iterdir()) == [
            "dcgan-32img-s0.log", "wgan-gp-32img-s0.log"]
    finally:
        os.killpg(server.pid, 15)
        _, err = server.communicate(timeout=30)
    assert "warning: serving on 0.0.0.0" in err and PASSWORD not in err, err
    assert server.returncode == 0  # bench server stopped on SIGTERM, and mlflow with it:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        raise AssertionError("the MLflow server outlived bench server")
    except OSError:
        pass


def test_print_commands_gives_one_run_line_per_model_and_seed(capsys):
    code, out, err = bench_inprocess("compare", "--models", "dcgan,ddpm", "--budget", "1h|2ep", "--seeds", "2",
                                     "--set", "ddpm:ch=32", "--set", "eval.samples=500", "--experiment-name", "c1",
                                     "--print-commands", capsys=capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[-1] == "# then, with the same MLflow store: bench report --experiment c1"
    runs = [shlex.split(line) for line in lines[:-1]]
    assert len(runs) == 4 and all(r[:2] == ["bench", "run"] for r in runs)
    assert [(r[r.index("--model") + 1], r[r.index("--seed") + 1]) for r in runs] == [
        ("dcgan", "0"), ("dcgan", "1"), ("ddpm", "0"), ("ddpm", "1")]
    for r in runs:
        assert r[r.index("--budget") + 1] == "1h|2ep" and r[r.index("--experiment-name") + 1] == "c1"
        assert "eval.samples=500" in r and ("ch=32" in r) == (r[r.index("--model") + 1] == "ddpm")
        assert "compare=c1" in r
    assert not MlflowClient().search_experiments(filter_string="name = 'c1'")  # nothing ran


def test_print_commands_runs_spec_files_and_seeds_per_model(capsys):
    seed_dcgan = str(ROOT / "experiments" / "seed-dcgan.toml")
    code, out, err = bench_inprocess("compare", "--models", f"{seed_dcgan},ddpm", "--budget", "5m",
                                     "--seeds", "1,seed-dcgan=2", "--experiment-name", "c2", "--print-commands",
                                     capsys=capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    # eval.samples = auto: each cluster job would pick its own N on its own device, which the plan says
    assert lines[0].startswith("# eval.samples = auto: each job picks its N on its own device")
    runs = [shlex.split(line) for line in lines if line.startswith("bench run ")]
    assert [(r[r.index("--seed") + 1], "--spec" in r) for r in runs] == [("0", True), ("1", True), ("0", False)]
    assert runs[0][runs[0].index("--spec") + 1] == seed_dcgan and "model_alias=seed-dcgan" in runs[0]
    code, out, err = bench_inprocess("compare", "--models", "dcgan", "--budget", "5m", "--seeds", "1,ddpm=2",
                                     "--print-commands", capsys=capsys)
    assert code != 0 and "'ddpm' is not in --models" in err


def test_bench_ui_on_every_interface_warns_and_tells_a_reachable_address():
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "ui", "--host", "0.0.0.0", "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = ui.stdout.readline()
    finally:
        os.killpg(ui.pid, 15)
        _, err = ui.communicate(timeout=30)
    assert line.startswith(f"open http://{socket.getfqdn()}:{port}/"), (line, err[-2000:])
    assert "warning: serving on 0.0.0.0" in err
