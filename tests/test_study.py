"""Optuna studies on real storage (journal file, PostgreSQL), real MLflow nesting, real training trials."""

import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import psutil
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from benchmark import study as study_mod
from benchmark.errors import UserError
from benchmark.metrics import headline
from benchmark.models.dcgan import DEFAULTS
from conftest import ROOT, bench

TINY_TRIAL = ["--set", "ngf=8", "--set", "ndf=8", "--set", "batch_size=16", "--set", "synthetic_images=256",
              "--set", "eval.samples=4", "--set", "eval.real_samples=8", "--set", "eval.points=1",
              "--set", "eval.grid=4"]


def _study_cmd(storage, name, trials, *extra):
    return ["study", "--model", "dcgan", "--trials", str(trials), "--trial-budget", "32img", "--study-name", name,
            "--storage", storage, *TINY_TRIAL, "--quiet", *extra]


def _check_study(storage, name, trials, storage_param=None):
    study = optuna.load_study(study_name=name, storage=study_mod.open_storage(storage))
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    assert len(study.trials) == len(done) == trials
    assert len({t.number for t in study.trials}) == trials
    client = MlflowClient()
    (exp,) = [e for e in client.search_experiments() if e.name == "study-dcgan"]
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("study.parent") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == trials
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(trials))
    assert parent.data.params["storage"] == (storage_param or storage) and parent.data.params["sampler"] == "tpe"
    assert "best_value" in parent.data.metrics and "best_lr_g" in parent.data.metrics
    # no metric in the shipped space: the one that leads at the trials' N (4 < 2,000) is the objective
    assert parent.data.params["metric"] == "kid_mean"
    best = parent.data.metrics["best_value"]
    assert any(r.data.metrics.get("kid_mean") == best for r in children), best
    assert parent.data.metrics["tuning_device_hours"] > 0 and parent.data.metrics["tuning_pflops"] > 0
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/study_history.png" in plots
    return study


def test_six_trials_two_workers_on_a_journal_file_one_diverging(tmp_path):
    storage = str(tmp_path / "journal.log")
    study = optuna.create_study(study_name="journal", storage=study_mod.open_storage(storage))
    study.enqueue_trial({"lr_d": 1e30})  # outside the space on purpose: weights blow up to inf, losses to NaN
    proc = bench(*_study_cmd(storage, "journal", 6, "--workers", "2", "--pruner", "none"))
    assert "optuna-dashboard" in proc.stdout
    study = _check_study(storage, "journal", 6)
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed.params["lr_d"] == 1e30 and "diverged" in failed.user_attrs["fail_reason"]
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 5  # a failed trial does not end a study
    # it diverged before its eval point, yet what it spent is in the tuning cost
    assert failed.user_attrs["device_hours"] > 0
    client = MlflowClient()
    (parent,) = client.search_runs([client.get_experiment_by_name("study-dcgan").experiment_id],
                                   filter_string="tags.`study.parent` = 'true'")
    assert parent.data.metrics["tuning_device_hours"] == pytest.approx(
        sum(t.user_attrs["device_hours"] for t in study.trials))
    # the study keeps its objective: a top-up that would compare its trials on FID instead is one line
    proc = bench(*_study_cmd(storage, "journal", 7, "--set", "eval.samples=2000", "--set", "eval.real_samples=2000"),
                 check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "compares its trials on kid_mean" in proc.stderr
    assert len(optuna.load_study(study_name="journal", storage=study_mod.open_storage(storage)).trials) == 6
    # topped up to 10 trials with its own settings, its report reads the tuned model with what tuning cost:
    # the expected best KID after k = 1..9 complete trials, with a band, against k and device-hours
    bench(*_study_cmd(storage, "journal", 10, "--workers", "2", "--pruner", "none"))
    bench("report", "--experiment", "study-dcgan", "--include-trials", "--out", str(tmp_path / "report"))
    table = pd.read_csv(tmp_path / "report" / "tables" / "best_after_k_trials.csv")
    assert table["k"].tolist() == [1, 2, 5, 9]  # 9 complete trials: one of the ten diverged
    bands = [[float(x) for x in re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", b).groups()] for b in table["expected best"]]
    assert all(lo <= mean <= hi for mean, lo, hi in bands)
    assert [mean for mean, _, _ in bands] == sorted((mean for mean, _, _ in bands), reverse=True)
    assert table["device-hours of k trials"].is_monotonic_increasing
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Expected best KID x 1000 after k trials" in page and (tmp_path / "report" / "figures" /
                                                                    "best_after_k_trials.png").is_file()


@pytest.fixture(scope="module")
def postgres(postgres_server):
    return postgres_server("optuna")


PASSWORD = "S3cret-pw"


def test_six_trials_two_workers_on_postgresql_with_the_password_shown_nowhere(postgres):
    """The storage URL carries a password (the server trusts any; a real one checks it): it must not appear in
    what the study prints, logs, records in MLflow, or puts on its workers' command lines (ps)."""
    url = postgres.replace("postgres@", f"postgres:{PASSWORD}@")
    masked = postgres.replace("postgres@", "postgres:***@")
    baseline = ["--enqueue", "lr_g=3e-4", "--enqueue", "beta2=0.99"]  # a known-good point, tried first
    first = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *_study_cmd(url, "pg", 5, "--workers", "2",
                                                                                  *baseline)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    workers = {}  # the processes the study started: their command lines are anyone's to read
    while first.poll() is None:
        try:
            for child in psutil.Process(first.pid).children(recursive=True):
                workers[child.pid] = " ".join(child.cmdline())
        except psutil.Error:  # a worker that ended between the listing and the look
            pass
        time.sleep(0.2)
    out, err = first.communicate()
    assert first.returncode == 0, err[-3000:]
    assert sum("--worker-of" in line for line in workers.values()) >= 2, workers  # the workers (and their forks)
    command_lines = set(workers.values())
    second = bench(*_study_cmd(url, "pg", 6, "--workers", "2", *baseline))  # a top-up does not enqueue it again
    study = _check_study(url, "pg", 6, storage_param=masked)
    (first_trial,) = [t for t in study.trials if t.params["lr_g"] == 3e-4]
    assert first_trial.number == 0 and first_trial.params["one_minus_beta2"] == pytest.approx(0.01)
    assert f"optuna-dashboard {masked}" in second.stdout
    client = MlflowClient()
    recorded = [str(v) for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                for v in (*r.data.params.values(), *r.data.tags.values())]
    for where, text in {"stdout": out + second.stdout, "stderr": err + second.stderr,
                        "MLflow params and tags": "\n".join(recorded), "ps": "\n".join(command_lines)}.items():
        assert PASSWORD not in text, where


def test_credentials_in_urls_are_masked_and_broken_storage_is_one_line(postgres_server):
    from conftest import free_port

    lines = {}
    for name, args in {
        "tracking server": ["sync", "0123abcd", "--tracking-uri", f"http://u:{PASSWORD}@127.0.0.1:{free_port()}"],
        "missing driver": _study_cmd(f"postgresql+pg8000://u:{PASSWORD}@127.0.0.1:5432/db", "x", 1),
        "unreachable storage": _study_cmd(f"postgresql+psycopg2://u:{PASSWORD}@127.0.0.1:{free_port()}/db", "x", 1),
    }.items():
        proc = bench(*args, check=False, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (name, proc.stderr[-2000:])
        assert PASSWORD not in proc.stdout + proc.stderr and "u:***@" in proc.stderr, (name, proc.stderr)
        lines[name] = proc.stderr.strip().splitlines()
        assert len(lines[name]) == 1, (name, lines[name])
    assert "driver" in lines["missing driver"][0] and "cannot be opened" in lines["unreachable storage"][0]


def test_a_trial_that_spent_its_budget_is_complete_however_far_behind(tmp_path):
    """Two earlier trials far ahead at every step; the median pruner would prune any new trial, but with
    one eval point that point is the trial's last: it is told to the study as COMPLETE with its value."""
    storage = str(tmp_path / "journal.log")
    study = optuna.create_study(study_name="behind", storage=study_mod.open_storage(storage), direction="minimize")
    space, _ = study_mod.load_space(ROOT / "experiments" / "studies" / "dcgan.toml", DEFAULTS, 4)
    for _ in range(2):
        trial = study.ask()
        study_mod.suggest(trial, space)
        trial.report(-1e9, step=0)
        study.tell(trial, -1e9)
    bench(*_study_cmd(storage, "behind", 3, "--pruner", "median"))
    study = optuna.load_study(study_name="behind", storage=study_mod.open_storage(storage))
    last = study.trials[2]
    assert last.state == TrialState.COMPLETE and last.value == last.intermediate_values[0] > -1e9, last


def test_worker_killed_mid_trial_then_rerun_completes(tmp_path):
    storage = str(tmp_path / "journal.log")
    cmd = _study_cmd(storage, "killed", 3, "--pruner", "none", "--trial-budget", "320img")
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once the second trial's MLflow run exists (it is training)
        if os.path.exists(storage):
            trials = optuna.load_study(study_name="killed", storage=study_mod.open_storage(storage)).trials
            if any(t.number == 1 and t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
                   for t in trials):
                break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    bench(*cmd)
    study = optuna.load_study(study_name="killed", storage=study_mod.open_storage(storage))
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3
    (dead,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert dead.user_attrs["worker_died"] is True and dead.number == 1
    client = MlflowClient()  # the dead trial's MLflow run ended too, with the reason
    run = client.get_run(dead.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "died" in run.data.tags["failure_reason"]
    exp = client.get_experiment_by_name("study-dcgan")
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


@pytest.mark.parametrize("text, message", [
    ('[params.lr_g]\nkind = "float"\nlow = 1\nhigh = 0.1\n', "low < high"),
    ('[params.nope]\nkind = "float"\nlow = 0\nhigh = 1\n', "not a field"),
    ('[params.lr_g]\nkind = "gaussian"\n', "kind must be one of"),
    ('[params.lr_g]\nkind = "float"\nlow = 0\nhigh = 1\nlog = true\n', "log scale needs low > 0"),
    ('metric = "lpips"\n[params.lr_g]\nkind = "float"\nlow = 0.1\nhigh = 1\n', "metric must be"),
    ("", "has no .params.NAME. tables"),
])
def test_bad_search_spaces_are_user_errors(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        study_mod.load_space(path, DEFAULTS, 64)


def test_a_best_trial_from_an_earlier_space_gives_the_settings_it_has():
    space, _ = study_mod.load_space(ROOT / "experiments" / "studies" / "dcgan.toml", DEFAULTS, 500)
    assert study_mod._spec_values({"lr_g": 2e-4}, space) == {"lr_g": 2e-4}  # no beta2 searched back then
    assert study_mod._spec_values({"one_minus_beta2": 1e-3}, space) == {"beta2": pytest.approx(0.999)}


def test_enqueued_settings_must_lie_in_the_space():
    space, _ = study_mod.load_space(ROOT / "experiments" / "studies" / "dcgan.toml", DEFAULTS, 500)
    assert study_mod.enqueued_params(("lr_d=2e-4", "beta2=0.999"), space) == {"lr_d": 2e-4, "one_minus_beta2": 1e-3}
    for bad, message in (("beta2=0.5", "lies in"), ("z_dim=50", "one of the space's"), ("lr_g", "KEY=VALUE")):
        with pytest.raises(UserError, match=message):
            study_mod.enqueued_params((bad,), space)


def test_the_smaller_of_generated_and_real_images_decides_the_objective():
    """2,000 generated images against 256 real ones: FID's reference covariance has rank < 256, so KID leads,
    in the eval line and as the study's objective; with 2,000 of each FID does."""
    def objective(*overrides):
        opts = study_mod.StudyOptions(model="dcgan", trials=1, trial_budget="32img", study_name="n", storage="j.log",
                                      space_file=str(ROOT / "experiments" / "studies" / "dcgan.toml"),
                                      overrides=overrides)
        return study_mod.study_space(opts)[1]

    assert objective("eval.samples=2000", "eval.real_samples=256") == "kid_mean"
    assert objective("eval.samples=2000", "eval.real_samples=2000") == "fid"
    line = headline({"fid": 80.0, "kid_mean": 0.05, "kid_std": 0.001}, 2000, 256)
    assert line.startswith("KID x 1000 = 50.00") and "N = 2000 generated vs 256 real: KID leads" in line


def test_shipped_space_is_valid_and_beta2_is_log_scaled_on_one_minus():
    space, metric = study_mod.load_space(ROOT / "experiments" / "studies" / "dcgan.toml", DEFAULTS, 64)
    assert metric == "kid_mean" and space["beta2"]["kind"] == "one_minus_log"  # KID leads below 2,000 samples
    assert study_mod.load_space(ROOT / "experiments" / "studies" / "dcgan.toml", DEFAULTS, 2000)[1] == "fid"
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = study_mod.suggest(trial, space)
    assert 0.9 <= values["beta2"] <= 0.9999 and 1e-5 <= values["lr_g"] <= 1e-2


def test_median_pruner_prunes_trials_whose_images_seen_differ(tmp_path):
    """Under a time budget (or a searched batch size) trials reach their eval points at different images
    seen; the pruner compares trials only at equal steps, so a trial reports at its eval point's index.
    Two finished trials, then a third far worse at the first point: pruned, through real journal storage."""
    storage = str(tmp_path / "journal.log")
    study = optuna.create_study(study_name="prune", storage=study_mod.open_storage(storage),
                                pruner=study_mod.make_pruner("median"), direction="minimize")
    for images, values in (([1472, 2944, 5888], [300.0, 250.0, 200.0]), ([1600, 3200, 6400], [310.0, 240.0, 190.0])):
        trial = study.ask()
        for point, (seen, value) in enumerate(zip(images, values, strict=True)):
            study_mod.report(trial, value, point, seen)
        study.tell(trial, values[-1])
    trial = study.ask()
    study_mod.report(trial, 280.0, 0, 1344)  # better than the median at point 0: goes on
    with pytest.raises(optuna.TrialPruned, match="eval point 2"):
        study_mod.report(trial, 400.0, 1, 2688)  # far worse at point 1, at other images seen than both
    assert [s for s, _ in sorted(study.trials[2].intermediate_values.items())] == [0, 1]
    # far worse at the last point too, but the budget is spent: its value is kept, not thrown away
    trial = study.ask()
    study_mod.report(trial, 280.0, 0, 1344)
    study_mod.report(trial, 230.0, 1, 2688)
    study_mod.report(trial, 400.0, 2, 5376, last=True)
    assert trial.should_prune()  # what the pruner would have done


def test_auto_n_is_settled_once_for_a_study_and_kept_by_its_top_up(tmp_path):
    """eval.samples = auto: the study measures once, stores the N in its objective, and a top-up (another
    process, another measurement possible) scores its trials on that N without measuring again."""
    storage = str(tmp_path / "journal.log")
    auto = [a for a in TINY_TRIAL if a not in ("eval.samples=4", "eval.real_samples=8")]
    auto = [a for i, a in enumerate(auto) if not (a == "--set" and auto[i + 1] == "--set")]
    cmd = ["study", "--model", "dcgan", "--trial-budget", "32img", "--study-name", "auto", "--storage", storage,
           *auto, "--set", "eval.real_samples=16", "--pruner", "none"]
    first = bench(*cmd, "--trials", "1")
    assert "every trial: eval.samples = auto -> 64" in first.stderr
    study = optuna.load_study(study_name="auto", storage=study_mod.open_storage(storage))
    assert study.user_attrs["objective"]["eval_samples"] == 64
    second = bench(*cmd, "--trials", "2")
    assert "eval.samples = auto ->" not in second.stderr  # the stored objective's N, not a new measurement
    client = MlflowClient()
    runs = [r for r in client.search_runs([client.get_experiment_by_name("study-dcgan").experiment_id])
            if r.data.tags.get("study.parent") != "true"]
    assert len(runs) == 2 and {r.data.params["eval.samples"] for r in runs} == {"64"}
