"""Data-parallel training with real torch.distributed processes (gloo on CPU, launched by torch's elastic
agent): K ranks train exactly what one process trains on the same global batch, charge K devices, resume
with any K, and a rank killed mid-run leaves the last checkpoint whole."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from benchmark import checkpoint
from conftest import bench, bench_inprocess, store_client

DDPM = ["--model", "ddpm", "--set", "ch=8", "--set", "ch_mult=[1, 2]", "--set", "num_res_blocks=1", "--set",
        "attn_resolutions=[]", "--set", "dropout=0.1", "--set", "batch_size=8", "--set", "synthetic_images=64",
        "--set", "eval.samples=0", "--set", "eval.grid=4", "--set", "eval.points=1", "--set", "sampler_steps=2",
        "--set", "precision=fp32", "--seed", "3", "--quiet"]


def _state(experiment: str) -> tuple:
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    path = run.info.artifact_uri.replace("file://", "") + "/" + checkpoint.LAST
    return run, checkpoint.load(path)


def _relative_difference(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over every float tensor of two state dicts."""
    floats = [k for k in a if a[k].is_floating_point()]
    return (sum(((a[k] - b[k]) ** 2).sum() for k in floats).sqrt()
            / sum((a[k] ** 2).sum() for k in floats).sqrt()).item()


def test_two_ranks_train_what_one_process_trains_and_charge_two_devices():
    """With dropout on (0.1, DDPM's default): each rank's masks are its slice of the global batch's."""
    bench("run", *DDPM, "--budget", "48img", "--experiment-name", "one")
    bench("run", *DDPM, "--budget", "48img", "--experiment-name", "two", "--nproc", "2")
    one_run, one = _state("one")
    two_run, two = _state("two")
    assert two_run.info.status == "FINISHED" and two_run.data.tags["world_size"] == "2"
    assert one["meter"]["images_seen"] == two["meter"]["images_seen"] == 48
    # The same weights up to float round-off: the gradient sums run in another order, which Adam amplifies
    # only where a gradient is ~0 (it divides by sqrt(v)); the weights as a whole agree to ~1e-6 relative.
    a, b = one["model"]["net"], two["model"]["net"]
    diff = _relative_difference(a, b)
    assert diff < 1e-5, diff
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a if a[k].is_floating_point())  # one Adam step
    assert one_run.data.metrics["loss"] == pytest.approx(two_run.data.metrics["loss"], rel=1e-6)
    m = two_run.data.metrics  # device-hours charge both ranks' wall time; FLOPs count the global batch
    assert m["device_hours"] == pytest.approx(2 * m["wall_hours"], rel=1e-6)
    assert m["pflops"] == pytest.approx(one_run.data.metrics["pflops"], rel=1e-9)


def test_dcgan_on_two_ranks_normalises_over_the_global_batch():
    """BatchNorm over the global batch: two ranks train the GAN one process trains (G and D both have it)."""
    gan = ["run", "--model", "dcgan", "--set", "ngf=8", "--set", "ndf=8", "--set", "batch_size=16", "--set",
           "synthetic_images=64", "--set", "eval.samples=0", "--set", "eval.grid=4", "--set", "eval.points=1",
           "--set", "precision=fp32", "--budget", "32img", "--quiet"]
    bench(*gan, "--experiment-name", "gan-one")
    bench(*gan, "--nproc", "2", "--experiment-name", "gan")
    run, state = _state("gan")
    _, one = _state("gan-one")
    assert run.info.status == "FINISHED" and run.data.tags["batchnorm_sync"] == "global batch over 2 ranks"
    assert state["meter"]["images_seen"] == 32
    for net in ("G", "D"):
        assert _relative_difference(one["model"][net], state["model"][net]) < 1e-5, net


@pytest.mark.parametrize("victim", [1, 0])  # rank 0 ends the run itself; killed, the launcher ends it
def test_a_rank_killed_mid_run_stops_the_job_and_resumes_on_one_process(capsys, victim):
    client = store_client()
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", *DDPM, "--budget", "640img",
                             "--set", "checkpoint_minutes=0", "--experiment-name", "killed", "--nproc", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline, state = time.time() + 180, None
    while time.time() < deadline and state is None:
        time.sleep(0.5)
        experiment = client.get_experiment_by_name("killed")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        path = runs[0].info.artifact_uri.replace("file://", "") + "/" + checkpoint.LAST if runs else None
        if path and os.path.exists(path):
            state = checkpoint.load_latest(Path(path))
            if state["meter"]["images_seen"] < 64:
                state = None
    assert state is not None, proc.stderr.read()[-3000:]
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True)
             if p.environ().get("RANK") == str(victim)]
    assert len(ranks) == 1
    ranks[0].send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"rank {victim} first: killed by SIGKILL" in lines[0], err[-3000:]
    assert f"bench run --resume {runs[0].info.run_id}" in lines[0] and "Traceback" not in err
    (run,) = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    assert run.info.status in ("FAILED", "KILLED")
    path = Path(run.info.artifact_uri.replace("file://", "")) / checkpoint.LAST
    kept = checkpoint.load_latest(path)  # whole, loadable, mid-run
    assert 64 <= kept["meter"]["images_seen"] < 640
    code, _, err = bench_inprocess("run", "--resume", run.info.run_id, "--quiet", capsys=capsys)
    assert code == 0, err
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["images_seen"] == 640
    assert run.data.tags["world_size"] == "1" and run.data.tags["resumed"] == "1"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the same MLflow run, finished on 1 process
