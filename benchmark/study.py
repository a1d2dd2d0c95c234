"""Optuna studies: search spaces from TOML, the objective at a budget, pruning, storage, workers, and
a parent MLflow run per study with a nested run per trial.

Storage is a journal file beside the MLflow store by default (safe for many processes on one machine),
or any Optuna RDB URL (PostgreSQL with heartbeats for workers on many machines). Sampler and pruner
are not kept in storage: every worker builds them from the same options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from benchmark import eval_size, runner
from benchmark.cores import worker_env
from benchmark.data import cache_root
from benchmark.errors import UserError
from benchmark.filelock import file_lock
from benchmark.liveness import alive, me
from benchmark.metrics import leading_metric
from benchmark.models import family
from benchmark.redact import masked
from benchmark.spec import build_spec, load_toml, parse_value
from benchmark.tracking import Tracker, end_if_running
from benchmark.train import eval_fractions

log = logging.getLogger(__name__)

KINDS = ("float", "int", "categorical", "one_minus_log")
METRICS = ("fid", "kid_mean")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# ---------------------------------------------------------------- search spaces


def load_space(path: str | Path, family_defaults: dict[str, Any], samples: int) -> tuple[dict[str, dict], str]:
    """Read and validate a search space file: ({param: distribution spec}, metric). Without a `metric` the
    objective is the one that leads at the trials' eval.samples: KID below 2,000, where FID is biased."""
    raw = load_toml(path)
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        raise UserError(f"search space {path} has no [params.NAME] tables")
    metric = raw.get("metric", leading_metric(samples))
    if metric not in METRICS:
        raise UserError(f"search space {path}: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    known = set(family_defaults) | {"batch_size"}
    for name, dist in params.items():
        where = f"search space {path}, params.{name}"
        if name not in known:
            raise UserError(f"{where}: not a field of this model; known: {', '.join(sorted(known))}")
        if not isinstance(dist, dict) or dist.get("kind") not in KINDS:
            raise UserError(f"{where}: kind must be one of {', '.join(KINDS)}")
        if dist["kind"] == "categorical":
            if not isinstance(dist.get("choices"), list) or not dist["choices"]:
                raise UserError(f"{where}: categorical needs a non-empty choices list")
            continue
        low, high = dist.get("low"), dist.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise UserError(f"{where}: needs numbers low < high, got low={low!r} high={high!r}")
        if dist.get("log") and low <= 0:
            raise UserError(f"{where}: a log scale needs low > 0")
        if dist["kind"] == "one_minus_log" and not (0 <= low < high < 1):
            raise UserError(f"{where}: one_minus_log needs 0 <= low < high < 1")
    return params, metric


def suggest(trial: optuna.Trial, space: dict[str, dict]) -> dict[str, Any]:
    """Draw one point of the space for this trial."""
    values: dict[str, Any] = {}
    for name, d in space.items():
        if d["kind"] == "float":
            values[name] = trial.suggest_float(name, d["low"], d["high"], log=bool(d.get("log")))
        elif d["kind"] == "int":
            values[name] = trial.suggest_int(name, int(d["low"]), int(d["high"]), log=bool(d.get("log")))
        elif d["kind"] == "categorical":
            values[name] = trial.suggest_categorical(name, d["choices"])
        else:  # log-uniform on 1 - value: 0.9, 0.99, 0.999 are equally likely scales
            gap = trial.suggest_float(f"one_minus_{name}", 1 - d["high"], 1 - d["low"], log=True)
            values[name] = 1 - gap
    return values


def enqueued_params(items: tuple[str, ...], space: dict[str, dict]) -> dict[str, Any]:
    """Optuna's parameters for `--enqueue KEY=VALUE` settings: a point of the space (a known-good baseline)
    to try before the sampler's own; a key outside the space or a value outside its range is refused."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in space:
            raise UserError(f"--enqueue {item!r}: give KEY=VALUE with KEY one of the space's: {', '.join(space)}")
        d, value = space[name], parse_value(text)
        if d["kind"] == "categorical":
            if value not in d["choices"]:
                raise UserError(f"--enqueue {item!r}: {name} is one of {d['choices']}")
            params[name] = value
            continue
        if not isinstance(value, (int, float)) or not d["low"] <= value <= d["high"]:
            raise UserError(f"--enqueue {item!r}: {name} lies in [{d['low']}, {d['high']}]")
        params[f"one_minus_{name}" if d["kind"] == "one_minus_log" else name] = (
            float(f"{1 - value:.12g}") if d["kind"] == "one_minus_log" else value)
    return params


# ---------------------------------------------------------------- storage, sampler, pruner


def default_storage() -> str:
    """A journal file beside the MLflow store (or in the working directory)."""
    uri = mlflow.get_tracking_uri()
    parsed = urlparse(uri)
    if parsed.scheme in ("sqlite", "", "file"):
        path = unquote(parsed.path)
        folder = Path("/" + path.lstrip("/") if path.startswith("/") else path).parent
    else:
        folder = Path.cwd()
    return str(folder / "optuna-journal.log")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    # Heartbeats mark a trial whose worker vanished as failed, so another worker can carry on.
    try:
        with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=5, grace_period=20)
    except ImportError as err:  # the URL's driver (postgresql:// means psycopg2) is not installed
        module = getattr(err.__cause__ or err.__context__, "name", None) or err.name or "its module"
        raise UserError(f"Optuna storage {masked(url)}: its database driver ({module}) is not installed; pip install "
                        "psycopg2-binary (facebench[postgres]), or name an installed one: postgresql+DRIVER://"
                        ) from None
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors alike: unreachable, bad URL
        reason = (str(getattr(err, "orig", None) or err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"Optuna storage {masked(url)} cannot be opened: {masked(reason)[:300]}") from None


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}; choose tpe, random or cmaes")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {name!r}; choose median, hyperband or none")


# ---------------------------------------------------------------- the study


@dataclass
class StudyOptions:
    model: str
    trials: int
    trial_budget: str
    study_name: str
    storage: str
    space_file: str
    sampler: str = "tpe"
    pruner: str = "median"
    data: str | None = None
    overrides: tuple[str, ...] = ()
    seed: int = 0
    experiment_name: str | None = None
    device: str = "auto"
    enqueue: tuple[str, ...] = ()


def _died(trial: optuna.trial.FrozenTrial) -> bool:
    """Its worker vanished: marked by a worker on the same host, or failed by a stale heartbeat (our own
    failures always record a fail_reason first)."""
    return bool(trial.user_attrs.get("worker_died")) or (
        trial.state == TrialState.FAIL and "fail_reason" not in trial.user_attrs)


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards --trials: finished or running, but not those whose worker died."""
    return [t for t in study.get_trials(deepcopy=False)
            if (t.state in FINISHED or t.state == TrialState.RUNNING) and not _died(t)]


def fail_dead_workers(study: optuna.Study) -> int:
    """Mark RUNNING trials of dead workers on this machine as failed (the journal file has no heartbeat)."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker and not alive(worker):
            storage = study._storage
            storage.set_trial_user_attr(t._trial_id, "worker_died", True)
            storage.set_trial_user_attr(t._trial_id, "fail_reason", f"worker {worker} died mid-trial")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            n += 1
    if n:
        log.info("marked %d trial(s) of dead workers as failed; they do not count towards --trials", n)
    return n


def _lock(opts: StudyOptions):
    """Counting trials and asking for a new one happen under a lock, so workers here never overshoot."""
    key = hashlib.sha256(f"{opts.storage}|{opts.study_name}".encode()).hexdigest()[:16]
    return file_lock(cache_root() / "studies" / f"{key}.lock")


def load_study(opts: StudyOptions, create: bool = True) -> optuna.Study:
    storage = open_storage(opts.storage)
    kwargs = dict(study_name=opts.study_name, storage=storage, sampler=make_sampler(opts.sampler, None),
                  pruner=make_pruner(opts.pruner), direction="minimize")
    if create:
        return optuna.create_study(load_if_exists=True, **kwargs)
    return optuna.load_study(**{k: v for k, v in kwargs.items() if k != "direction"})


def parent_run(opts: StudyOptions, space: dict, metric: str) -> str:
    """The study's parent MLflow run, found by tag or created (params: name, storage, sampler, space)."""
    experiment = opts.experiment_name or f"study-{opts.model}"
    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        found = client.search_runs([exp.experiment_id],
                                   f"tags.`optuna.study_name` = '{opts.study_name}' and tags.`study.parent` = 'true'")
        if found:
            return found[0].info.run_id
    params = {"study_name": opts.study_name, "storage": masked(opts.storage), "sampler": opts.sampler,
              "pruner": opts.pruner, "trials": opts.trials, "trial_budget": opts.trial_budget, "metric": metric,
              "model": opts.model, "search_space": json.dumps(space, sort_keys=True)[:6000]}
    tracker = Tracker.create(experiment, f"study {opts.study_name}", params,
                             {"optuna.study_name": opts.study_name, "study.parent": "true"})
    return tracker.run_id


def study_space(opts: StudyOptions) -> tuple[dict[str, dict], str]:
    """The study's space and objective, for trials built from the family's defaults under its --set overrides
    (a bad --set fails here); the objective defaults to the metric that leads at their eval.samples and
    eval.real_samples (the smaller decides)."""
    spec = _trial_spec(opts)
    return load_space(opts.space_file, family(opts.model)[1], min(spec.eval["samples"], spec.eval["real_samples"]))


def _trial_spec(opts: StudyOptions):
    """A trial's spec before the sampler's values: the family's defaults under the study's --set overrides."""
    _, defaults = family(opts.model)
    return build_spec(opts.model, defaults, {}, opts.overrides, {"budget": opts.trial_budget})


def pin_eval_size(opts: StudyOptions) -> StudyOptions:
    """Every trial is scored on one N: eval.samples = auto is settled once, for the whole study, as the N its
    stored objective names, or (a new study) as auto picks it for one trial here; workers get it as --set."""
    spec = _trial_spec(opts)
    if "auto" not in (spec.eval["samples"], spec.eval["real_samples"]):
        return opts
    stored = load_study(opts).user_attrs.get("objective")
    if stored is not None:
        n, real = stored["eval_samples"], stored["real_samples"]
    else:
        sized, line = eval_size.resolve_on(spec, opts.device)
        n, real = sized.eval["samples"], sized.eval["real_samples"]
        if line:
            log.info("every trial: %s", line)
    return dataclasses.replace(opts, overrides=(*opts.overrides, f"eval.samples={n}", f"eval.real_samples={real}"))


def keep_objective(study: optuna.Study, opts: StudyOptions, metric: str) -> None:
    """best_trial compares every trial's value: the objective (metric, and the N that makes it) is stored with
    the study when it starts, and a top-up whose settings would change it is refused in one line."""
    spec = _trial_spec(opts)
    wanted = {"metric": metric, "eval_samples": spec.eval["samples"], "real_samples": spec.eval["real_samples"],
              "direction": "minimize"}
    stored = study.user_attrs.get("objective")
    if stored is None:
        study.set_user_attr("objective", wanted)
    elif stored != wanted:
        def said(o: dict) -> str:
            return f"{o['metric']} at N = {o['eval_samples']} generated vs {o['real_samples']} real"

        raise UserError(f"study {opts.study_name} compares its trials on {said(stored)}; these settings give "
                        f"{said(wanted)}: keep the study's eval.samples and eval.real_samples, or name a new "
                        "--study-name")


def run_worker(opts: StudyOptions, parent_id: str, progress: bool = False) -> None:
    """Run trials until the study has opts.trials counted trials."""
    opts = pin_eval_size(opts)  # a worker started by hand: the study's N, as its coordinator's workers get it
    space, metric = study_space(opts)
    study = load_study(opts)
    keep_objective(study, opts, metric)
    experiment = opts.experiment_name or f"study-{opts.model}"
    worker = me()

    while True:
        with _lock(opts):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # RDB storage: workers on other machines that vanished
            fail_dead_workers(study)
            if len(counted(study)) >= opts.trials:
                return
            trial = study.ask()
            trial.set_user_attr("worker", worker)
        # What study.optimize does around a trial; ask/tell is needed here for the counting lock above.
        with get_heartbeat_thread(trial._trial_id, study._storage):
            _run_trial(study, trial, space, metric, opts, experiment, parent_id, progress)


def report(trial: optuna.Trial, value: float, point: int, images_seen: int, last: bool = False) -> None:
    """Report an eval point to the pruner, which compares trials only at equal steps: the step is the eval
    point's index (the same fraction of the trial budget in every trial), not images seen, which differ
    between trials under a time budget or a searched batch size and would never meet. The last point is
    never pruned: the budget is spent, and pruning there would only throw a finished trial's value away."""
    trial.report(value, step=point)
    if not last and trial.should_prune():
        raise optuna.TrialPruned(f"pruned at eval point {point + 1} ({images_seen} images), value {value:.4g}")


def _run_trial(study, trial, space, metric, opts, experiment, parent_id, progress) -> None:
    values = suggest(trial, space)
    overrides = [*opts.overrides, *(f"{k}={json.dumps(v)}" for k, v in values.items()),
                 f"seed={opts.seed + trial.number}"]
    _, defaults = family(opts.model)
    cost = {"device_hours": 0.0, "pflops": 0.0}
    final: dict[str, float] = {}

    def on_eval(evaluation: dict[str, float], meter, point: int) -> None:
        cost.update(device_hours=meter.device_hours, pflops=meter.pflops)
        trial.set_user_attr("device_hours", meter.device_hours)
        trial.set_user_attr("pflops", meter.pflops)
        if metric in evaluation:
            final[metric] = evaluation[metric]
            last = point == len(eval_fractions(spec.eval["points"])) - 1
            report(trial, evaluation[metric], point, int(evaluation["images_seen"]), last)

    run_ids: list[str] = []
    try:
        spec = build_spec(opts.model, defaults, {}, overrides,
                          {"budget": opts.trial_budget, "data": opts.data})
        if spec.eval["samples"] == 0:
            raise UserError("a study needs metrics: eval.samples must be > 0")
        tags = {"mlflow.parentRunId": parent_id, "optuna.study_name": opts.study_name,
                "optuna.trial": trial.number}
        def on_tracker(tracker) -> None:
            run_ids.append(tracker.run_id)
            trial.set_user_attr("mlflow_run_id", tracker.run_id)  # to end it if this worker dies

        runner.start(spec, opts.device, experiment, f"trial {trial.number}", progress=progress, extra_tags=tags,
                     on_eval=on_eval, on_tracker=on_tracker)
        if metric not in final or not math.isfinite(final[metric]):
            raise RuntimeError(f"the trial produced no finite {metric}")
        study.tell(trial, final[metric])
        state = "COMPLETE"
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        state = "PRUNED"
    except Exception as err:  # noqa: BLE001 - a failed trial must not end the study
        reason = f"{type(err).__name__}: {err}"
        log.warning("trial %d failed: %s", trial.number, reason)
        trial.set_user_attr("fail_reason", reason)
        _spent(trial, run_ids)
        study.tell(trial, state=TrialState.FAIL)
        state = "FAIL"
    if run_ids:
        client = mlflow.tracking.MlflowClient()
        client.set_tag(run_ids[0], "optuna.state", state)
        client.log_metric(run_ids[0], "optuna_trial_number", trial.number)
    log.info("trial %d %s %s", trial.number, state, values)


def _spent(trial: optuna.Trial, run_ids: list[str]) -> None:
    """What a trial that failed before its last eval point spent, from its run's record (the loop tags it on
    every way out): tuning cost counts failed trials too."""
    if run_ids:
        tags = mlflow.tracking.MlflowClient().get_run(run_ids[0]).data.tags
        for key in ("device_hours", "pflops"):
            if key in tags:
                trial.set_user_attr(key, float(tags[key]))


def finalize(opts: StudyOptions, parent_id: str) -> dict[str, Any]:
    """Log best value/params, total tuning cost and study plots to the parent run; return a summary."""
    study = load_study(opts, create=False)
    trials = study.get_trials(deepcopy=False)
    client = mlflow.tracking.MlflowClient()
    tracker = Tracker(parent_id)
    total_hours = sum(float(t.user_attrs.get("device_hours", 0.0)) for t in trials)
    total_pflops = sum(float(t.user_attrs.get("pflops", 0.0)) for t in trials)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    summary: dict[str, Any] = {"study": opts.study_name, "trials": {k: v for k, v in states.items() if v},
                               "tuning_device_hours": total_hours, "tuning_pflops": total_pflops}
    tracker.metrics({"tuning_device_hours": total_hours, "tuning_pflops": total_pflops,
                     **{f"trials_{k.lower()}": v for k, v in states.items() if v}}, 0)
    for t in trials:  # a trial whose worker died left its MLflow run RUNNING: it ends with the trial's reason
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and t.state == TrialState.FAIL and end_if_running(
                run_id, t.user_attrs.get("fail_reason", "its worker died mid-trial")):
            client.set_tag(run_id, "optuna.state", "FAIL")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        space, _ = study_space(opts)
        best_params = {k: v for k, v in _spec_values(best.params, space).items()}
        summary.update(best_value=best.value, best_trial=best.number, best_params=best_params)
        tracker.metrics({"best_value": best.value, **{f"best_{k}": float(v) for k, v in best_params.items()
                                                      if isinstance(v, (int, float))}}, 0)
        (tracker.dir / "best_params.json").write_text(json.dumps(summary, indent=2, default=str))
        tracker.publish("best_params.json")
        client.set_tag(parent_id, "best_trial", best.number)
        _plots(study, tracker)
    tracker.flush()
    client.set_terminated(parent_id, "FINISHED")
    return summary


def _spec_values(params: dict[str, Any], space: dict[str, dict]) -> dict[str, Any]:
    """Optuna's parameter names back to spec fields (one_minus_beta2 -> beta2)."""
    out = {}  # a trial from an earlier space of the same study may lack some: it gives what it has
    for name, d in space.items():
        if d["kind"] == "one_minus_log":
            if f"one_minus_{name}" in params:
                out[name] = 1 - params[f"one_minus_{name}"]
        elif name in params:
            out[name] = params[name]
    return out


def _plots(study: optuna.Study, tracker: Tracker) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for name, fn in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances),
                     ("parallel_coordinate", ovm.plot_parallel_coordinate), ("slice", ovm.plot_slice)):
        try:
            fn(study)
            path = tracker.dir / "plots" / f"study_{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            plt.gcf().set_size_inches(10, 6)
            plt.savefig(path, dpi=100, bbox_inches="tight")
            tracker.publish(f"plots/study_{name}.png")
        except Exception as err:  # noqa: BLE001 - a plot Optuna cannot draw yet (too few trials) is skipped
            log.info("study plot %s skipped: %s", name, err)
        finally:
            plt.close("all")


def run_study(opts: StudyOptions, workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Create or continue the study, run `workers` local processes of it, then summarize into MLflow."""
    opts = pin_eval_size(opts)
    space, metric = study_space(opts)
    make_sampler(opts.sampler, None), make_pruner(opts.pruner)  # fail early on bad names
    study = load_study(opts)
    keep_objective(study, opts, metric)
    if opts.enqueue:  # once: a re-run that tops the study up finds it there and adds nothing
        study.enqueue_trial(enqueued_params(opts.enqueue, space), skip_if_exists=True)
    parent_id = parent_run(opts, space, metric)
    mlflow.tracking.MlflowClient().update_run(parent_id, status="RUNNING")
    log.info("study %s in %s; parent MLflow run %s", opts.study_name, masked(opts.storage), parent_id)
    if workers <= 1:
        run_worker(opts, parent_id, progress)
    else:
        # the storage and tracking URLs go through the environment: a command line is anyone's to read (ps)
        env = {**worker_env(workers), "BENCH_STUDY_STORAGE": opts.storage,
               "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
        procs = [subprocess.Popen(_worker_command(opts, parent_id), env=env) for _ in range(workers)]
        for proc in procs:
            proc.wait()
        failed = [p.returncode for p in procs if p.returncode]
        if failed:
            log.warning("%d worker(s) exited with an error: %s", len(failed), failed)
    summary = finalize(opts, parent_id)
    summary["dashboard"] = f"optuna-dashboard {masked(opts.storage)}"
    return summary


def _worker_command(opts: StudyOptions, parent_id: str) -> list[str]:
    cmd = [sys.executable, "-m", "benchmark.cli", "study", "--model", opts.model, "--trials", str(opts.trials),
           "--trial-budget", opts.trial_budget, "--study-name", opts.study_name,
           "--space", opts.space_file, "--sampler", opts.sampler, "--pruner", opts.pruner, "--seed", str(opts.seed),
           "--worker-of", parent_id, "--quiet"]
    if opts.data:
        cmd += ["--data", opts.data]
    if opts.experiment_name:
        cmd += ["--experiment-name", opts.experiment_name]
    for item in opts.overrides:
        cmd += ["--set", item]
    cmd += ["--device", opts.device]
    return cmd
