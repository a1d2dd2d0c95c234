"""Faults a user or a broken environment can cause, each ending in one line and a non-zero exit with
nothing lost: planted pickles, resumes that cannot or must not go ahead, damaged data, unusable stores."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from benchmark import checkpoint
from conftest import bench, bench_inprocess, celeba_jpegs, serve_mlflow


class _Planted:
    """Unpickling this runs a shell command: what a planted weights file could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line_failure(proc: subprocess.CompletedProcess) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines and lines[-1].startswith("error: "), proc.stderr[-2000:]


def test_a_weights_file_planted_in_the_cache_is_refused_not_run(celeba, tmp_path):
    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    planted = cache / "inception" / "weights-inception-2015-12-05-from-fid-helper.pth"
    planted.parent.mkdir(parents=True)
    torch.save({"fc.weight": _Planted(marker)}, planted)
    planted.with_suffix(".json").write_text(json.dumps({"sha256": "0123456789ab", "has_logits": False}))
    fake = celeba / "img_align_celeba" / "img_align_celeba"
    env = {"BENCH_CACHE": str(cache)}
    proc = bench("eval", "--real", str(celeba), "--fake", str(fake), "--samples", "4", "--json", check=False, env=env)
    _one_line_failure(proc)
    assert "refused" in proc.stderr and not marker.exists()
    proc = bench("eval", "--real", str(celeba), "--fake", str(fake), "--samples", "4", check=False,
                 env={**env, "BENCH_INCEPTION_WEIGHTS": str(planted)})
    _one_line_failure(proc)
    assert "refused" in proc.stderr and not marker.exists()


# ---------------------------------------------------------------- runs and resume

TINY_RUN = ["run", "--model", "dcgan", "--data", "synthetic", "--set", "ngf=8", "--set", "ndf=8", "--set",
            "batch_size=16", "--set", "synthetic_images=256", "--set", "eval.samples=0", "--set", "eval.grid=4",
            "--set", "eval.points=1", "--set", "checkpoint_minutes=0"]


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmark.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def _new_run(old=()):
    """The one run not in `old`, or None while it does not exist yet."""
    client = MlflowClient()
    runs = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
            if r.info.run_id not in old]
    return runs[0] if len(runs) == 1 else None


def _checkpoint_dir(run) -> Path:
    return Path(run.info.artifact_uri.replace("file://", "")) / "checkpoints"


def _killed_run(budget: str = "4000img", images: int = 64) -> str:
    """A run SIGKILLed once its checkpoint holds `images` (and the one before it exists): left RUNNING."""
    client = MlflowClient()
    old = {r.info.run_id for r in client.search_runs([e.experiment_id for e in client.search_experiments()])}
    proc = _popen(*TINY_RUN, "--budget", budget, "--quiet")
    deadline = time.time() + 120
    while time.time() < deadline:
        run = _new_run(old)
        if run is not None and (_checkpoint_dir(run) / "last.prev.pt").is_file():
            try:
                if checkpoint.load(_checkpoint_dir(run) / "last.pt")["meter"]["images_seen"] >= images:
                    break
            except Exception:  # noqa: BLE001 - caught mid-rename; look again
                pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    return run.info.run_id


def test_two_resumes_of_one_run_train_it_once(capsys):
    run_id = _killed_run()
    first, second = _popen("run", "--resume", run_id, "--quiet"), _popen("run", "--resume", run_id, "--quiet")
    outcomes = sorted((proc.wait(timeout=300), proc.stderr.read()) for proc in (first, second))
    (ok, _), (refused, message) = outcomes
    assert ok == 0 and refused == 2, outcomes
    assert message.count("\n") == 1 and ("being trained by another process" in message
                                         or "already finished" in message), message
    client = MlflowClient()
    steps = [m.step for m in client.get_metric_history(run_id, "loss_d")]
    assert len(steps) == len(set(steps)) and steps[-1] == 4000  # every step logged once
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "1"


def test_missing_and_damaged_checkpoints(capsys, caplog):
    run_id = _killed_run()
    folder = _checkpoint_dir(MlflowClient().get_run(run_id))
    # a truncated last checkpoint: the one before it takes over, with a warning
    (folder / "last.pt").write_bytes((folder / "last.pt").read_bytes()[:1000])
    code, _, err = bench_inprocess("run", "--resume", run_id, "--quiet", capsys=capsys)
    assert code == 0 and "falling back to the checkpoint before it" in caplog.text, err
    # the run finished: resuming it again is one line; a damaged checkpoint with nothing before it too
    code, _, err = bench_inprocess("run", "--resume", run_id, "--quiet", capsys=capsys)
    assert code == 2 and "already finished" in err and err.count("\n") == 1
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags

    run_id = _killed_run()  # no checkpoint at all: refused (offering --restart), the run left as it was
    folder = _checkpoint_dir(MlflowClient().get_run(run_id))
    (folder / "last.prev.pt").unlink()
    (folder / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    code, _, err = bench_inprocess("run", "--resume", run_id, "--quiet", capsys=capsys)
    assert code == 2 and "last.pt cannot be read" in err and err.count("\n") == 1, err
    run = MlflowClient().get_run(run_id)  # no longer a RUNNING run that nothing trains: FAILED, saying why
    assert run.info.status == "FAILED" and "cannot be read" in run.data.tags["failure_reason"]
    status = run.info.status
    (folder / "last.pt").unlink()
    code, _, err = bench_inprocess("run", "--resume", run_id, "--quiet", capsys=capsys)
    assert code == 2 and "no checkpoint" in err and "--restart" in err and err.count("\n") == 1, err
    assert MlflowClient().get_run(run_id).info.status == status
    spent = MlflowClient().get_run(run_id).data.metrics.get("device_hours", 0.0)
    code, _, err = bench_inprocess("run", "--resume", run_id, "--restart", "--quiet", capsys=capsys)
    assert code == 0, err
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["restarted"] == "true"
    assert run.data.metrics["device_hours"] >= spent and run.data.metrics["images_seen"] == 4000


_SAVE_KILLED_AT_STEP = """
import os, signal, sys
from pathlib import Path
import torch
from benchmark import checkpoint
path, kill_at, calls = sys.argv[1], int(sys.argv[2]), [0]
def killing(step):
    def at(*args):
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return step(*args)
    return at
os.replace, os.link = killing(os.replace), killing(os.link)
checkpoint.save(Path(path), {"n": torch.tensor(3)})
"""


def test_a_kill_at_any_step_of_a_save_leaves_a_fallback_that_damage_to_last_pt_cannot_reach(tmp_path):
    # CI once killed a run between two renames of save(): last.pt and last.prev.pt were one file, and
    # damaging last.pt lost both. Kill a real process at each file-system step of a third save in turn.
    for kill_at in range(4):
        last = tmp_path / str(kill_at) / "last.pt"
        checkpoint.save(last, {"n": torch.tensor(1)})
        checkpoint.save(last, {"n": torch.tensor(2)})
        proc = subprocess.run([sys.executable, "-c", _SAVE_KILLED_AT_STEP, str(last), str(kill_at)],
                              capture_output=True, text=True)
        prev = checkpoint.previous(last)
        assert not os.path.samefile(last, prev), (kill_at, proc.returncode)
        last.write_bytes(last.read_bytes()[:1000])  # damaged in place
        if proc.returncode == 0:  # every step done: the save completed, its previous holds the second
            assert int(checkpoint.load_latest(last)["n"]) == 2
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert int(checkpoint.load_latest(last)["n"]) in (1, 2), kill_at
    else:
        pytest.fail("save() took more than four file-system steps: extend the test")


@pytest.mark.parametrize("when", ["before the loop", "in the loop"])
def test_sigterm_ends_the_run_killed_with_its_reason_and_resume_line(when):
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *TINY_RUN, "--budget", "4000img"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    lines = []
    for line in proc.stderr:  # "MLflow run <id>" is logged as soon as the run exists, before the model is built
        lines.append(line)
        if "MLflow run" in line:
            break
    if when == "in the loop":
        time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(lines) + rest
    run = _new_run()
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["failure_reason"]
    assert f"bench run --resume {run.info.run_id}" in rest and "RUN_ID" not in rest and "Traceback" not in rest


# ---------------------------------------------------------------- data


def test_a_damaged_zip_member_is_skipped_counted_and_named(celeba, tmp_path):
    import zipfile

    from benchmark.data import prepare

    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in celeba_jpegs(celeba, 6):
            z.write(path, f"faces/{path.name}")
    victim = celeba_jpegs(celeba, 6)[2].name
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(f"faces/{victim}")
    raw = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    raw[start : start + 50] = bytes(b ^ 0xFF for b in raw[start : start + 50])  # 50 flipped bytes inside it
    archive.write_bytes(bytes(raw))
    prepared = prepare(str(archive), progress=False)
    assert len(prepared) == 5 and prepared.skipped == 1
    meta = json.loads(_meta(prepared).read_text())
    assert victim in meta["skipped_examples"][0]


def _meta(prepared):
    from benchmark.data import cache_root

    return next(p for p in (cache_root() / "data").glob("*/meta.json") if prepared.fingerprint in p.read_text())


def test_sixteen_bit_png_keeps_its_tones(tmp_path):
    import numpy as np
    from PIL import Image

    from benchmark.data import preprocess

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)  # mode I;16
    assert Image.open(path).mode in ("I;16", "I")
    out = preprocess(path.read_bytes(), 64)
    assert out.shape == (3, 64, 64) and abs(int(out[0, 0, 0]) - 0) <= 2 and abs(int(out[0, 0, -1]) - 255) <= 2
    assert abs(float(out.mean()) - 127.5) < 3  # a ramp from black to white, not near-white everywhere


def test_symlink_loops_broken_links_and_undecodable_names_are_skipped_counted_named(celeba, tmp_path):
    from benchmark.data import prepare

    folder = tmp_path / "odd"
    folder.mkdir()
    for path in celeba_jpegs(celeba, 4):
        (folder / path.name).write_bytes(path.read_bytes())
    os.symlink("loop.jpg", folder / "loop.jpg")  # a link to itself: ELOOP
    os.symlink("missing.jpg", folder / "broken.jpg")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "up")  # a link to a folder above: not followed, no cycle
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), "wb") as f:  # Latin-1 bytes: not UTF-8
        f.write(celeba_jpegs(celeba, 5)[4].read_bytes())
    prepared = prepare(str(folder), progress=False)
    assert len(prepared) == 5 and prepared.skipped == 2
    text = _meta(prepared).read_text()
    assert "loop.jpg" in text and "broken.jpg" in text


def _as_nobody(*args, env=None):
    """A command as an unprivileged user (root reads everything): runuser/setpriv, or skip."""
    import shutil

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as an unprivileged user")
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_unreadable_files_and_folders_as_a_user(celeba):
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="facebench-perm-"))
    try:
        base.chmod(0o777)
        folder, cache = base / "faces", base / "cache"
        folder.mkdir()
        for path in celeba_jpegs(celeba, 4):
            (folder / path.name).write_bytes(path.read_bytes())
        (folder / "secret.jpg").write_bytes(celeba_jpegs(celeba, 5)[4].read_bytes())
        (folder / "secret.jpg").chmod(0o000)
        (folder / "locked").mkdir()
        (folder / "locked" / "inside.jpg").write_bytes(celeba_jpegs(celeba, 6)[5].read_bytes())
        (folder / "locked").chmod(0o000)
        for p in (folder, *folder.glob("*.jpg")):
            if p.name != "secret.jpg":
                p.chmod(0o755 if p.is_dir() else 0o644)
        proc = _as_nobody(sys.executable, "-m", "benchmark.cli", "data", "prepare", str(folder),
                          env={"BENCH_CACHE": str(cache), "HOME": str(base)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        info = json.loads(proc.stdout)
        assert info["images"] == 4 and info["skipped"] == 2, info
        assert "secret.jpg" in proc.stderr and "locked" in proc.stderr and "Traceback" not in proc.stderr
        (base / "ro").mkdir(mode=0o555)  # a read-only cache: one line
        proc = _as_nobody(sys.executable, "-m", "benchmark.cli", "data", "prepare", str(folder),
                          env={"BENCH_CACHE": str(base / "ro"), "HOME": str(base)})
        _one_line_failure(proc)
        assert "cannot be written" in proc.stderr
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_a_crashed_preparation_leaves_no_partial_array(tmp_path):
    """Ctrl-C (or a full disk) half-way through writing the prepared array: nothing half-written is left."""
    import numpy as np

    from benchmark import data as data_mod

    def chunks():
        yield np.zeros((4, 3, 64, 64), np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        data_mod._write(tmp_path / "set", chunks(), 8, 64, {})
    assert not list((tmp_path / "set").iterdir())


# ---------------------------------------------------------------- stores and metrics


def test_unusable_stores_are_one_line_before_anything_is_prepared(tmp_path):
    start = time.time()
    proc = bench(*TINY_RUN, "--budget", "16img", "--tracking-uri", "http://127.0.0.1:9", check=False)
    _one_line_failure(proc)
    assert "does not answer" in proc.stderr and time.time() - start < 60
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    proc = bench(*TINY_RUN, "--budget", "16img", "--tracking-uri", f"sqlite:///{corrupt}", check=False)
    _one_line_failure(proc)
    assert "not a usable SQLite database" in proc.stderr


def test_a_read_only_store_as_a_user(tmp_path):
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="facebench-ro-"))
    try:
        base.chmod(0o755)
        import sqlite3

        sqlite3.connect(base / "mlflow.db").execute("create table t (x)").connection.commit()
        (base / "mlflow.db").chmod(0o444)
        cache = base / "cache"
        cache.mkdir(mode=0o777)
        proc = _as_nobody(sys.executable, "-m", "benchmark.cli", *TINY_RUN, "--budget", "16img", "--tracking-uri",
                          f"sqlite:///{base / 'mlflow.db'}", env={"BENCH_CACHE": str(cache), "HOME": str(cache)})
        _one_line_failure(proc)
        assert "read-only" in proc.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_fid_of_a_set_with_itself_is_zero_not_round_off(celeba):
    import numpy as np

    from benchmark.data import prepare
    from benchmark.metrics import Evaluator, score

    evaluator = Evaluator(progress=False)
    feats = evaluator.features(np.asarray(prepare(str(celeba), "test", progress=False).images[:40]))
    values = score(feats, feats, evaluator.weights)
    assert values["fid"] == 0.0 or 0.0 < values["fid"] < 1e-6, values["fid"]
    # KID keeps its sign: an unbiased estimate, below 0 here (a set is no independent sample of itself)
    assert values["kid_mean"] < 0


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts."""
    from conftest import free_port

    port = free_port()
    server = serve_mlflow(port, tmp_path)
    yield f"http://127.0.0.1:{port}"
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_a_remote_run_holds_its_checkpoint_and_resumes_on_another_machine(mlflow_server, tmp_path):
    """The killed run's checkpoint is on the server; a resume with an empty cache (another machine) fetches it
    and finishes the run, in the same MLflow run."""
    import mlflow

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "BENCH_CACHE": str(tmp_path / "machine-a")}
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *TINY_RUN, "--budget", "6000img", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    client = MlflowClient(tracking_uri=mlflow_server)
    deadline, run_id = time.time() + 180, None
    while time.time() < deadline and run_id is None:
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id]):
                paths = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints/remote")}
                if "checkpoints/remote/latest.json" in paths:
                    run_id = run.info.run_id
        time.sleep(0.5)
    env["BENCH_CACHE"] = str(tmp_path / "machine-b")  # nothing of machine A's local files, nor its file lock
    # while machine A trains it, its holder tag and heartbeat refuse machine B
    second = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--resume", run_id, "--quiet"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert proc.poll() is None, "machine A finished before machine B asked"
    assert second.returncode == 2 and "being trained by" in second.stderr, second.stderr[-2000:]
    proc.kill()
    proc.wait()
    assert run_id, proc.stderr.read()[-2000:]
    resumed = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--resume", run_id, "--quiet"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["images_seen"] == 6000
    mlflow.set_tracking_uri(mlflow_server)
    steps = [m.step for m in client.get_metric_history(run_id, "loss_d")]
    assert steps[-1] == 6000 and steps[0] < 3000  # one curve, from the first step of machine A to the end on B
    assert (tmp_path / "machine-b" / "runs" / run_id / "checkpoints" / "last.pt").is_file()
    # a third machine, with nothing but the server: it draws from the run and scores it into the run
    env["BENCH_CACHE"] = str(tmp_path / "machine-c")
    drawn = subprocess.run([sys.executable, "-m", "benchmark.cli", "sample", run_id, "--n", "4", "--out",
                            str(tmp_path / "drawn")], capture_output=True, text=True, env=env, timeout=300)
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 4
    scored = subprocess.run([sys.executable, "-m", "benchmark.cli", "eval", run_id, "--samples", "8", "--quiet"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert [m.step for m in client.get_metric_history(run_id, "kid_mean")] == [6000]


def test_a_tracking_outage_costs_no_training_and_loses_nothing(tmp_path):
    """The server goes away mid-run for longer than the client retries, then comes back: the run trains on,
    keeps what it logs on disk, delivers it when the server answers, and the server ends with every loss step
    exactly once, the final checkpoint and a FINISHED run."""
    from conftest import free_port

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = serve_mlflow(port, tmp_path)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "BENCH_CACHE": str(tmp_path / "cache")}
    run = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", "--model", "dcgan", "--budget", "25s",
                            "--set", "ngf=8", "--set", "ndf=8", "--set", "batch_size=16", "--set",
                            "synthetic_images=256", "--set", "eval.samples=0", "--set", "eval.grid=4", "--set",
                            "eval.points=3", "--set", "log_every=1", "--quiet"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    client = MlflowClient(uri)
    try:
        deadline = time.time() + 120
        run_id = None
        while time.time() < deadline and not run_id:
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            if runs and len(client.get_metric_history(runs[0].info.run_id, "loss_d")) > 20:
                run_id = runs[0].info.run_id
            time.sleep(0.5)
        assert run_id, run.stderr.read()[-3000:] if run.poll() is not None else "no metrics"
        os.killpg(server.pid, signal.SIGTERM)  # the server goes away ...
        server.wait(timeout=30)
        time.sleep(8)  # ... for longer than the client's retries (~3 s a call)
        server = serve_mlflow(port, tmp_path)  # and comes back, same store
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        assert "tracking server unreachable" in err and "Traceback" not in err
        # what the run could not deliver before it ended (a slow restart) goes now; usually nothing waits
        synced = bench("sync", run_id, env={"MLFLOW_TRACKING_URI": uri, "BENCH_CACHE": str(tmp_path / "cache")})
        assert synced.stdout.startswith(f"run {run_id}: ")
        final = client.get_run(run_id)
        assert final.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run_id, "loss_d")]
        images = int(final.data.metrics["images_seen"])
        assert steps == list(range(16, images + 1, 16))  # every step, once: nothing lost, nothing twice
        pointer = json.loads(Path(client.download_artifacts(run_id, "checkpoints/remote/latest.json",
                                                            str(tmp_path / "got"))).read_text())
        slot = client.download_artifacts(run_id, f"checkpoints/remote/{pointer['latest']}", str(tmp_path / "got"))
        assert checkpoint.load(slot)["meter"]["images_seen"] == images  # the final checkpoint reached it
        assert len([a for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]) == 3
        assert not list((tmp_path / "cache").rglob("outbox.jsonl"))  # nothing left waiting
    finally:
        if run.poll() is None:
            run.kill()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
