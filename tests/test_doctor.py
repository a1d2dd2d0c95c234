"""`bench doctor` on a CPU: the same checks a GPU machine gets, on tiny models and two gloo ranks. Its sharded
evaluation check is the test that a 2-rank run's FID and KID equal `bench eval` of the same checkpoint in one
process (within 1e-4 relative), with both ranks sampling (tag eval_ranks = 2)."""

from conftest import bench


def test_doctor_passes_every_check_on_two_cpu_ranks(tmp_path):
    out = tmp_path / "doctor.md"
    proc = bench("doctor", "--out", str(out), timeout=900)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("cpu:") and "jobs on 2 ranks" in lines[0]
    checks = lines[1:-1]
    assert [line.split(":")[0] for line in checks] == [
        "PASS  train dcgan on 2 ranks", "PASS  train wgan-gp on 2 ranks", "PASS  train ddpm on 2 ranks",
        "PASS  train ldm on 2 ranks", "PASS  sharded evaluation, N = 64 on 2 ranks vs one process",
        "PASS  killed on 2 ranks, resumed on 1"], proc.stdout
    assert all("img/s" in line and "matmul peak" in line for line in checks[:4])
    assert "sampled by 2 ranks" in checks[4] and "finished 640 on 1 rank" in checks[5]
    assert lines[-1].startswith("6 passed, 0 failed")
    assert out.read_text().splitlines()[4:10] == checks  # after the title, the fence and the machine line
