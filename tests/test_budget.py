import pytest

from benchmark.budget import Budget, Meter
from benchmark.errors import UserError


@pytest.mark.parametrize(
    "text, field, value",
    [("90s", "device_seconds", 90), ("30m", "device_seconds", 1800), ("58h", "device_seconds", 58 * 3600),
     ("2d", "device_seconds", 172800), ("50ep", "epochs", 50), ("500kimg", "images", 500_000),
     ("2Mimg", "images", 2_000_000), ("10000step", "steps", 10000), ("1e18flop", "flops", 1e18),
     ("0.5h", "device_seconds", 1800)],
)
def test_parse_forms(text, field, value):
    assert getattr(Budget.parse(text), field) == pytest.approx(value)


def test_combination_stops_at_first_spent():
    budget = Budget.parse("50ep|58h")
    meter = Meter(dataset_size=100)
    assert not budget.spent(meter)
    meter.add_step(100 * 50, 10.0, 1.0)
    assert budget.spent(meter)  # epochs spent long before the hours
    meter2 = Meter(dataset_size=10**9)
    meter2.add_step(1, 58 * 3600.0, 1.0)
    assert budget.spent(meter2)


@pytest.mark.parametrize("text", ["58x", "-1h", "0ep", "", "h", "1h|", "1h|2h", "0.1img"])
def test_bad_budgets_name_accepted_forms(text):
    with pytest.raises(UserError) as err:
        Budget.parse(text)
    assert "accepted" in str(err.value) or "twice" in str(err.value) or "below" in str(err.value)


def test_meter_counts_every_axis_and_image_cap():
    meter = Meter(dataset_size=1000, devices=2)
    meter.add_step(128, 1.5, 1e9)
    assert (meter.images_seen, meter.steps) == (128, 1)
    assert meter.device_seconds == pytest.approx(3.0)  # wall time x devices
    assert meter.flops == pytest.approx(128e9)
    assert meter.epochs == pytest.approx(0.128)
    assert Budget.parse("2ep|1000img").image_cap(1000) == 1000
    assert Budget.parse("30m").image_cap(1000) is None
    restored = Meter()
    restored.load_state_dict(meter.state_dict())
    assert restored == meter


def _final(budget: str, capsys, *extra: str) -> dict:
    """A tiny real run under `budget`; the metrics of its last eval point."""
    from mlflow.tracking import MlflowClient

    from conftest import TINY, bench_inprocess

    code, _, err = bench_inprocess("run", "--model", "dcgan", "--budget", budget, *TINY, "--set", "eval.points=1",
                                   "--experiment-name", budget, *extra, capsys=capsys)
    assert code == 0, err
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(budget).experiment_id])
    return run.data.metrics


@pytest.mark.parametrize("budget, size, images", [("40img", 256, 40), ("0.1ep", 254, 25), ("0.5ep", 256, 128)])
def test_image_and_epoch_budgets_stop_at_exactly_their_images(budget, size, images, capsys):
    """The last batch is cut to fit; 0.1 epochs of 254 images is 25 (it crashed when 25.4 rounded down)."""
    final = _final(budget, capsys, "--set", f"synthetic_images={size}")
    assert final["images_seen"] == images


def test_time_and_flop_budgets_overshoot_by_less_than_one_step(capsys):
    final = _final("2s", capsys)
    step_seconds = final["device_hours"] * 3600 / final["steps"]
    assert 2 <= final["device_hours"] * 3600 < 2 + 3 * step_seconds  # the step that crossed it (mean x 3: jitter)
    flops_per_step = final["pflops"] * 1e15 / final["steps"]  # constant: full batches of one model
    budget = 10 * flops_per_step + flops_per_step / 2
    final = _final(f"{budget:.6e}flop", capsys)
    assert budget <= final["pflops"] * 1e15 < budget + flops_per_step and final["steps"] == 11


def test_training_bar_shows_training_time_against_the_budget_and_evaluation_apart():
    from benchmark.train import clock

    meter = Meter(dataset_size=1000)
    meter.add_step(128, 30.0, 1.0)
    meter.eval_seconds = 100.0  # three eval points: not the budget's time
    budget = Budget.parse("2m")
    assert clock(meter, budget, budget.fraction_spent(meter)) == "train 00:30/02:00, ~01:30 left, eval 01:40"
    assert clock(meter, Budget.parse("1ep"), 0.5) == "train 00:30, ~00:30 left, eval 01:40"
