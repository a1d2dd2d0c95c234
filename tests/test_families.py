"""Every family end to end on real faces through `bench run`: MLflow metrics, grids, sampling cost;
then SIGKILL mid-run and `--resume`, which must end bit-identical to the uninterrupted run of the
same seed and budget, in the same MLflow run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from benchmark import checkpoint
from conftest import ROOT, TINY, bench_inprocess

EVAL = ["--set", "eval.samples=8", "--set", "eval.real_samples=16", "--set", "eval.points=2", "--set", "eval.grid=4"]
SMALL_DIFFUSION = ["--set", "sampler_steps=4", "--set", "batch_size=16", "--set", "num_res_blocks=1",
                   "--set", "attn_resolutions=[8]"]
# family -> (arguments shrinking its smoke experiment to seconds, budget, images seen at which to kill)
FAMILIES = {
    "dcgan": ([*TINY], "320img", [128]),
    "wgan-gp": (["--spec", str(ROOT / "experiments/smoke-wgan-gp.toml"), "--set", "ngf=8", "--set", "ndf=8",
                 "--set", "batch_size=16", "--set", "n_critic=2"], "320img", [128]),
    # dropout on (the ddpm default): its masks come from the global RNG, which must resume exactly too
    "ddpm": (["--spec", str(ROOT / "experiments/smoke-ddpm.toml"), *SMALL_DIFFUSION, "--set", "ch=8",
              "--set", "ch_mult=[1, 2, 2, 2]", "--set", "dropout=0.1"], "160img", [64]),
    # killed once while training the autoencoder and once in latent diffusion (the switch is at 96 images)
    "ldm": (["--spec", str(ROOT / "experiments/smoke-ldm.toml"), *SMALL_DIFFUSION, "--set", "ae_ch=8",
             "--set", "ch=16", "--set", "ae_fraction=0.3"], "320img", [48, 160]),
}


def _checkpoint(run_id):
    path = MlflowClient().get_run(run_id).info.artifact_uri.replace("file://", "") + "/checkpoints/last.pt"
    return checkpoint.load(path) if os.path.exists(path) else None


def _run_ids(exclude=()):
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r.info.run_id for r in runs if r.info.run_id not in exclude]


def _assert_same(a, b, path="model"):
    """Nested state dicts equal to the bit: weights, EMA, optimizer moments, RNG states, counters."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def _kill_when(args, run_id, images, others):
    """Start `bench run --resume run_id` (or a new run when run_id is None), SIGKILL it once a checkpoint
    holds at least `images`; returns the run id. `others`: runs that already exist."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.time() + 300
    path = None
    while time.time() < deadline and proc.poll() is None:
        if path is None:  # MLflow is asked only while the process runs: stopped, it may hold SQLite's lock
            ids = [run_id] if run_id else _run_ids(exclude=others)
            if ids:
                run_id = ids[0]
                path = MlflowClient().get_run(run_id).info.artifact_uri.replace("file://", "") + "/" + checkpoint.LAST
            time.sleep(0.1)
            continue
        proc.send_signal(signal.SIGSTOP)  # still while we look: a tiny model steps faster than a checkpoint loads
        state = checkpoint.load(path) if os.path.exists(path) else None
        if state is not None and state["meter"]["images_seen"] >= images:
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_id, proc.stderr.read().decode()[-3000:]
    return run_id


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_runs_logs_and_resumes_bit_exactly_after_sigkill(family, celeba, capsys):
    extra, budget, kill_at = FAMILIES[family]
    args = ["run", "--model", family, "--data", str(celeba), "--budget", budget, "--seed", "3", *extra,
            "--set", "checkpoint_minutes=0", "--quiet"]
    code, _, err = bench_inprocess(*args, *EVAL, "--experiment-name", "reference", capsys=capsys)
    assert code == 0, err
    (reference_id,) = _run_ids()
    reference = _checkpoint(reference_id)
    client = MlflowClient()
    run = client.get_run(reference_id)
    assert run.info.status == "FINISHED" and run.data.params["model"] == family
    metrics = run.data.metrics
    for key in ("fid", "kid_mean", "sample_nfe", "sample_seconds_per_image", "sample_gflops_per_image",
                "device_hours", "pflops"):
        assert key in metrics, key
    assert any(k in metrics for k in ("loss", "loss_d")), sorted(metrics)
    assert len(client.get_metric_history(reference_id, "fid")) == 2  # both eval points
    grids = [a.path for a in client.list_artifacts(reference_id, "samples")]
    assert len(grids) == 2 and {a.path for a in client.list_artifacts(reference_id, "plots")} == {"plots/losses.png"}
    if family in ("ddpm", "ldm"):
        assert metrics["sample_nfe"] == 4  # one network pass per sampling step
    if family == "ldm":  # both stages charged apart, and their sum is the total
        assert metrics["autoencoder_images"] == 96 and metrics["diffusion_images"] == 224
        assert metrics["autoencoder_pflops"] + metrics["diffusion_pflops"] == pytest.approx(metrics["pflops"])
        assert "recon_fid" in metrics and "loss_ae" in metrics and "loss" in metrics

    # The interrupted run skips metrics: evaluation draws from its own generators, so training is unchanged.
    args += ["--set", "eval.samples=0", "--set", "eval.points=2", "--set", "eval.grid=4"]
    killed_id = None
    for images in kill_at:
        killed_id = _kill_when(["run", "--resume", killed_id, "--quiet"] if killed_id else [*args],
                               killed_id, images, {reference_id})
        assert _checkpoint(killed_id)["meter"]["images_seen"] < reference["meter"]["images_seen"]
    code, _, err = bench_inprocess("run", "--resume", killed_id, "--quiet", capsys=capsys)
    assert code == 0, err
    resumed = _checkpoint(killed_id)
    assert resumed["meter"]["images_seen"] == reference["meter"]["images_seen"]
    _assert_same(reference["model"], resumed["model"])
    run = client.get_run(killed_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == str(len(kill_at))
    assert len(_run_ids()) == 2  # resumed into the same MLflow run, no new one
    images = [a.path for a in client.list_artifacts(killed_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == [0, 1]  # each grid once
