"""Shared fixtures: the real CelebA sample (skipped with a reason where absent), an isolated cache and
MLflow store per test session, and a helper that runs the real `bench` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CELEBA = Path(os.environ.get("BENCH_TEST_CELEBA", ROOT.parent / "shared" / "data" / "celeba-sample"))


@pytest.fixture(scope="session")
def celeba() -> Path:
    if not (CELEBA / "img_align_celeba" / "img_align_celeba").is_dir():
        if os.environ.get("CI"):  # CI has it beside the repo: a missing sample is a broken setup, not a skip
            pytest.fail(f"CelebA sample missing in CI at {CELEBA}: shared/data/celeba-sample must be beside the repo")
        pytest.skip(f"CelebA sample not found at {CELEBA} (set BENCH_TEST_CELEBA); CI has it beside the repo")
    return CELEBA


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
