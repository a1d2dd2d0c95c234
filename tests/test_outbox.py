"""A run's record across a tracking server's outages, kills and resumes, against a real `bench server`: an old
process's queue is delivered before the run is held again (never an old end into a run that trains), and an
item that can never be delivered, or a line torn by a kill, is set aside while everything else arrives."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from conftest import bench, free_port

RUN = ["run", "--model", "dcgan", "--set", "ngf=8", "--set", "ndf=8", "--set", "batch_size=16", "--set",
       "synthetic_images=256", "--set", "eval.samples=0", "--set", "eval.grid=4", "--set", "eval.points=2",
       "--set", "log_every=1", "--quiet"]


def _bench_server(port: int, folder: Path) -> subprocess.Popen:
    """`bench server` on a SQLite store in folder, once it says it answers."""
    server = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "server", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
                               str(folder / "artifacts")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, start_new_session=True)
    assert server.stdout.readline().startswith("tracking server at "), "bench server did not start"
    return server


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)


def _start(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmark.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def _training_run(client: MlflowClient, proc: subprocess.Popen, rows: int) -> str:
    """The run proc trains, once the server holds its checkpoint and `rows` loss rows."""
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
            run_id = run.info.run_id
            if (len(client.get_metric_history(run_id, "loss_d")) >= rows and "checkpoints/remote/latest.json" in
                    {a.path for a in client.list_artifacts(run_id, "checkpoints/remote")}):
                return run_id
        time.sleep(0.5)
    raise AssertionError(f"no run with a checkpoint on the server: {proc.stderr.read()[-3000:]}")


def test_an_end_queued_in_an_outage_is_delivered_before_the_resume_never_after(tmp_path):
    """Server stopped mid-run, the run SIGTERMed during the outage (its KILLED end waits on disk), server back,
    --resume: from the moment the run is marked resumed it reads RUNNING until it FINISHES, with the old
    reason kept as previous_failure_reason; every loss row is there once."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "BENCH_CACHE": str(tmp_path / "cache")}
    server = _bench_server(port, tmp_path)
    client = MlflowClient(uri)
    proc = _start(env, *RUN, "--budget", "2400img", "--set", "checkpoint_minutes=0")
    try:
        run_id = _training_run(client, proc, 10)
        _stop(server)  # the outage: the run trains on, and what it logs waits on disk
        queues = tmp_path / "cache" / "runs" / run_id / "outbox"
        deadline = time.time() + 120
        while not list(queues.glob("*.jsonl")) and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert f"shows the run as RUNNING until bench sync {run_id}" in err, err[-3000:]
    server = _bench_server(port, tmp_path)
    try:
        assert client.get_run(run_id).info.status == "RUNNING"  # what the line said
        resume = _start(env, "run", "--resume", run_id)
        seen = []
        while resume.poll() is None:
            run = client.get_run(run_id)
            seen.append((run.data.tags.get("resumed"), run.info.status, run.data.tags.get("lock.heartbeat")))
            time.sleep(0.2)
        _, err = resume.communicate()
        assert resume.returncode == 0, err[-3000:]
        after = [(status, beat) for resumed, status, beat in seen if resumed == "1"]
        statuses = [status for status, _ in after]
        assert after and set(statuses) <= {"RUNNING", "FINISHED"}, after  # never KILLED again
        assert statuses == sorted(statuses, key=["RUNNING", "FINISHED"].index), after
        assert all(beat != "0" for status, beat in after if status == "RUNNING"), after  # nor free to claim
        final = client.get_run(run_id)
        assert final.info.status == "FINISHED" and "failure_reason" not in final.data.tags
        assert final.data.tags["previous_failure_reason"].startswith("interrupted by SIGTERM")
        steps = [m.step for m in client.get_metric_history(run_id, "loss_d")]
        assert steps == list(range(16, 2401, 16))  # every step, once
        assert not list(queues.glob("*.jsonl"))
    finally:
        _stop(server)


def test_a_poisoned_item_and_a_torn_line_are_set_aside_and_the_rest_is_delivered(tmp_path):
    """Queues an earlier process of a run left: a grid whose PNG is gone, a line torn by a kill, and good items
    around them. `bench sync` delivers the good ones and says what it set aside; a resume meeting the same
    trains on to FINISHED."""
    from benchmark.outbox import DEAD_LETTER, Queue

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cache = tmp_path / "cache"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "BENCH_CACHE": str(cache)}
    server = _bench_server(port, tmp_path)
    client = MlflowClient(uri)
    try:
        proc = _start(env, *RUN, "--budget", "2400img", "--set", "checkpoint_minutes=0")
        try:
            run_id = _training_run(client, proc, 2)
        finally:
            proc.kill()  # no end: left RUNNING, as a crash leaves it
            proc.wait()
        queues = cache / "runs" / run_id / "outbox"
        # two machines claim the crashed run at the same moment: exactly one wins
        at = time.time() + 10
        # each holds its claim a while: one that starts late finds the winner alive, not gone
        claim = ("import sys, time; from benchmark.tracking import Tracker; t = Tracker.open(sys.argv[1]); "
                 "time.sleep(max(0, float(sys.argv[2]) - time.time())); t._claim(); time.sleep(5)")
        claims = [subprocess.Popen([sys.executable, "-c", claim, run_id, str(at)], stderr=subprocess.PIPE, text=True,
                                   env={**env, "BENCH_CACHE": str(tmp_path / f"machine-{i}")}) for i in range(2)]
        outcomes = sorted((p.wait(timeout=60), p.stderr.read()) for p in claims)
        assert [code for code, _ in outcomes] == [0, 1], outcomes
        assert "claimed by" in outcomes[1][1] or "being trained by" in outcomes[1][1], outcomes

        def left_by_a_crash(name: str, probe: str) -> None:
            queue = Queue(queues / f"{name}.jsonl")
            queue.append({"kind": "tags", "values": {probe: "delivered"}})
            queue.append({"kind": "image", "key": "grid", "path": "images/gone.png", "step": 5})
            with open(queue.path, "a") as f:
                f.write('{"kind": "metrics", "rows": [["torn", 1.0\n')
            queue.append({"kind": "metrics", "rows": [[probe, 1.0, int(time.time() * 1000), 7]]})

        left_by_a_crash("00000000000000000001-host-1", "probe_sync")
        synced = bench("sync", run_id, env=env, check=False)
        assert synced.returncode == 0 and "Traceback" not in synced.stderr, synced.stderr[-3000:]
        assert synced.stdout.splitlines() == [
            f"run {run_id}: delivered 2 waiting item(s)",
            f"run {run_id}: 1 item(s) the server refused and 1 damaged line(s) were set aside in "
            f"{queues / DEAD_LETTER}",
            f"run {run_id}: nothing left waiting on this machine"], synced.stdout
        run = client.get_run(run_id)
        assert run.data.tags["probe_sync"] == "delivered" and run.data.metrics["probe_sync"] == 1.0
        dead = [json.loads(line) for line in (queues / DEAD_LETTER).read_text().splitlines()]
        assert [d["item"]["kind"] if isinstance(d["item"], dict) else "torn" for d in dead] == ["image", "torn"]

        left_by_a_crash("00000000000000000002-host-2", "probe_resume")
        resumed = _start(env, "run", "--resume", run_id, "--quiet")
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0 and "Traceback" not in err, err[-3000:]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["probe_resume"] == "delivered"
        assert run.data.metrics["images_seen"] == 2400
        assert len((queues / DEAD_LETTER).read_text().splitlines()) == 4
        assert not list(queues.glob("0*.jsonl"))
    finally:
        _stop(server)
