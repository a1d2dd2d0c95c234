"""Shared fixtures: the real CelebA sample (skipped with a reason where absent), an isolated cache and
MLflow store per test session, and a helper that runs the real `bench` CLI in a subprocess."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

# pytest-xdist's workers (addopts: -n 2) share the cores: each gets its share of OpenMP threads, as study
# workers do, before any test imports torch; the processes a test starts inherit it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    from benchmark.cores import worker_env

    os.environ.update(worker_env(int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

ROOT = Path(__file__).resolve().parents[1]
CELEBA = Path(os.environ.get("BENCH_TEST_CELEBA", ROOT.parent / "shared" / "data" / "celeba-sample"))


@pytest.fixture(scope="session")
def celeba() -> Path:
    if not (CELEBA / "img_align_celeba" / "img_align_celeba").is_dir():
        if os.environ.get("CI"):  # CI has it beside the repo: a missing sample is a broken setup, not a skip
            pytest.fail(f"CelebA sample missing in CI at {CELEBA}: shared/data/celeba-sample must be beside the repo")
        pytest.skip(f"CelebA sample not found at {CELEBA} (set BENCH_TEST_CELEBA); CI has it beside the repo")
    return CELEBA


def celeba_jpegs(celeba: Path, n: int) -> list[Path]:
    """The first n images of the CelebA sample, in name order."""
    return sorted((celeba / "img_align_celeba" / "img_align_celeba").glob("*.jpg"))[:n]


def face_folder(celeba: Path, folder: Path, n: int) -> Path:
    """The first n CelebA images copied into a folder of their own: a data set whose every image is training."""
    folder.mkdir()
    for path in celeba_jpegs(celeba, n):
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory) -> Path:
    """One prepared-data / real-statistics / Inception cache for the whole session, as a user would have."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(autouse=True)
def isolated(bench_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(bench_cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # empty: nothing downloaded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("BENCH_DATA", raising=False)
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield


def bench(*args: str, check: bool = True, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would, in the test's working directory and environment."""
    cmd = [sys.executable, "-m", "benchmark.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"bench {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def bench_inprocess(*args: str, capsys) -> tuple[int, str, str]:
    """The CLI's main() in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from benchmark.cli import main

    old = sys.argv
    sys.argv = ["bench", *args]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def store_client():
    """A client on the test's MLflow store, the store created first (under the lock every bench process takes to
    create one): a test that polls a bench process it starts next never races it to create the store."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from benchmark.tracking import check_store

    check_store(mlflow.get_tracking_uri())
    return MlflowClient()


# Small but real DCGAN settings for fast tests: same architecture, narrower.
TINY = ["--set", "ngf=8", "--set", "ndf=8", "--set", "batch_size=16", "--set", "synthetic_images=256",
        "--set", "eval.samples=0", "--set", "eval.grid=16", "--quiet"]


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Debian's headless Chromium, as .ci/run installs it; skipped (failed in CI) where it is missing."""
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing in CI: .ci/run must install Debian's chromium")
        pytest.skip("chromium not found (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", "--hide-scrollbars"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1 and a private port, started by the suite itself; call it with a
    database name to get that database's URL."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries missing in CI: .ci/run must install Debian's postgresql")
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    bindir = os.path.dirname(bins[-1])
    # Not under pytest's tmp folder: that is private to root, and the server runs as the postgres user.
    base = tempfile.mkdtemp(prefix="facebench-pg-")
    data = Path(base) / "data"
    port = free_port()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    os.chmod(base, 0o755)
    if as_root:
        shutil.chown(base, "postgres")
    subprocess.run([*prefix, f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", str(data), "-l", str(data.parent / "log"), "-w", "-o",
                    f"-h 127.0.0.1 -p {port} -k {data.parent}", "start"], check=True, capture_output=True)

    def database(name: str) -> str:
        subprocess.run([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name],
                       check=True, capture_output=True)
        return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{name}"

    yield database
    subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def serve_mlflow(port: int, folder) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port over folder's SQLite store and artifacts, once it answers."""
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
                               str(folder / "server-artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    raise AssertionError("mlflow server did not start")
