"""`bench calibrate --inception --families` as docs/USAGE.md gives it, small: fractions of peak against the peak
of each path's own precision, and no more DataLoader workers than the cores it may use."""

import re
import shutil
import subprocess
import sys

import pytest


def test_calibrate_on_one_core_measures_each_path_against_its_own_precisions_peak(celeba):
    taskset = shutil.which("taskset")
    if taskset is None:
        pytest.skip("taskset (util-linux) not found")
    proc = subprocess.run([taskset, "-c", "0", sys.executable, "-m", "benchmark.cli", "calibrate", "--data",
                           str(celeba), "--steps", "1", "--batch-size", "8", "--inception", "--eval-images", "16",
                           "--inception-images", "16", "--families", "--family-batch-size", "2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # one core: one worker for the tutorial (its 2 would make torch warn that it suggests at most 1), and none
    # of torch-fidelity's own 4 for the usual evaluation route
    assert "DataLoader workers: 1" in out and "worker" not in proc.stderr, proc.stderr[-2000:]
    assert "cores usable: 1, torch threads: 1" in out
    picked = re.search(r"precision picked: (fp32|bf16)", out).group(1)
    peaks = {p: float(v) for p, v in re.findall(r"(fp32|bf16) (\d+)(?=,| GFLOP/s)", out.split("peaks measured:")[1])}
    gflop, tutorial_gflop = map(float, re.search(r"\((\S+) GFLOP per training image, tutorial (\S+);", out).groups())
    ours = re.search(r"ours \(.*?(\S+) img/s\s+(\S+)% of the (\w+) peak", out)
    theirs = re.search(r"tutorial \(.*?(\S+) img/s\s+(\S+)% of the (\w+) peak", out)
    assert ours.group(3) == picked and theirs.group(3) == "fp32"
    for match, per_image in ((ours, gflop), (theirs, tutorial_gflop)):
        expected = 100 * float(match.group(1)) * per_image / peaks[match.group(3)]
        assert float(match.group(2)) == pytest.approx(expected, rel=0.05, abs=0.06), (match.group(0), peaks)
    # Inception in both precisions, side by side, with what bf16 does to the scores
    rows = re.findall(r"^  (fp32|bf16)\s+(\S+)\s+(\S+)x\s+(\S+)\s+(\S+)", out, re.M)
    assert [r[0] for r in rows] == ["fp32", "bf16"] and rows[0][2] == "1.00", out[-1500:]
    assert re.search(r"^  bf16 .*\([+-]\d+\.\d+(%| sd)\)", out, re.M), out[-1500:]
    # every family at its default width, each against its own precision's peak; the diffusion rows sample
    # with their default 50 network passes
    table = out.split("Every family at its default settings")[1]
    families = re.findall(r"^  (dcgan|wgan-gp|ddpm|ldm \(\w+(?: \w+)?\))\s+(fp32|bf16)\s+(\S+)\s+(\S+)\s+(\S+)%"
                          r"\s+(\S+)\s+(\d+)", table, re.M)
    assert [f[0] for f in families] == ["dcgan", "wgan-gp", "ddpm", "ldm (autoencoder)", "ldm (latent diffusion)"], \
        table[-1500:]
    peaks = {p: float(v) for p, v in re.findall(r"(fp32|bf16) (\d+)(?=,| GFLOP/s)", out.split("peaks measured:")[1])}
    for name, precision, ips, gflop, fraction, _, nfe in families:
        expected = 100 * float(ips) * float(gflop) / peaks[precision]
        assert float(fraction) == pytest.approx(expected, rel=0.1, abs=0.2), (name, fraction, expected, peaks)
        assert int(nfe) == (1 if name in ("dcgan", "wgan-gp") else 50), name
    assert "encoding 512 images into latents" in proc.stderr, proc.stderr[-2000:]
