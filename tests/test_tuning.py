"""The expected best after k trials (Lucic et al. 2018): the bootstrap the report plots agrees with the exact
order-statistic formula, which agrees with enumerating every draw."""

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis import tuning

VALUES = [412.0, 396.0, 530.0, 455.0, 610.0, 401.0, 388.0, 720.0, 433.0, 505.0]  # ten trials' KID x 1000


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_formula_is_the_mean_over_every_draw(k):
    values = VALUES[:5]
    every = [min(draw) for draw in itertools.product(values, repeat=k)]  # all 5^k draws, equally likely
    assert tuning.expected_best(values, k) == pytest.approx(np.mean(every), rel=1e-12)


def test_the_bootstrap_matches_the_formula_and_its_band_holds_it():
    curve = tuning.best_after_k(VALUES, list(range(1, 11)), draws=20_000)
    for _, row in curve.iterrows():
        exact = tuning.expected_best(VALUES, int(row["k"]))
        assert row["mean"] == pytest.approx(exact, rel=0.01) and row["lo"] <= exact <= row["hi"]
    assert curve["k"].tolist() == list(range(1, 11))
    assert tuning.expected_best(VALUES, 1) == pytest.approx(np.mean(VALUES))  # one trial: any trial
    assert curve["mean"].is_monotonic_decreasing and curve["mean"].iloc[-1] > min(VALUES)  # never below the best


def test_failed_and_pruned_trials_cost_but_do_not_count_as_draws():
    trials = pd.DataFrame({"value": [0.4, np.nan, 0.5, np.nan], "device_hours": [1.0, 0.5, 1.0, 0.5]})
    curve = tuning.tuning_curve(trials, scale=1000.0)
    assert curve["k"].tolist() == [1, 2]  # two complete trials
    assert curve["device_hours"].tolist() == pytest.approx([1.5, 3.0])  # 3 device-hours bought 2 complete trials
    assert curve["mean"].iloc[0] == pytest.approx(450.0, rel=0.02)
