"""eval.samples = auto: the largest N whose evaluations take ~10% of the budget on this device, measured on the
run's own model and Inception; a larger budget on the same device gets a larger N, and the run says which."""

import logging
from dataclasses import replace

import pytest
import torch
from mlflow.tracking import MlflowClient

from benchmark import eval_size
from benchmark.data import prepare
from benchmark.models import family
from benchmark.spec import build_spec
from conftest import bench, bench_inprocess


def test_show_spec_says_four_points_and_auto():
    out = bench("run", "--model", "dcgan", "--show-spec").stdout
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| `")}
    assert "| `4` |" in rows["`eval.points`"]
    assert '| `"auto"` | auto \\| int |' in rows["`eval.samples`"]
    assert '| `"auto"` | auto \\| int |' in rows["`eval.real_samples`"]


def test_a_larger_budget_on_the_same_device_gets_a_larger_n(celeba):
    """Measured, not assumed: the same model and device, a 2-minute budget and a 58-hour one."""
    _, defaults = family("dcgan")
    data = prepare(str(celeba), "train", 64)
    device = torch.device("cpu")
    chosen = {}
    for budget in ("2m", "58h"):
        spec = build_spec("dcgan", defaults, {"budget": budget, "data": str(celeba)})
        sized, line = eval_size.resolve(spec, device, "fp32", data)
        chosen[budget] = (sized.eval["samples"], sized.eval["real_samples"], line)
    (small, small_real, small_line), (large, large_real, large_line) = chosen["2m"], chosen["58h"]
    assert small < large and large >= 5_000, chosen
    assert small_real == max(small, 256) and large_real == min(len(data), large)  # follows N, capped by the split
    for line in (small_line, large_line):
        assert line.startswith(f"eval.samples = auto -> {small if line is small_line else large:,}: 4 eval points")
        assert "ms sampling +" in line and "Inception per image, measured here" in line
    assert "estimated" not in large_line


def test_a_budget_in_images_epochs_or_steps_is_timed_at_the_measured_speed_and_the_first_limit_wins():
    from benchmark.budget import Budget

    assert eval_size.budget_seconds(Budget.parse("2Mimg"), 1000, 64, 0.01) == pytest.approx(20_000)
    assert eval_size.budget_seconds(Budget.parse("3ep|1h"), 1000, 64, 0.5) == pytest.approx(1500)
    assert eval_size.budget_seconds(Budget.parse("10step|1h"), 1000, 64, 0.5) == pytest.approx(320)
    assert eval_size.choose(3600, 4, 0.1, 0.1, 10_000) == 500  # 4 x 500 x 0.1 + 500 x 0.1 = 250 s <= 360 s
    assert eval_size.choose(10, 4, 0.1, 0.1, 10_000) == 64  # none fits: the smallest


def test_explicit_numbers_win_and_real_follows_them():
    _, defaults = family("dcgan")
    spec = build_spec("dcgan", defaults, {}, ["eval.samples=1000"])
    data = prepare("synthetic", "train", 64, 300)
    unbuildable = replace(spec, model="no-such-family")  # measuring would build it, and fail
    sized, line = eval_size.resolve(unbuildable, torch.device("cpu"), "fp32", data)
    assert line is None and sized.eval["samples"] == 1000 and sized.eval["real_samples"] == 300


def test_the_run_says_which_n_and_why_and_logs_it_beside_an_explicit_real_n(celeba, capsys, caplog):
    caplog.set_level(logging.INFO)
    code, _, err = bench_inprocess("run", "--model", "dcgan", "--data", str(celeba), "--budget", "10s", "--set",
                                   "ngf=8", "--set", "ndf=8", "--set", "batch_size=16", "--set", "eval.points=1",
                                   "--set", "eval.grid=4", "--set", "eval.real_samples=16", "--quiet",
                                   capsys=capsys)
    assert code == 0, err
    (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval.samples = auto")]
    assert said.startswith("eval.samples = auto -> 64: 1 eval point of 64 takes")  # 10 CPU-seconds: the smallest
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("dcgan").experiment_id])
    assert run.data.params["eval.samples"] == "64" and run.data.params["eval.real_samples"] == "16"
    assert run.data.tags["eval.samples_chosen"] == said and run.data.tags["metrics.eval_samples"] == "64"


def test_a_compare_settles_one_n_and_keeps_it_when_run_again(celeba, capsys, caplog):
    """A compare's models are scored on one N, chosen once: the same command again finds its finished run's
    spec unchanged (same hash) and trains nothing, however the device measures this time."""
    caplog.set_level(logging.INFO)
    args = ["compare", "--models", "dcgan", "--budget", "32img", "--data", str(celeba), "--experiment-name", "cmp-auto",
            "--set", "ngf=8", "--set", "ndf=8", "--set", "batch_size=16", "--set", "eval.points=1", "--set",
            "eval.grid=4", "--set", "eval.real_samples=16", "--quiet"]
    code, _, err = bench_inprocess(*args, capsys=capsys)
    assert code == 0, err
    assert any(r.getMessage().startswith("dcgan: eval.samples = auto -> 64") for r in caplog.records)
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("cmp-auto").experiment_id])
    assert run.data.params["eval.samples"] == "64" and run.data.params["eval.real_samples"] == "16"
    caplog.clear()
    code, _, err = bench_inprocess(*args, capsys=capsys)
    assert code == 0, err
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("kept 1 finished run(s) of cmp-auto") for m in said), said
    assert not any("eval.samples = auto ->" in m for m in said)  # not measured again: the finished run's N
    assert len(client.search_runs([client.get_experiment_by_name("cmp-auto").experiment_id])) == 1
