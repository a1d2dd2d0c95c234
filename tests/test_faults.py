"""Faults a user or a broken environment can cause, each ending in one line and a non-zero exit with
nothing lost: planted pickles, resumes that cannot or must not go ahead, damaged data, unusable stores."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import bench


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
