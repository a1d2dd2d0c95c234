"""A run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run of the same seed."""

import os
import signal
import subprocess
import sys
import time

import torch
from mlflow.tracking import MlflowClient

from benchmark import checkpoint
from conftest import TINY, bench

ARGS = ["run", "--budget", "480img", "--seed", "7", *TINY, "--set", "checkpoint_minutes=0", "--set", "eval.points=2"]


def _final_g(run_id):
    run = MlflowClient().get_run(run_id)
    path = run.info.artifact_uri.replace("file://", "") + "/checkpoints/last.pt"
    return checkpoint.load(path)


def _only_run_id(exclude=()):
    runs = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
    return [r.info.run_id for r in runs if r.info.run_id not in exclude]


def test_sigkill_then_resume_is_bit_exact(tmp_path):
    bench(*ARGS, "--run-name", "uninterrupted")
    (reference_id,) = _only_run_id()
    reference = _final_g(reference_id)
    assert reference["meter"]["images_seen"] == 480

    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *ARGS, "--run-name", "killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    killed_id, deadline = None, time.time() + 300
    while time.time() < deadline:  # wait until a few steps are checkpointed, then kill without warning
        ids = _only_run_id(exclude={reference_id})
        if ids:
            killed_id = ids[0]
            ckpt = MlflowClient().get_run(killed_id).info.artifact_uri.replace("file://", "")
            ckpt += "/checkpoints/last.pt"
            if os.path.exists(ckpt) and checkpoint.load(ckpt)["meter"]["images_seen"] >= 160:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = _final_g(killed_id)
    assert 160 <= interrupted["meter"]["images_seen"] < 480, "the kill should land mid-run"

    bench("run", "--resume", killed_id, "--quiet")
    resumed = _final_g(killed_id)
    assert resumed["meter"]["images_seen"] == 480
    for name, tensor in reference["model"]["G"].items():
        assert torch.equal(tensor, resumed["model"]["G"][name]), name
    for name, tensor in reference["model"]["D"].items():
        assert torch.equal(tensor, resumed["model"]["D"][name]), name
    run = MlflowClient().get_run(killed_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "1"
    assert len(_only_run_id()) == 2  # resumed into the same MLflow run, no new one
