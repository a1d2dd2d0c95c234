"""One tracked run: spec -> prepared data -> model family -> training loop -> MLflow, new or resumed."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import torch
from mlflow.exceptions import MlflowException

from benchmark import checkpoint, distributed, eval_size
from benchmark import data as data_mod
from benchmark.atomic import write_text
from benchmark.device import pick_device, precision_reason, resolve_precision
from benchmark.errors import UserError
from benchmark.loss_plot import plot_losses
from benchmark.metrics import headline, leading_metric
from benchmark.models import family
from benchmark.outbox import unreachable
from benchmark.runs_view import has_view, run_url, runs_table_url, save_view
from benchmark.saved_run import open_run
from benchmark.spec import RunSpec, build_spec
from benchmark.tracking import Silent, Tracker, answering_ui, environment_tags
from benchmark.train import Interrupted, train

log = logging.getLogger(__name__)


def prepare_data(spec: RunSpec, progress: bool = True) -> data_mod.Prepared:
    if spec.data == "synthetic":
        log.info("using the built-in synthetic faces (offline, no download); give --data or BENCH_DATA for CelebA")
    return data_mod.prepare(spec.data, spec.split, spec.resolution, spec.synthetic_images, progress)


def start(spec: RunSpec, device_name: str = "auto", experiment_name: str | None = None,
          run_name: str | None = None, progress: bool = True, extra_tags: dict | None = None,
          on_eval=None, on_tracker=None) -> str:
    """Start a new run of spec and train it to its budget; returns the MLflow run id.

    extra_tags, on_eval and on_tracker let a study nest the run under its parent and prune it."""
    device = pick_device(distributed.local_device(device_name))
    w = distributed.init(device)
    if not w.main:
        return _follow(device)
    cls, _ = family(spec.model)
    check_world(spec, w)
    prepared = prepare_data(spec, progress)
    precision = resolve_precision(spec.precision, device)
    log.info("precision %s", precision_reason(spec.precision, precision, device))
    spec, sized = eval_size.resolve(spec, device, precision, prepared)
    if sized:
        log.info("%s", sized)
    tags = {
        **environment_tags(device),
        "budget": spec.budget,
        "dataset": prepared.name,
        "dataset_fingerprint": prepared.fingerprint,
        "dataset_images": len(prepared),
        "dataset_skipped": prepared.skipped,
        "dataset_split": prepared.split,
        "synthetic_data": str(prepared.name == "synthetic").lower(),
        "precision": precision,
        **({"eval.samples_chosen": sized} if sized else {}),
        "spec_hash": spec.hash(),
        **({"autoencoder_reused": spec.autoencoder_run} if spec.values.get("autoencoder_run") else {}),
        "mlflow.note.content": description(spec, prepared),
        "world_size": w.size,
        **({"batchnorm_sync": f"global batch over {w.size} ranks" if spec.sync_batchnorm else "each rank's slice"}
           if w.size > 1 and "sync_batchnorm" in spec.values else {}),
        **(extra_tags or {}),
    }
    with terminate_raises():
        tracker = Tracker.create(experiment_name or spec.model, run_name or default_run_name(spec, extra_tags),
                                 spec.flat_params(), tags)
        with ended(tracker), tracker.hold():
            tracker.dataset(prepared.name, prepared.fingerprint, prepared.source, prepared.split, len(prepared),
                            prepared.resolution)
            write_text(tracker.dir / "spec.toml", spec.to_toml())
            tracker.publish("spec.toml")
            if spec.eval["samples"]:
                save_view(tracker.client, tracker.experiment_id,
                          leading_metric(spec.eval["samples"], spec.eval["real_samples"]))
            ui, exp = answering_ui(), tracker.experiment_id
            log.info("MLflow run %s; %s", tracker.run_id,
                     f"{run_url(ui, exp, tracker.run_id)}; runs table: "
                     f"{runs_table_url(ui, exp, has_view(tracker.client, exp))}" if ui else
                     "run `bench ui` to open its runs table")
            _lead(tracker, spec, precision)
            if on_tracker is not None:
                on_tracker(tracker)
            _train_tracked(spec, cls, device, precision, prepared, tracker, progress, on_eval)
    tracker.tidy()
    return tracker.run_id


def description(spec: RunSpec, prepared: data_mod.Prepared, result: str = "") -> str:
    """The run's MLflow description: what it trained on, under which budget, and (once scored) its result."""
    text = (f"{spec.model} on {prepared.name} ({prepared.split}, {len(prepared):,} images at "
            f"{prepared.resolution}x{prepared.resolution}), budget {spec.budget}, seed {spec.seed}.")
    return f"{text}\n\n{result}" if result else text


def default_run_name(spec: RunSpec, extra_tags: dict | None = None) -> str:
    """A name a person can read in the MLflow UI: model (or its alias), budget, seed: dcgan-2m-s0."""
    typed = (extra_tags or {}).get("model_alias", spec.model)
    return f"{typed}-{spec.budget.replace('|', '+')}-s{spec.seed}"


def check_world(spec: RunSpec, w: distributed.World) -> None:
    if w.size == 1:
        return
    if spec.batch_size % w.size:
        raise UserError(f"batch_size {spec.batch_size} does not split over {w.size} ranks; make it a multiple")


def _lead(tracker: Tracker, spec: RunSpec, precision: str, spent: dict | None = None) -> None:
    """Rank 0 tells the other ranks what to train (they follow silently) and `bench run --nproc` which run
    it is, for the line it prints if a rank fails."""
    distributed.note_run(tracker.run_id)
    distributed.broadcast({"run_id": tracker.run_id, "spec": spec.to_dict(), "folder": str(tracker.dir),
                           "precision": precision, "spent": spent})


def _follow(device: torch.device) -> str:
    """A rank other than 0: train the run rank 0 created or resumed, with what it broadcast; rank 0 logs."""
    lead = distributed.broadcast(None)
    cls, defaults = family(lead["spec"]["model"])
    spec = build_spec(lead["spec"]["model"], defaults, lead["spec"])
    prepared = prepare_data(spec, False)
    with terminate_raises():
        _train_tracked(spec, cls, device, lead["precision"], prepared, Silent(lead["run_id"], Path(lead["folder"])),
                       False, spent=lead["spent"])
    return lead["run_id"]


def resume(run_id: str, device_name: str = "auto", progress: bool = True, restart: bool = False) -> str:
    """Continue a killed or failed run from its last checkpoint, into the same MLflow run. With restart, a run
    without a checkpoint starts over in the same MLflow run, charged with the cost it had logged. Any number
    of ranks resumes any checkpoint."""
    device = pick_device(distributed.local_device(device_name))
    w = distributed.init(device)
    if not w.main:
        return _follow(device)
    saved = open_run(run_id)
    tracker, spec, cls = saved.tracker, saved.spec, saved.family
    check_world(spec, w)
    with terminate_raises(), tracker.hold():
        run = tracker.client.get_run(run_id)
        if run.info.status == "FINISHED":
            raise UserError(f"run {run_id} already finished its budget; nothing to resume")
        ckpt = saved.checkpoint_path()
        spent = None
        if not checkpoint.exists(ckpt):
            if not restart:
                raise UserError(f"run {run_id} has no checkpoint ({ckpt}): nothing to resume from. "
                                f"bench run --resume {run_id} --restart starts it over in the same MLflow run, "
                                "charging what it had spent")
            logged = run.data.metrics
            spent = {"seconds": 3600 * logged.get("device_hours", 0.0), "flops": 1e15 * logged.get("pflops", 0.0)}
            log.warning("run %s has no checkpoint: starting it over, charged %.4f device-hours already spent",
                        run_id, spent["seconds"] / 3600)
        elif restart:
            raise UserError(f"run {run_id} has a checkpoint: resume it without --restart")
        else:
            tracker.skip_stored()  # the steps replayed from the checkpoint on were logged once already
        prepared = prepare_data(spec, progress)
        if prepared.fingerprint != run.data.tags.get("dataset_fingerprint"):
            raise UserError(f"the data of run {run_id} changed since it started (fingerprint differs); not resuming")
        precision = run.data.tags.get("precision") or resolve_precision(spec.precision, device)
        tracker.mark_resumed()
        if restart:
            tracker.tags({"restarted": "true"})
        tracker.tags({"world_size": w.size})
        _lead(tracker, spec, precision, spent)
        with ended(tracker):
            _train_tracked(spec, cls, device, precision, prepared, tracker, progress, spent=spent)
    tracker.tidy()
    return run_id


@contextmanager
def terminate_raises() -> Iterator[None]:
    """SIGTERM outside the training loop (preparing, building, loading) raises Interrupted, so the run still
    ends with a status and a reason; inside the loop, train() defers it to a step boundary and checkpoints."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def ended(tracker: Tracker) -> Iterator[None]:
    """Every way out of a run ends it in MLflow with a status and, unless it finished, a reason."""
    try:
        yield
    except optuna.TrialPruned as err:
        tracker.tags({"optuna.state": "PRUNED"})
        tracker.end("FINISHED", None)
        log.info("pruned: %s", err)
        raise
    except (Interrupted, KeyboardInterrupt) as err:
        interrupted = err if isinstance(err, Interrupted) else Interrupted("SIGINT")
        interrupted.run_id = tracker.run_id
        interrupted.recorded = tracker.end("KILLED", f"interrupted by {interrupted}; resume with: bench run --resume "
                                                     f"{tracker.run_id}")
        raise interrupted from None
    except UserError as err:
        tracker.end("FAILED", str(err))
        raise
    except BaseException as err:
        tracker.end("FAILED", f"{type(err).__name__}: {err}")
        raise


def reused_autoencoder(run_id: str) -> tuple[dict, dict]:
    """An earlier ldm run's autoencoder weights and what training it cost (its autoencoder_* metrics)."""
    earlier = open_run(run_id)
    try:
        state = earlier.latest()["model"]
    except UserError as err:
        raise UserError(f"autoencoder_run: {err}") from None
    if "ae" not in state:
        raise UserError(f"autoencoder_run: run {run_id} is not an ldm run")
    metrics = earlier.tracker.client.get_run(run_id).data.metrics
    cost = {"images": int(metrics.get("autoencoder_images", 0)),
            "seconds": 3600 * metrics.get("autoencoder_device_hours", 0.0),
            "flops": 1e15 * metrics.get("autoencoder_pflops", 0.0)}
    return state["ae"], cost


def _train_tracked(spec: RunSpec, cls: type, device: torch.device, precision: str,
                   prepared: data_mod.Prepared, tracker: Tracker, progress: bool, on_eval=None,
                   spent: dict[str, float] | None = None) -> None:
    if spec.seed is not None:
        torch.manual_seed(spec.seed)
    model = cls(spec, device, precision)
    if spec.values.get("autoencoder_run"):  # rank 0 fetches it and hands it to the others
        reused = None
        if distributed.world().main:
            reused = reused_autoencoder(spec.autoencoder_run)
        model.reuse_autoencoder(*distributed.broadcast(reused), origin=f"run {spec.autoencoder_run}")
    with tracker.system_metrics():
        meter = train(spec, model, prepared, tracker, progress, on_eval, spent)
    if not distributed.world().main:
        return
    tracker.tags({"final_checkpoint": checkpoint.LAST})  # what it spent: tagged by train() on every way out
    try:
        _summarize(spec, prepared, precision, meter, tracker)
    except MlflowException as err:  # trained and checkpointed: an absent server must not fail the run
        if not unreachable(err):
            raise
        log.warning("tracking server unreachable at the end: no loss plot or description for run %s", tracker.run_id)
        tracker.end("FINISHED")


def _summarize(spec: RunSpec, prepared: data_mod.Prepared, precision: str, meter, tracker: Tracker) -> None:
    """The seed's loss plots, the run's description with its result, FINISHED, and the end line."""
    losses = ("loss_d", "loss_g", "loss", "recon_l1")  # recon_l1: the ldm's autoencoder, per pixel
    per_iteration = {k: tracker.history(k) for k in losses}
    # the seed's mean loss per epoch, of whole epochs: a 0.46-epoch run's partial mean is no epoch's point
    per_epoch = {k: [(e, v) for e, v in tracker.history(f"{k}_epoch") if e <= meter.epochs] for k in losses}
    plot_losses(per_iteration, per_epoch, tracker.dir / "plots/losses.png", title=f"{spec.model} - {spec.budget}")
    tracker.publish("plots/losses.png")
    run = tracker.client.get_run(tracker.run_id)
    final, tags = run.data.metrics, run.data.tags
    cost = f"{meter.images_seen:,} images ({meter.epochs:.2f} epochs), {meter.device_hours:.4f} device-hours"
    over = overshoot(spec, meter)
    real = int(tags["metrics.real_samples"]) if "metrics.real_samples" in tags else None
    scored = headline(final, int(final["eval_samples"]), real) if "eval_samples" in final else ""
    made = (f"Scored on Inception pool3 features ({tags.get('metrics.weights_origin', '?')}, "
            f"{tags.get('metrics.inception_precision', 'fp32')}), "
            f"{tags.get('metrics.eval_samples')} generated vs {tags.get('metrics.real_samples')} real images of "
            f"{tags.get('metrics.reference')}, BatchNorm statistics {tags.get('metrics.bn')}. ") if scored else ""
    result = (f"Result: {scored or 'no metrics (eval.samples = 0)'}, after {cost}, {meter.pflops:.4g} PFLOPs"
              f"{'; ' + over if over else ''}.\n\n{made}Precision {precision} on {tags.get('device', '?')}.")
    tracker.describe(description(spec, prepared, result))
    tracker.end("FINISHED")
    log.info("finished: %s, %.4f PFLOPs%s%s", cost, meter.pflops, f" ({over})" if over else "",
             f"; {scored}" if scored else "")


def overshoot(spec: RunSpec, meter) -> str:
    """Why a time budget's device-hours exceed it: a step is never cut, so the run stops after the step that
    crosses the limit (and one-off charges such as ldm's encoding can land in one step)."""
    limit = spec.budget_obj.device_seconds
    if not limit or meter.device_seconds <= limit:
        return ""
    return (f"{meter.device_seconds - limit:.3g} s past the {limit:g} s budget: time budgets stop after the step "
            "that crosses them")
