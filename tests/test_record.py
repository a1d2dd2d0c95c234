"""An exact record across kills and damage: nothing logged twice after a resume, a fallback checkpoint that
damage cannot reach twice, and evaluation input too small to score said in one line."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image

from benchmark import checkpoint
from conftest import TINY, bench, bench_inprocess, store_client

SLOW_DDPM = ["--model", "ddpm", "--set", "ch=8", "--set", "ch_mult=[1, 2]", "--set", "num_res_blocks=1", "--set",
             "attn_resolutions=[]", "--set", "batch_size=8", "--set", "synthetic_images=64", "--set", "eval.samples=0",
             "--set", "eval.grid=4", "--set", "eval.points=2", "--set", "sampler_steps=2", "--set", "precision=fp32",
             "--set", "log_every=1", "--set", "checkpoint_minutes=1000", "--quiet"]


def _artifacts(run) -> Path:
    return Path(run.info.artifact_uri.replace("file://", ""))


def test_a_resume_after_rows_were_flushed_past_the_checkpoint_logs_every_row_once(capsys):
    """The killed process flushed rows for steps after its last checkpoint (metrics go out every 10 s); the
    resumed one replays those steps bit-exactly and must not log them again."""
    client = store_client()
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", *SLOW_DDPM, "--budget", "960img",
                             "--experiment-name", "replayed"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, run = time.time() + 240, None
    try:
        while time.time() < deadline and run is None and proc.poll() is None:
            time.sleep(0.5)
            experiment = client.get_experiment_by_name("replayed")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and (_artifacts(runs[0]) / checkpoint.LAST).exists():
                steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
                if steps and max(steps) >= 480 + 8 * 10:  # ten steps flushed after the checkpoint at 480
                    run = runs[0]
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert run is not None, f"no rows flushed past the checkpoint in time: {err.decode()[-2000:]}"
    assert checkpoint.load_latest(_artifacts(run) / checkpoint.LAST)["meter"]["images_seen"] == 480
    code, _, err = bench_inprocess("run", "--resume", run.info.run_id, "--quiet", capsys=capsys)
    assert code == 0, err
    for key in ("loss", "images_seen", "eval_seconds"):
        steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps and max(steps.values()) == 1, (key, {s: n for s, n in steps.items() if n > 1})
    assert sorted(Counter(m.step for m in client.get_metric_history(run.info.run_id, "loss"))) == \
        list(range(8, 968, 8))


def test_a_damaged_checkpoint_is_set_aside_so_a_second_damage_still_resumes(capsys, caplog):
    """Round 1: last.pt damaged, the resume falls back to last.prev.pt, and its next save must not rotate the
    damaged file into the fallback. Round 2: last.pt damaged again: the fallback still resumes."""
    args = [*SLOW_DDPM, "--set", "checkpoint_minutes=0", "--set", "eval.points=1", "--experiment-name", "damaged"]
    client = store_client()
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", *args, "--budget", "4000img"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, run = time.time() + 240, None
    try:
        while time.time() < deadline and run is None and proc.poll() is None:
            time.sleep(0.5)
            experiment = client.get_experiment_by_name("damaged")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and checkpoint.previous(_artifacts(runs[0]) / checkpoint.LAST).exists():
                run = runs[0]
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert run is not None, err.decode()[-2000:]
    last = _artifacts(run) / checkpoint.LAST
    for round_ in (1, 2):
        last.write_bytes(last.read_bytes()[:1000])  # a partial copy, a disk fault
        resumed = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", "--resume", run.info.run_id,
                                    "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        deadline = time.time() + 120
        while time.time() < deadline and not (last.exists() and last.stat().st_size > 1000):
            time.sleep(0.2)  # it resumed from the fallback and saved again after a step
        time.sleep(2)
        resumed.send_signal(signal.SIGKILL)
        _, err = resumed.communicate()
        assert "falling back to the checkpoint before it" in err, (round_, err[-2000:])
        assert list(last.parent.glob("last.pt.corrupt*")), round_  # set aside, with its name, not rotated
        checkpoint.load(checkpoint.previous(last))  # the fallback is a whole checkpoint


def _pngs(folder: Path, count: int, side: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_too_few_images_to_score_is_one_line_naming_the_minimum(celeba, tmp_path):
    fake = _pngs(tmp_path / "three", 3, 64)
    proc = bench("eval", "--real", str(celeba), "--fake", str(fake), "--quiet", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and "at least 4 images a side" in lines[0] and "gives 3" in lines[0], lines


def test_images_smaller_than_the_metric_input_are_scored_with_a_warning(celeba, tmp_path):
    fake = _pngs(tmp_path / "tiny", 10, 1)
    proc = bench("eval", "--real", str(celeba), "--fake", str(fake), "--samples", "10", "--json", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "10 of the images in" in proc.stderr and "(the smallest 1x1): upscaled to 64x64" in proc.stderr, \
        proc.stderr[-2000:]


def test_a_file_size_limit_ends_the_run_failed_in_one_line_with_path_and_errno(tmp_path):
    """ulimit -f below the size of a checkpoint (the store and the data stay below it): the write is refused
    with EFBIG. One line naming the file and the errno, the run FAILED with that reason, no .partial left."""
    import resource

    limit = 16 * 2**20  # a default dcgan checkpoint is ~76 MB; the SQLite store ~1 MB

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--model", "dcgan", "--set", "batch_size=16",
                           "--set", "synthetic_images=64", "--set", "eval.samples=0", "--set", "eval.grid=4", "--set",
                           "eval.points=1", "--budget", "32img", "--experiment-name", "limited", "--quiet"],
                          capture_output=True, text=True, timeout=300, preexec_fn=limited)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: cannot write ") and "last.pt" in lines[0] and "(EFBIG)" in lines[0], lines
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("limited").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == lines[0].removeprefix("error: ")
    assert not list(tmp_path.rglob("*.partial"))


def test_runs_started_at_once_on_a_new_store_all_finish(tmp_path):
    """Each process opening a new SQLite store runs MLflow's schema migrations; two at once and one died with
    "table ... already exists" (a CI failure: a test's polling client created the store under a starting run)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'new.db'}"}
    procs = [subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", "--model", "dcgan", *TINY, "--budget",
                               "32img", "--experiment-name", "at-once"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-1500:] for err in errors]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("at-once").experiment_id])
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * 3
