"""`bench`: the command line. Thin: it parses, then calls the modules that do the work."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from benchmark.errors import UserError
from benchmark.redact import MaskFilter, masked
from benchmark.spec import CHOICES

log = logging.getLogger("benchmark")


def _setup_logging(quiet: bool) -> None:
    # MLflow sets its own loggers to INFO when it is imported (later, lazily): its env var is what holds
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout is for our results
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # checkpoint slots, pointers: small
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # a password in a URL is never written out
        if not any(isinstance(f, MaskFilter) for f in handler.filters):
            handler.addFilter(MaskFilter())
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _tracking(uri: str | None, check: bool = True) -> None:
    from benchmark.tracking import use_tracking_uri

    # A tracking server that goes away: fail a call within seconds (MLflow retries for minutes by default)
    # and let the run keep what it logs for later, instead of stalling training (see benchmark/outbox.py)
    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                       ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
        os.environ.setdefault(key, value)

    use_tracking_uri(uri, check)


def _models_help() -> str:
    from benchmark.catalog import ALIASES, DESCRIPTIONS

    lines = [f"{name}: {desc}" for name, desc in DESCRIPTIONS.items()]
    return "; ".join(lines + [f"{name}: {desc}" for name, (_, _, desc) in ALIASES.items()])


tracking_option = click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                               help="MLflow store; default: mlflow.db + ./mlruns in the working directory.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars; warnings only.")
bn_option = click.option("--bn", type=click.Choice(CHOICES["eval.bn"]),
                         help="GANs: BatchNorm statistics G samples with (default: the run's eval.bn). standing: "
                         "recomputed from fresh noise (BigGAN); batch: train mode (the tutorials); running: the "
                         "running averages, grey early in training.")
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="facebench", prog_name="bench")
def cli() -> None:
    """facebench: face generators on CelebA 64x64 under controlled compute budgets, tracked in MLflow."""


# ---------------------------------------------------------------- run


@cli.command()
@click.option("--model", help="Model family or alias (listed above). Default dcgan.")
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False),
              help="TOML spec, e.g. experiments/seed-dcgan.toml; flags and --set override it. Its runs go to "
              "the MLflow experiment named after the file (seed-dcgan) unless --experiment-name says otherwise.")
@click.option("--experiment", "old_spec_file", type=click.Path(dir_okay=False), hidden=True,
              help="Deprecated alias of --spec.")
@click.option("--data", envvar="BENCH_DATA", help="CelebA folder or .zip, any image folder, or 'synthetic' (default).")
@click.option("--budget", help="Stop at the first spent: 90s 30m 58h 2d (device-hours), 50ep, 2Mimg, 10000step, "
              "1e18flop, or several joined by '|'. Default 2m.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any spec field, e.g. --set lr_g=2e-4 --set eval.samples=1000. Repeatable.")
@click.option("--seed", type=int, help="Seed: a CPU run with the same seed is deterministic.")
@click.option("--resume", "resume_id", metavar="RUN_ID", help="Continue a killed run from its last checkpoint "
              "(the one before it if the last is damaged), into the same MLflow run.")
@click.option("--restart", is_flag=True, help="With --resume, for a run that has no checkpoint: start it over in the "
              "same MLflow run, charged with the device-hours and FLOPs it had already logged.")
@click.option("--experiment-name", help="MLflow experiment; default: the --spec file's name, else the model's name.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
              help="An extra MLflow tag on the run (e.g. compare=NAME, as bench compare --print-commands writes).")
@click.option("--run-name", help="MLflow run name; default model-budget-sSEED, e.g. dcgan-2m-s0.")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="Data-parallel ranks on this machine, through torch's elastic launcher (gloo on CPU, nccl on "
              "CUDA): each trains its slice of every global batch. For several machines use torchrun "
              "--nnodes N --nproc-per-node K -m benchmark.cli run ... instead.")
@click.option("--show-spec", is_flag=True, help="Print every spec key of --model with its default, type and meaning "
              "(and the value this command line gives it), then exit without training.")
@device_option
@tracking_option
@quiet_option
def run(model, spec_file, old_spec_file, data, budget, overrides, seed, resume_id, restart, experiment_name, tags,
        run_name, nproc, show_spec, device, tracking_uri, quiet) -> None:
    """Train a model under a budget, evaluating and checkpointing as it goes, all logged to MLflow."""
    from benchmark import runner

    if nproc > 1 and "WORLD_SIZE" not in os.environ and not show_spec:
        from benchmark import distributed

        _setup_logging(quiet)
        _tracking(tracking_uri)  # an unusable store is one line here, not one per rank
        from benchmark.tracking import end_if_running

        distributed.launch(nproc, _without_nproc(sys.argv[1:]), on_failure=end_if_running)
        return
    quiet = quiet or int(os.environ.get("RANK", "0")) > 0  # one bar: rank 0's
    from benchmark.models import family, key_help, resolve
    from benchmark.spec import assignment, build_spec, load_toml, spec_table

    _setup_logging(quiet)
    if old_spec_file:
        if spec_file:
            raise UserError("give the spec file once: --spec FILE (--experiment is its deprecated old name)")
        click.echo("warning: --experiment FILE is deprecated on bench run: use --spec FILE (bench report "
                   "--experiment takes an MLflow experiment name, or a spec file's name)", err=True)
        spec_file = old_spec_file
    if resume_id is not None and not show_spec:  # an empty id is a mistake, not a request for a new run
        _tracking(tracking_uri)
        runner.resume(resume_id, device, progress=not quiet, restart=restart)
        _leave()
        return
    if restart:
        raise UserError("--restart goes with --resume RUN_ID")
    experiment = load_toml(spec_file) if spec_file else {}
    typed = model or experiment.get("model") or "dcgan"
    name, experiment = resolve(typed, experiment)
    _, defaults = family(name)
    spec = build_spec(name, defaults, experiment, overrides, {"data": data, "budget": budget, "seed": seed})
    if show_spec:
        click.echo(spec_table(name, defaults, key_help(name), spec))
        return
    _tracking(tracking_uri)
    extra = {"model_alias": typed} if typed != name else {}
    extra.update(assignment(item, "--tag") for item in tags)
    if spec_file:
        extra["spec_file"] = Path(spec_file).name
        experiment_name = experiment_name or Path(spec_file).stem
    runner.start(spec, device, experiment_name, run_name, progress=not quiet, extra_tags=extra or None)
    _leave()


def _leave() -> None:
    """A rank of a multi-process job leaves its process groups before it exits."""
    distributed = sys.modules.get("benchmark.distributed")
    if distributed is not None:
        distributed.leave()


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line each rank runs: the same, without --nproc (a rank launches nothing)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


run.help += "\n\n\b\nModels:\n" + "\n".join(f"  {line}" for line in _models_help().split("; "))


# ---------------------------------------------------------------- eval


@cli.command("eval")
@click.argument("run_id", required=False)
@click.option("--samples", type=click.IntRange(2), help="Generated images to score (default: the run's eval.samples).")
@click.option("--real", help="With --fake: a real set (folder, zip, CelebA layout or 'synthetic').")
@click.option("--fake", help="With --real: a folder of generated images.")
@click.option("--split", default="train", show_default=True, help="CelebA split of --real.")
@click.option("--sampler-steps", metavar="S1,S2,...",
              help="Diffusion runs: score once per number of sampling steps (e.g. 10,50,100) and log "
              "<metric>_vs_steps, the quality-versus-sampling-cost curve.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@bn_option
@device_option
@tracking_option
@quiet_option
def eval_cmd(run_id, samples, real, fake, split, sampler_steps, as_json, bn, device, tracking_uri, quiet) -> None:
    """FID/KID/precision/recall of a run's latest checkpoint, logged into the run, or of --real vs --fake.

    At the run's own N and --bn the scores extend its curve (fid, kid_mean, ...); at another N or --bn
    they are logged under keys of their own (fid_n500, fid_n500_bn-batch, ...). Below 2,000 samples KID
    leads: FID is biased upwards there."""
    from benchmark import evaluate

    _setup_logging(quiet or as_json)
    if real or fake:
        if not (real and fake) or run_id:
            raise UserError("give either RUN_ID, or both --real and --fake")
        if bn:
            raise UserError("--bn is for a run's checkpoint; --real/--fake are image sets already drawn")
        result = evaluate.eval_sets(real, fake, samples, split, progress=not quiet and not as_json)
    elif run_id:
        _tracking(tracking_uri)
        steps = evaluate.parse_steps(sampler_steps) if sampler_steps else None
        result = evaluate.eval_run(run_id, samples, device, progress=not quiet and not as_json, sampler_steps=steps,
                                   bn=bn)
    else:
        raise UserError("give a RUN_ID, or --real and --fake")
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif "sweep" in result:
        click.echo(f"run {result['run_id']} at {result['images_seen']} images, {result['eval_samples']} samples")
        click.echo(f"{'steps':>6} {'NFE':>5} {'FID':>10} {'KID':>10} {'s/image':>9}")
        for row in result["sweep"]:
            click.echo(f"{row['sampler_steps']:>6} {row['sample_nfe']:>5.0f} {row['fid']:>10.3f} "
                       f"{row['kid_mean']:>10.5f} {row['sample_seconds_per_image']:>9.4f}")
    else:
        for key, value in result.items():
            click.echo(f"{key:<28} {value:.6g}" if isinstance(value, float) else f"{key:<28} {value}")


# ---------------------------------------------------------------- sync


@cli.command("sync")
@click.argument("run_id")
@tracking_option
def sync_cmd(run_id, tracking_uri) -> None:
    """Deliver what a run kept on this machine while its tracking server was unreachable (metrics, tags, grids,
    its checkpoint, its end), in order and once each."""
    from benchmark.outbox import DEAD_LETTER
    from benchmark.tracking import Tracker

    _setup_logging(True)
    _tracking(tracking_uri)
    tracker = Tracker.open(run_id)
    tally = tracker.sync()
    click.echo(f"run {run_id}: delivered {tally.delivered} waiting item(s)")
    if tally.dead or tally.torn:
        click.echo(f"run {run_id}: {tally.dead} item(s) the server refused and {tally.torn} damaged line(s) were "
                   f"set aside in {tracker.outbox.folder / DEAD_LETTER}")
    if tally.left:
        raise UserError(f"run {run_id}: {tally.left} item(s) still wait in {tracker.outbox.folder}: the tracking "
                        "server stopped answering; bench sync again once it is back")
    click.echo(f"run {run_id}: nothing left waiting on this machine")


# ---------------------------------------------------------------- sample


@cli.command("sample")
@click.argument("run_id")
@click.option("--n", "n", type=click.IntRange(1), default=64, show_default=True, help="Images to draw.")
@click.option("--out", default="samples.png", show_default=True, type=click.Path(),
              help="A .png/.jpg path gets one grid; any other path becomes a folder of numbered PNGs.")
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed draws the same images.")
@click.option("--steps", type=click.IntRange(1), help="Diffusion runs: sampling steps (default: the run's own).")
@click.option("--nearest", "nearest_k", type=click.IntRange(1, 16), metavar="K",
              help="The memorisation check: each image beside its K nearest training images in Inception space "
              "(a row per image, into --out and into the run as nearest/grid), with the distances against those "
              "of training images to each other. Computes features of the whole training split once (cached).")
@bn_option
@device_option
@tracking_option
@quiet_option
def sample_cmd(run_id, n, out, seed, steps, nearest_k, bn, device, tracking_uri, quiet) -> None:
    """Images from a run's latest checkpoint (finished or still running)."""
    from benchmark.sample import GRID_SUFFIXES, sample_run

    _setup_logging(quiet)
    _tracking(tracking_uri)
    if nearest_k:
        from benchmark.nearest import nearest_run

        if Path(out).suffix.lower() not in GRID_SUFFIXES:
            raise UserError(f"--nearest draws one grid: give --out a .png or .jpg path, not {out!r}")
        r = nearest_run(run_id, n, nearest_k, Path(out), seed, steps, device, bn=bn, progress=not quiet)
        click.echo(f"{r['n']} images from {r['model']} at {r['images_seen']} images seen, each beside its {r['k']} "
                   f"nearest of {r['train_images']} training images (Inception pool features, Euclidean) -> "
                   f"{r['out']}; distance to the nearest: mean {r['nearest_distance']:.2f}, training images to "
                   f"their nearest other: median {r['train_median']:.2f} ({r['closer_than_train']} of {r['n']} "
                   "images nearer than that); logged into the run as nearest/grid")
        return
    result = sample_run(run_id, n, Path(out), seed, steps, device, bn=bn, progress=not quiet)
    bn_text = "" if result["bn"] == "n/a" else f", BatchNorm {result['bn']}"
    click.echo(f"{result['n']} images from {result['model']} at {result['images_seen']} images seen "
               f"({result['sample_nfe']} network passes each{bn_text}) -> {result['out']}")


# ---------------------------------------------------------------- data


@cli.group()
def data() -> None:
    """Build or inspect the prepared (decoded, cropped, resized) cache of a data set."""


@data.command("prepare")
@click.argument("path")
@click.option("--split", default="train", show_default=True, help="train, valid, test or all (CelebA layouts).")
@click.option("--resolution", type=click.Choice(["32", "64", "128"]), default="64", show_default=True,
              help="Side in pixels of the square images the set is prepared at.")
@quiet_option
def data_prepare(path, split, resolution, quiet) -> None:
    """Decode, crop and resize PATH once into a memory-mapped uint8 array."""
    from benchmark.data import prepare

    _setup_logging(quiet)
    prepared = prepare(path, split, int(resolution), progress=not quiet)
    click.echo(json.dumps(prepared.info(), indent=2))


@data.command("info")
@click.argument("path")
@click.option("--split", default="train", show_default=True, help="train, valid, test or all (CelebA layouts).")
@click.option("--resolution", type=click.Choice(["32", "64", "128"]), default="64", show_default=True,
              help="Side in pixels of the square images the set is prepared at.")
def data_info(path, split, resolution) -> None:
    """Show what the prepared cache of PATH holds (prepares it first if needed)."""
    from benchmark.data import prepare

    _setup_logging(True)
    click.echo(json.dumps(prepare(path, split, int(resolution), progress=False).info(), indent=2))


# ---------------------------------------------------------------- study


@cli.command()
@click.option("--model", default="dcgan", show_default=True, help="Model family to tune.")
@click.option("--trials", type=click.IntRange(1), default=20, show_default=True,
              help="Trials the study should hold (finished, pruned or failed); a re-run tops it up.")
@click.option("--trial-budget", default="30m", show_default=True, help="Budget of each trial, as for bench run.")
@click.option("--study-name", help="Optuna study name; the same name continues a study. Default: MODEL-BUDGET.")
@click.option("--storage", envvar="BENCH_STUDY_STORAGE",
              help="Optuna storage: a journal file path (default: optuna-journal.log beside the MLflow store) or a "
              "database URL, e.g. postgresql+psycopg2://user@host/db for many machines. A URL with a password is "
              "best given as BENCH_STUDY_STORAGE (a command line is visible to everyone in ps); it is shown masked.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Worker processes on this machine; the same command elsewhere joins the study.")
@click.option("--sampler", type=click.Choice(["tpe", "random", "cmaes"]), default="tpe", show_default=True,
              help="Optuna's sampler: TPE (Bayesian), random search, or CMA-ES.")
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default="median", show_default=True,
              help="Stops hopeless trials early on the study's metric (KID below 2,000 samples) at each eval point.")
@click.option("--space", "space_file", help="Search space TOML; default experiments/studies/MODEL.toml.")
@click.option("--data", envvar="BENCH_DATA", help="Data, as for bench run (default synthetic).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Fixed spec overrides for every trial.")
@click.option("--seed", type=int, default=0, show_default=True, help="Trial n trains with seed + n.")
@click.option("--enqueue", multiple=True, metavar="KEY=VALUE",
              help="Try these settings of the space first, e.g. a known-good baseline (--enqueue lr_g=2e-4 "
              "--enqueue beta2=0.999); keys not given are drawn. Repeatable; added once per study.")
@click.option("--experiment-name", help="MLflow experiment; default study-MODEL.")
@click.option("--worker-of", hidden=True, help="Internal: run as a worker of this parent MLflow run.")
@device_option
@tracking_option
@quiet_option
def study(model, trials, trial_budget, study_name, storage, workers, sampler, pruner, space_file, data, overrides,
          seed, enqueue, experiment_name, worker_of, device, tracking_uri, quiet) -> None:
    """Tune learning rates and Adam betas with Optuna at a fixed budget per trial, pruning hopeless trials."""
    import optuna

    from benchmark import study as study_mod
    from benchmark.budget import Budget

    _setup_logging(quiet)
    if quiet:  # Optuna sets its own logger to INFO when it is first used
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    _tracking(tracking_uri)
    Budget.parse(trial_budget)
    space_file = space_file or str(Path(__file__).resolve().parents[1] / "experiments" / "studies" / f"{model}.toml")
    opts = study_mod.StudyOptions(
        model=model, trials=trials, trial_budget=trial_budget,
        study_name=study_name or f"{model}-{trial_budget}", storage=storage or study_mod.default_storage(),
        space_file=space_file, sampler=sampler, pruner=pruner, data=data, overrides=tuple(overrides), seed=seed,
        experiment_name=experiment_name, device=device, enqueue=tuple(enqueue))
    if worker_of:
        study_mod.run_worker(opts, worker_of)
        return
    summary = study_mod.run_study(opts, workers, progress=not quiet)
    click.echo(json.dumps(summary, indent=2, default=str))
    click.echo(f"open the study: {summary['dashboard']}")


# ---------------------------------------------------------------- report, compare


@cli.command()
@click.option("--experiment", "experiments", multiple=True,
              help="MLflow experiment(s) to report on, by name or by the spec file its runs came from "
              "(smoke-ddpm or experiments/smoke-ddpm.toml); repeatable. Default: every experiment with FIDs.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for index.html, tables/ (Markdown + CSV) and figures/. Default: reports/<experiment>.")
@click.option("--group", is_flag=True, help="Report metric sets made differently (N, split, weights, data) "
              "side by side instead of refusing to mix them.")
@click.option("--project-to", type=float, default=58.0, show_default=True,
              help="Device-hours at which the scaling fit projects each model's FID (labelled extrapolation).")
@click.option("--include-trials", is_flag=True,
              help="Also draw Optuna study trials as curves (by default a study shows only as its summary).")
@tracking_option
@quiet_option
def report(experiments, out, group, project_to, include_trials, tracking_uri, quiet) -> None:
    """Quality-versus-cost tables, Pareto fronts, plots and scaling fits from MLflow runs, as one HTML page.

    A row is a curve: one training spec, its seeds pooled as mean ± spread. Below 2,000 generated images
    per point KID x 1000 leads (FID is biased upwards there) and FID is shown beside it."""
    from analysis.report import build
    from benchmark.tracking import experiment_name_of

    _setup_logging(quiet)
    _tracking(tracking_uri)
    experiments = [experiment_name_of(e) for e in experiments]
    out = out or Path("reports") / ("+".join(experiments) if experiments else "all")
    index = build(out, list(experiments) or None, group, project_to, include_trials=include_trials)
    click.echo(f"report: {index}")


@cli.command()
@click.option("--models", required=True,
              help="Comma-separated families, aliases or spec files, e.g. dcgan,wgan-gp,ddpm or "
              "experiments/seed-dcgan.toml,my-dcgan.toml,ddpm (a file's name names its runs and curve).")
@click.option("--budget", required=True, help="The same budget for every run, as for bench run.")
@click.option("--data", envvar="BENCH_DATA", help="The same data for every run (default synthetic).")
@click.option("--seeds", default="1", show_default=True,
              help="Runs per model with seeds 0..N-1; tables show mean and spread. Per model: 1,dcgan=2 "
              "(two seeds of dcgan, one of the rest).")
@click.option("--set", "overrides", multiple=True, metavar="[MODEL:]KEY=VALUE",
              help="Override for every model (key=value) or one (ddpm:ch=32). Repeatable.")
@click.option("--experiment-name", help="MLflow experiment for the runs; default compare-<date-time>.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for the report (index.html, tables/, figures/). Default: reports/<experiment name>.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Runs at a time, each its own `bench run` process (logs in the report folder's logs/).")
@click.option("--print-commands", is_flag=True,
              help="Print one `bench run` line per (model, seed) for a cluster's scheduler (a SLURM array, a "
              "Kubernetes job) and the `bench report` that gathers them; run nothing.")
@device_option
@tracking_option
@quiet_option
def compare(models, budget, data, seeds, overrides, experiment_name, out, workers, print_commands, device,
            tracking_uri, quiet) -> None:
    """Train each model (and seed) on the same data, budget and evaluation, then write the report."""
    import shlex

    from benchmark import compare as compare_mod

    _setup_logging(quiet)
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise UserError("--models needs at least one model")
    if print_commands:
        runs = compare_mod.plan(names, budget, data, seeds, tuple(overrides))
        experiment_name = experiment_name or compare_mod.default_name()
        if any(spec.eval["samples"] == "auto" for _, _, spec in runs):
            click.echo("# eval.samples = auto: each job picks its N on its own device; add --set eval.samples=N "
                       "(and eval.real_samples) for one N across the models")
        for typed, extra, spec in runs:
            click.echo(shlex.join(compare_mod.run_command(typed, extra, spec, experiment_name, device)))
        click.echo(f"# then, with the same MLflow store: bench report --experiment {experiment_name}")
        return
    _tracking(tracking_uri)
    index = compare_mod.compare(names, budget, data, seeds, tuple(overrides), experiment_name, out, device, not quiet,
                                workers)
    click.echo(f"report: {index}")


# ---------------------------------------------------------------- doctor


@cli.command()
@click.option("--nproc", type=click.IntRange(1), help="Ranks per job. Default: the visible GPUs; on a CPU, 2.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the lines as Markdown, e.g. "
              "docs/results/gpu-doctor.md.")
def doctor(nproc, out) -> None:
    """Check this machine: each family briefly on every visible device (--nproc = the GPUs), a sharded
    evaluation against one process, and a kill-and-resume on another number of ranks.

    \b
    Prints img/s per family and its fraction of one device's matmul peak in the precision the family
    picked, then one PASS/FAIL line per check; exits non-zero if any failed. About 8 minutes on a GPU
    machine; on a CPU it runs tiny models on two gloo ranks (a check of the logic, not of speed)."""
    from benchmark.doctor import doctor as check

    _setup_logging(True)
    if not check(nproc, Path(out) if out else None, echo=lambda line: click.echo(line)):
        sys.exit(1)


# ---------------------------------------------------------------- calibrate, ui


@cli.command()
@click.option("--data", envvar="BENCH_DATA", default="../shared/data/celeba-sample", show_default=True,
              help="CelebA folder for the tutorial pipeline to decode.")
@click.option("--steps", type=click.IntRange(1), default=8, show_default=True, help="Timed steps per path.")
@click.option("--batch-size", type=click.IntRange(2), default=128, show_default=True,
              help="Batch of the DCGAN paths compared (ours and the tutorial's).")
@click.option("--inception", is_flag=True, help="Also time evaluation: ours vs PNGs + torch-fidelity on a folder, "
              "and Inception features in fp32 vs bf16 (speed, peak memory, and what bf16 does to FID and KID).")
@click.option("--eval-images", type=click.IntRange(16), default=64, show_default=True,
              help="With --inception: images scored by each evaluation route.")
@click.option("--inception-images", type=click.IntRange(16), default=500, show_default=True,
              help="With --inception: n of the fp32-vs-bf16 table (3 x n real faces: A, B, B blurred).")
@click.option("--families", "all_families", is_flag=True,
              help="Also every family (dcgan, wgan-gp, ddpm, ldm) at its defaults: precision, train and sample "
              "images/s, fraction of its precision's peak, peak memory; and our DDPM step vs diffusers' "
              "(pip install 'facebench[bench]').")
@click.option("--family-batch-size", type=click.IntRange(2), default=16, show_default=True,
              help="With --families: the batch every family trains and samples at.")
def calibrate(data, steps, batch_size, inception, eval_images, inception_images, all_families,
              family_batch_size) -> None:
    """Measure training images/s of our path vs the usual tutorial pipeline, and the fraction of peak FLOP/s."""
    from benchmark import calibrate as cal

    _setup_logging(False)
    cal.training(data, steps, batch_size)
    if inception:
        cal.evaluation(data, eval_images)
        cal.inception(data, inception_images)
    if all_families:
        cal.families(data, family_batch_size, min(steps, 3))
        cal.diffusers_ddpm(family_batch_size, min(steps, 3))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; 127.0.0.1 keeps the UI on this machine (0.0.0.0 opens it to the network).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port of the UI.")
@click.option("--experiment", help="Experiment whose runs table to open, by name or spec file (smoke-ddpm); "
              "default: the one with the latest run.")
@click.option("--timeout", type=click.FloatRange(1), default=300, show_default=True,
              help="Seconds to wait for the server to answer before giving up.")
@tracking_option
def ui(host, port, experiment, timeout, tracking_uri) -> None:
    """Serve the MLflow UI on this project's store (127.0.0.1 by default) and print the runs table's address
    once it answers; Ctrl-C stops it."""
    import mlflow

    from benchmark import server

    _setup_logging(True)
    _tracking(tracking_uri, check=False)  # the UI only reads: a read-only store is fine to browse
    server.ui(mlflow.get_tracking_uri(), host, port, experiment, timeout)


@cli.command("server")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; other machines need an address they reach (e.g. 0.0.0.0), given on purpose.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port to serve on.")
@click.option("--backend-store-uri", envvar="MLFLOW_BACKEND_STORE_URI", default="sqlite:///mlflow-server.db",
              show_default=True, help="Database for runs, params and metrics: SQLite for one team machine, "
              "PostgreSQL (postgresql+psycopg2://user@host/db) for many writers. One with a password is best given "
              "as MLFLOW_BACKEND_STORE_URI (a command line is visible in ps); it is shown masked.")
@click.option("--artifacts-destination", default="mlartifacts", show_default=True,
              help="Where the server stores grids, plots and checkpoints: a folder, or an object store URI "
              "(s3://bucket/path); clients reach them through the server.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Server worker processes.")
@click.option("--timeout", type=click.FloatRange(1), default=300, show_default=True,
              help="Seconds to wait for the server to answer before giving up.")
def server_cmd(host, port, backend_store_uri, artifacts_destination, workers, timeout) -> None:
    """Start a team MLflow tracking server: a database for runs and proxied artifact storage, so `bench run`,
    `study` and `compare` on other machines log there with --tracking-uri http://HOST:PORT alone."""
    from benchmark import server

    _setup_logging(True)
    server.tracking_server(backend_store_uri, artifacts_destination, host, port, workers, timeout)


def _error(line: str, code: int) -> None:
    """Print `error: line` and exit; a rank under `bench run --nproc` leaves it for the launcher instead, which
    prints one line for the whole job."""
    if os.environ.get("BENCH_LAUNCH_DIR"):
        from benchmark.distributed import report_error

        if report_error(masked(line)):
            sys.exit(code)
    click.echo(f"error: {masked(line)}", err=True)
    sys.exit(code)


def main() -> None:
    """Entry point: user mistakes are one line on stderr and exit code 2, never a traceback."""
    if "RANK" in os.environ and os.environ.get("BENCH_LAUNCHER_PID"):
        from benchmark.distributed import watch_launcher

        watch_launcher()  # a rank stops with its launcher, killed or not
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        _error(err.format_message(), err.exit_code)
    except UserError as err:
        _error(str(err), 2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BaseException as err:
        distributed = sys.modules.get("benchmark.distributed")
        if distributed is not None and distributed.lost_peer(err):
            line = (str(err).strip().splitlines() or [""])[0]
            # a consequence: the launcher names the rank that failed first
            if not os.environ.get("BENCH_LAUNCH_DIR"):
                click.echo(f"rank {distributed.world().rank} stopped: another rank is gone ({line[:200]})", err=True)
            sys.exit(1)
        train = sys.modules.get("benchmark.train")  # loaded wherever a run can have been interrupted
        if train is not None and isinstance(err, train.Interrupted):
            if int(os.environ.get("RANK", "0")) > 0:
                sys.exit(130)  # rank 0 says it
            if err.run_id is None:
                click.echo(f"interrupted ({err})", err=True)
            elif not err.recorded:  # its end waits for the server, which shows the run RUNNING until then
                click.echo(f"interrupted ({err}); the tracking server does not answer, so it shows the run as "
                           f"RUNNING until bench sync {err.run_id} delivers its end (KILLED); resume with bench run "
                           f"--resume {err.run_id}, which delivers it first", err=True)
            else:
                click.echo(f"interrupted ({err}); the run ended as KILLED, resume with bench run --resume "
                           f"{err.run_id}", err=True)
            sys.exit(130)
        if os.environ.get("BENCH_LAUNCH_DIR") and "RANK" in os.environ:
            import traceback

            # an unexpected error on a rank: the launcher's line says it, the traceback stays for the curious
            traceback.print_exc()
            _error(f"rank {os.environ['RANK']}: {type(err).__name__}: {err}", 1)
        raise


if __name__ == "__main__":
    main()
