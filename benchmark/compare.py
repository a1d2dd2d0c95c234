"""`bench compare`: the headline workflow. The same data, budget and evaluation for each model and seed,
one MLflow experiment for them all, then the report."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from benchmark.cores import worker_env
from benchmark.errors import UserError

log = logging.getLogger(__name__)


def split_overrides(models: list[str], overrides: tuple[str, ...]) -> dict[str, list[str]]:
    """`key=value` applies to every model, `model:key=value` to that model only."""
    per_model: dict[str, list[str]] = {m: [] for m in models}
    for item in overrides:
        target, sep, rest = item.partition(":")
        if sep and "=" not in target:
            if target not in per_model:
                raise UserError(f"--set {item!r} names model {target!r}, which is not in --models")
            per_model[target].append(rest)
        else:
            for m in models:
                per_model[m].append(item)
    return per_model


def is_spec_file(typed: str) -> bool:
    return typed.endswith(".toml")


def alias(typed: str) -> str:
    """What names a model's runs: the family or alias as typed, or a spec file's stem (seed-dcgan)."""
    return Path(typed).stem if is_spec_file(typed) else typed


def run_tags(typed: str, spec) -> dict[str, str]:
    """The tags that tell a model's runs apart where two share a family (two dcgan spec files)."""
    tags = {"model_alias": alias(typed)} if alias(typed) != spec.model else {}
    return {**tags, "spec_file": Path(typed).name} if is_spec_file(typed) else tags


def run_name(typed: str, spec) -> str:
    from benchmark import runner

    return runner.default_run_name(spec, run_tags(typed, spec))


def settings(typed: str) -> tuple[str, dict]:
    """(family, spec-file settings) for a --models entry: a family, an alias, or a TOML spec file."""
    from benchmark.models import resolve
    from benchmark.spec import load_toml

    if not is_spec_file(typed):
        return resolve(typed, {})
    experiment = load_toml(typed)  # a missing or malformed file is one line
    if "model" not in experiment:
        raise UserError(f"{typed} names no model family (model = \"dcgan\")")
    return resolve(experiment["model"], experiment)


def seeds_per_model(models: list[str], seeds: int | str) -> dict[str, int]:
    """`--seeds 3` gives every model seeds 0..2; `--seeds 1,dcgan=2` gives dcgan two and the others one (a model
    is named as typed or, for a spec file, by its stem)."""
    head, *rest = str(seeds).split(",")
    try:
        counts = {m: int(head) for m in models}
        for item in rest:
            name, _, n = item.partition("=")
            owner = [m for m in models if name.strip() in (m, alias(m))]
            if not owner:
                raise UserError(f"--seeds {seeds}: {name.strip()!r} is not in --models")
            counts[owner[0]] = int(n)
    except ValueError:
        raise UserError(f"--seeds {seeds}: give N, or N,MODEL=N,... (N >= 1)") from None
    if min(counts.values()) < 1:
        raise UserError(f"--seeds {seeds}: every model needs at least one seed")
    return counts


def plan(models: list[str], budget: str, data: str | None, seeds: int | str, overrides: tuple[str, ...]) -> list:
    """(model as typed, its overrides, validated spec) per run; every spec is checked before a run starts."""
    from benchmark.models import family
    from benchmark.spec import build_spec

    runs = []
    per_model = split_overrides(models, overrides)
    counts = seeds_per_model(models, seeds)
    for typed in models:
        name, experiment = settings(typed)
        _, defaults = family(name)
        for seed in range(counts[typed]):
            runs.append((typed, per_model[typed], build_spec(name, defaults, experiment, per_model[typed],
                                                              {"data": data, "budget": budget, "seed": seed})))
    return runs


def one_eval_size(runs: list, experiment_name: str, device: str) -> list:
    """A report compares like with like: eval.samples = auto is settled once for every model of a compare, as
    the N its finished runs have, or the smallest N auto picks for any of its models here (each model's own
    sampling cost); each run then gets it as --set, so a re-run finds its finished runs' specs unchanged."""
    from dataclasses import replace

    from benchmark import eval_size

    if not any("auto" in (spec.eval["samples"], spec.eval["real_samples"]) for _, _, spec in runs):
        return runs
    earlier = finished_eval_sizes(experiment_name)
    if earlier:
        n, real = earlier
    else:
        sized = {}
        for typed, _, spec in runs:
            if typed not in sized:
                sized[typed], line = eval_size.resolve_on(spec, device)
                if line:
                    log.info("%s: %s", typed, line)
        # the smallest N, and its real N: auto's real_samples never falls as N grows
        n = min(s.eval["samples"] for s in sized.values())
        real = min(s.eval["real_samples"] for s in sized.values())
        log.info("every model of %s is scored on eval.samples = %d vs eval.real_samples = %d", experiment_name, n,
                 real)
    pinned = [f"eval.samples={n}", f"eval.real_samples={real}"]
    return [(typed, [*extra, *pinned], replace(spec, eval={**spec.eval, "samples": n, "real_samples": real}))
            for typed, extra, spec in runs]


def finished_eval_sizes(experiment_name: str) -> tuple[int, int] | None:
    """(eval.samples, eval.real_samples) of the experiment's finished runs, if it has any."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=1)
    if not runs or "eval.real_samples" not in runs[0].data.params:
        return None
    params = runs[0].data.params
    return int(params["eval.samples"]), int(params["eval.real_samples"])


def run_command(typed: str, model_overrides: list[str], spec, experiment_name: str, device: str) -> list[str]:
    """The `bench run` line of one (model, seed) of a compare: what a worker runs, or a cluster's scheduler."""
    cmd = ["bench", "run", *(["--spec", typed, "--tag", f"model_alias={alias(typed)}"] if is_spec_file(typed) else
                              ["--model", typed]), "--budget", spec.budget, "--seed", str(spec.seed)]
    if spec.data != "synthetic":
        cmd += ["--data", spec.data]
    for item in model_overrides:
        cmd += ["--set", item]
    return cmd + ["--experiment-name", experiment_name, "--tag", f"compare={experiment_name}", "--device", device]


def compare(models: list[str], budget: str, data: str | None, seeds: int | str, overrides: tuple[str, ...],
            experiment_name: str | None, out: Path | None, device: str = "auto", progress: bool = True,
            workers: int = 1) -> Path:
    from analysis.report import build
    from benchmark import runner

    experiment_name = experiment_name or default_name()
    runs = one_eval_size(plan(models, budget, data, seeds, overrides), experiment_name, device)
    out = Path(out) if out else Path("reports") / experiment_name
    done = finished(experiment_name)
    named = [(run_name(typed, spec), (typed, extra, spec)) for typed, extra, spec in runs]
    kept = [name for name, (_, _, spec) in named if done.get(name) == spec.hash()]
    if kept:  # the same command again completes a compare in parts: what finished is not trained twice
        log.info("kept %d finished run(s) of %s: %s", len(kept), experiment_name, ", ".join(kept))
        runs = [run for name, run in named if name not in kept]
    if workers > 1:
        failed = _in_workers(runs, experiment_name, device, workers, out / "logs")
    else:
        failed = []
        for i, (typed, _, spec) in enumerate(runs, 1):
            log.info("[%d/%d] %s seed %d, budget %s", i, len(runs), typed, spec.seed, budget)
            try:
                runner.start(spec, device, experiment_name, None, progress,
                             extra_tags={"compare": experiment_name, **run_tags(typed, spec)})
            except UserError:
                raise
            except Exception as err:  # one model failing (e.g. diverging) must not lose the others
                log.warning("%s seed %d failed: %s", typed, spec.seed, err)
                failed.append(run_name(typed, spec))
    if failed:
        log.warning("failed runs (kept in MLflow as FAILED): %s", ", ".join(failed))
    return build(out, [experiment_name])


def finished(experiment_name: str) -> dict[str, str]:
    """Run name -> spec hash of the experiment's FINISHED runs."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return {}
    found = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    return {r.info.run_name: r.data.tags.get("spec_hash") for r in found}


def default_name() -> str:
    return f"compare-{time.strftime('%Y%m%d-%H%M%S')}"


def _in_workers(runs: list, experiment_name: str, device: str, workers: int, logs: Path) -> list[str]:
    """Each (model, seed) as its own `bench run` process, `workers` at a time: ordinary tracked runs, each with
    its log in `logs`. A run that fails does not stop the others."""
    import mlflow

    logs.mkdir(parents=True, exist_ok=True)
    env = {**worker_env(workers), "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    pending = [(run_name(typed, spec),
                [sys.executable, "-m", "benchmark.cli", *run_command(typed, extra, spec, experiment_name, device)[1:],
                 "--quiet"]) for typed, extra, spec in runs]
    running: list[tuple[str, subprocess.Popen, object]] = []
    failed, done = [], 0
    try:
        while pending or running:
            while pending and len(running) < workers:
                name, cmd = pending.pop(0)
                handle = open(logs / f"{name}.log", "w")
                proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
                running.append((name, proc, handle))
                log.info("started %s (log: %s)", name, logs / f"{name}.log")
            time.sleep(0.5)
            for item in [r for r in running if r[1].poll() is not None]:
                name, proc, handle = item
                running.remove(item)
                handle.close()
                done += 1
                if proc.returncode:
                    failed.append(name)
                    log.warning("[%d/%d] %s failed (exit %d): see %s", done, len(runs), name, proc.returncode,
                                logs / f"{name}.log")
                else:
                    log.info("[%d/%d] %s finished", done, len(runs), name)
    finally:  # interrupted: the runs checkpoint and end as KILLED, resumable one by one
        for _, proc, _ in running:
            proc.terminate()
        for _, proc, handle in running:
            proc.wait()
            handle.close()
    return failed
