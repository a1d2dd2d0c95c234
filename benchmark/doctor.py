"""`bench doctor`: does this machine run facebench correctly, and how fast? Each family trains briefly on
the built-in synthetic faces on every visible device at its auto precision (K ranks, K = the GPUs; on a CPU
two gloo ranks, tiny), a sharded evaluation is checked against one process scoring the same checkpoint, and
a run killed on K ranks is resumed on another number of ranks. Every check is a real `bench run` / `bench
eval` in its own processes, against a private MLflow store; one PASS/FAIL line each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Settings that make each family small enough for a CPU (the GPU runs the families' defaults).
TINY = {
    "dcgan": ["--set", "ngf=8", "--set", "ndf=8", "--set", "batch_size=16"],
    "wgan-gp": ["--set", "ngf=8", "--set", "ndf=8", "--set", "batch_size=16", "--set", "n_critic=2"],
    "ddpm": ["--set", "ch=8", "--set", "ch_mult=[1, 2]", "--set", "num_res_blocks=1", "--set", "attn_resolutions=[]",
             "--set", "batch_size=8", "--set", "sampler_steps=2"],
    "ldm": ["--set", "ae_ch=8", "--set", "ch=8", "--set", "ch_mult=[1, 2]", "--set", "num_res_blocks=1",
            "--set", "attn_resolutions=[]", "--set", "batch_size=8", "--set", "sampler_steps=2",
            "--set", "ae_fraction=0.5"],
}
QUIET = ["--set", "eval.grid=4", "--quiet"]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


class Machine:
    """The job shape the checks use and a private store to run them in."""

    def __init__(self, folder: Path, ranks: int | None = None):
        self.gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.ranks = ranks or self.gpus or 2
        self.tiny = self.gpus == 0
        self.folder = folder
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
        self.env.pop("BENCH_DATA", None)

    def bench(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=self.folder, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "benchmark.cli", *args], cwd=self.folder, env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def family(self, name: str) -> list[str]:
        return TINY[name] if self.tiny else []

    def nproc(self, ranks: int | None = None) -> list[str]:
        ranks = self.ranks if ranks is None else ranks
        return ["--nproc", str(ranks)] if ranks > 1 else []

    def run(self, experiment: str):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.env["MLFLOW_TRACKING_URI"])
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        return runs[0] if runs else None


def _ranks(k: int | str) -> str:
    return f"{k} rank{'' if int(k) == 1 else 's'}"


def _failed(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit code {proc.returncode}")[:300]


def peak_flops(precision: str) -> float:
    """The matmul peak of one device in this precision (large enough a matmul to fill a GPU)."""
    from benchmark.calibrate import DTYPES, matmul_peak

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return matmul_peak(device, DTYPES[precision], n=8192 if device.type == "cuda" else 2048)


def train_family(m: Machine, name: str) -> Check:
    budget = "64img" if m.tiny else f"{20 * m.ranks}s"  # ~20 s of wall time on K GPUs
    proc = m.bench("run", "--model", name, *m.family(name), "--budget", budget, "--set", "eval.samples=0",
                   "--set", "eval.points=1", *QUIET, *m.nproc(), "--experiment-name", f"train-{name}")
    title = f"train {name} on {_ranks(m.ranks)}"
    run = m.run(f"train-{name}")
    if proc.returncode != 0 or run is None or run.info.status != "FINISHED":
        return Check(title, False, _failed(proc))
    metrics, tags = run.data.metrics, run.data.tags
    seconds = metrics["device_hours"] * 3600
    per_device = metrics["images_seen"] / seconds
    fraction = metrics["pflops"] * 1e15 / seconds / peak_flops(tags["precision"])
    return Check(title, True, f"{per_device * m.ranks:,.0f} img/s ({per_device:,.0f} per device), "
                 f"{fraction:.1%} of one device's {tags['precision']} matmul peak, {tags['precision']} on "
                 f"{tags['device']}")


def sharded_evaluation(m: Machine) -> Check:
    n = 64 if m.tiny else 2000
    title = f"sharded evaluation, N = {n} on {_ranks(m.ranks)} vs one process"
    proc = m.bench("run", "--model", "dcgan", *m.family("dcgan"), "--budget", "32img" if m.tiny else "256img",
                   "--set", f"eval.samples={n}", "--set", f"eval.real_samples={n}", "--set", "eval.points=1",
                   "--set", f"synthetic_images={max(256, n)}", "--set", f"eval.batch_size={16 if m.tiny else 100}",
                   *QUIET, *m.nproc(), "--experiment-name", "evaluation")
    run = m.run("evaluation")
    if proc.returncode != 0 or run is None or run.info.status != "FINISHED":
        return Check(title, False, _failed(proc))
    single = m.bench("eval", run.info.run_id, "--json", "--quiet")
    if single.returncode != 0:
        return Check(title, False, _failed(single))
    import json

    one = json.loads(single.stdout)
    gaps = {k: abs(run.data.metrics[k] - one[k]) / max(abs(one[k]), 1e-12) for k in ("fid", "kid_mean")}
    ranks = run.data.tags.get("eval_ranks")
    ok = all(g <= 1e-4 for g in gaps.values()) and ranks == str(m.ranks)
    return Check(title, ok, f"FID {run.data.metrics['fid']:.4f} vs {one['fid']:.4f}, KID x 1000 "
                 f"{1000 * run.data.metrics['kid_mean']:.4f} vs {1000 * one['kid_mean']:.4f} (relative gaps "
                 f"{gaps['fid']:.1e}, {gaps['kid_mean']:.1e}; at most 1e-4), sampled by {_ranks(ranks or 0)}")


def kill_and_resume(m: Machine) -> Check:
    images = 640 if m.tiny else 64 * 200 * m.ranks
    other = 1 if m.ranks > 1 else 2 if m.tiny else 1  # one GPU: two NCCL ranks cannot share it
    title = f"killed on {_ranks(m.ranks)}, resumed on {other}"
    job = m.start("run", "--model", "ddpm", *m.family("ddpm"), "--budget", f"{images}img", "--set",
                  "checkpoint_minutes=0", "--set", "eval.samples=0", "--set", "eval.points=1", *QUIET, *m.nproc(),
                  "--experiment-name", "resume")
    deadline, killed_at = time.time() + 300, None
    from benchmark import checkpoint

    while time.time() < deadline and killed_at is None and job.poll() is None:
        time.sleep(0.5)
        run = m.run("resume")
        if run is None:
            continue
        state = checkpoint.load_latest(Path(run.info.artifact_uri.replace("file://", "")) / checkpoint.LAST) \
            if (Path(run.info.artifact_uri.replace("file://", "")) / "checkpoints").is_dir() else None
        if state is not None and state["meter"]["images_seen"] >= images // 8:
            job.send_signal(signal.SIGTERM)  # the launcher's ranks stop at one step and checkpoint
            killed_at = state["meter"]["images_seen"]
    job.communicate(timeout=120)
    run = m.run("resume")
    if killed_at is None or run is None:
        return Check(title, False, "the run never checkpointed, or ended before it could be killed")
    proc = m.bench("run", "--resume", run.info.run_id, "--quiet", *m.nproc(other))
    run = m.run("resume")
    ok = proc.returncode == 0 and run.info.status == "FINISHED" and run.data.metrics["images_seen"] == images
    return Check(title, ok, f"stopped after ~{killed_at} of {images} images, finished "
                 f"{int(run.data.metrics.get('images_seen', 0))} on {_ranks(other)}"
                 if ok else _failed(proc))


def doctor(ranks: int | None = None, out: Path | None = None, echo=print) -> bool:
    """Run every check, printing a line per check as it ends; True if all passed. `out` gets the same lines as
    a Markdown page (for docs/results/gpu-doctor.md)."""
    from benchmark.device import pick_device
    from benchmark.tracking import environment_tags

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-doctor-") as folder:
        m = Machine(Path(folder), ranks)
        device = environment_tags(pick_device())["device"]
        head = (f"{device}; {m.gpus} GPU(s) visible; jobs on {_ranks(m.ranks)}"
                f"{' (gloo, tiny models: a check of the logic, not of speed)' if m.tiny else ''}; torch "
                f"{torch.__version__}")
        echo(head)
        checks = []
        for run in ([lambda name=name: train_family(m, name) for name in TINY]
                    + [lambda: sharded_evaluation(m), lambda: kill_and_resume(m)]):
            checks.append(run())
            echo(checks[-1].line())
    passed = sum(c.passed for c in checks)
    tail = f"{passed} passed, {len(checks) - passed} failed in {time.perf_counter() - start:.0f} s"
    echo(tail)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# bench doctor\n\n```\n" + "\n".join([head, *(c.line() for c in checks), tail]) + "\n```\n")
    return passed == len(checks)
