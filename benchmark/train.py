"""The one budget-driven training loop: steps until the budget is spent, evaluates on a log-spaced
schedule, checkpoints atomically and resumes exactly where a killed run stopped. On K ranks every rank runs
it; they agree at two points a step (before its clock starts, after its work), so that rank 0's checkpoints,
evaluations and uploads are never charged as training, and an exception on any rank stops all of them."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmark import checkpoint, distributed
from benchmark.budget import Meter
from benchmark.data import Prepared
from benchmark.device import rng_state, set_rng_state
from benchmark.errors import Diverged
from benchmark.eval_point import EvalPoints
from benchmark.spec import RunSpec
from benchmark.tracking import Tracker

log = logging.getLogger(__name__)


def eval_fractions(points: int) -> list[float]:
    """Log-spaced fractions of the budget, doubling up to 1: 4 points -> 1/8, 1/4, 1/2, 1."""
    points = max(1, points)
    return [2.0 ** -(points - 1 - i) for i in range(points)]


def batch_indices(images_seen: int, n: int, dataset_size: int, seed: int) -> np.ndarray:
    """The next n data indices. The order is a fixed function of (seed, epoch), so the position in the
    stream is just images_seen: a resumed run reads exactly the batches the killed one would have."""
    out = []
    while n > 0:
        epoch, offset = divmod(images_seen, dataset_size)
        perm = np.random.default_rng([seed, epoch]).permutation(dataset_size)
        take = perm[offset : offset + n]
        out.append(take)
        n -= len(take)
        images_seen += len(take)
    return np.concatenate(out)


@dataclass
class LoopState:
    next_eval: int = 0
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_counts: dict[str, int] = field(default_factory=dict)  # per key: some losses come every n steps
    last_epoch: int = 0


def epoch_means(loop: LoopState) -> dict[str, float]:
    """The seed's "mean loss per epoch", each loss over the steps that reported it."""
    return {f"{k}_epoch": v / loop.epoch_counts[k] for k, v in loop.epoch_sums.items()}


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; the run checkpointed (where it had begun training) and ends as KILLED. A
    BaseException, like KeyboardInterrupt: raised from a signal handler, it must not be swallowed by code
    that catches Exception (logging does, when the signal lands while it writes)."""

    run_id: str | None = None  # set by the runner, for the message that says how to resume
    recorded: bool = True  # False while its end waits for an unreachable tracking server


def _to_float(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).float().div_(127.5).sub_(1.0)


WIDE = 180  # columns that fit the bar and its figures (clock, img/s, losses) on one line


def clock(meter: Meter, budget, fraction: float) -> str:
    """Training time spent (of a time budget), what is left of it at this pace, and evaluation time apart."""
    spent = tqdm.format_interval(meter.device_seconds)
    limit = f"/{tqdm.format_interval(budget.device_seconds)}" if budget.device_seconds else ""
    devices = f" device time ({meter.devices} devices)" if meter.devices > 1 else ""  # K x the wall clock
    left = meter.device_seconds * (1 - fraction) / fraction if fraction > 0 else 0.0
    return (f"train {spent}{limit}{devices}, ~{tqdm.format_interval(left)} left, "
            f"eval {tqdm.format_interval(meter.eval_seconds)}")



def restore(path: Path, model: Any, meter: Meter, loop: LoopState) -> bool:
    """Resume from the run's last checkpoint (or the one before it), if it has one. Rank 0 reads it, local or
    fetched from the run's store, and hands its state to the other ranks: no rank reads rank 0's paths, so
    ranks on other machines resume with it."""
    w = distributed.world()
    state: dict | None = None

    def load() -> None:
        nonlocal state
        state = checkpoint.load_latest(path)

    error = distributed.attempt(load) if w.main else None
    state = distributed.settle(state, error)[0]  # rank 0's state on every rank, or every rank stops with its error
    if state is None:
        return False
    model.load_state_dict(state["model"])
    meter.load_state_dict(state["meter"])
    meter.devices = w.size  # a checkpoint from K ranks resumes on any number of them
    loop.__dict__.update(state["loop"])
    set_rng_state(state)
    if w.main:
        log.info("resumed from %s at %d images (%.2f epochs)", path, meter.images_seen, meter.epochs)
    return True


def injected_fault(rank: int, step: int) -> bool:
    """BENCH_INJECT_NAN=RANK@STEP makes that rank's losses NaN at that step, as a bad slice of data would: how
    `bench doctor` and the tests check that a failure on one rank stops the whole job, in one line."""
    where = os.environ.get("BENCH_INJECT_NAN", "")
    return bool(where) and where == f"{rank}@{step}"


def diverged(losses: dict[str, float], meter: Meter) -> Diverged | None:
    """This rank's slice gave non-finite losses: the step's consensus stops every rank with it."""
    w = distributed.world()
    if injected_fault(w.rank, meter.steps + 1):
        losses = {k: float("nan") for k in losses}
    bad = {k: v for k, v in losses.items() if not np.isfinite(v)}
    if not bad:
        return None
    where = f" on rank {w.rank}" if w.size > 1 else ""
    return Diverged(f"training diverged{where}: {', '.join(f'{k}={v}' for k, v in bad.items())} "
                    f"at step {meter.steps + 1} ({meter.images_seen} images)")


def train(spec: RunSpec, model: Any, data: Prepared, tracker: Tracker, progress: bool = True,
          on_eval: Callable[[dict[str, float], Meter, int], None] | None = None,
          spent: dict[str, float] | None = None) -> Meter:
    """Train `model` (a family instance) on `data` until the spec's budget is spent.

    on_eval sees each evaluation's values and the eval point's index (a study reports them to its pruner
    and may raise to stop). spent: device-seconds and FLOPs a restarted run had already used."""
    budget = spec.budget_obj
    w = distributed.world()
    meter = Meter(dataset_size=len(data), devices=w.size)
    loop = LoopState()
    ckpt_path = tracker.dir / checkpoint.LAST
    if not restore(ckpt_path, model, meter, loop) and spent:  # --restart: charged with what it had spent
        meter.charge(None, 0, spent["seconds"], spent["flops"])
    fractions = eval_fractions(spec.eval["points"])
    cap = budget.image_cap(len(data))
    evaluate = EvalPoints(spec, model, data, tracker, progress, on_eval)

    def save_checkpoint() -> None:
        if not w.main:  # rank 0 writes the one checkpoint; every rank holds the same state
            return
        start = time.perf_counter()
        checkpoint.save(ckpt_path, {"model": model.state_dict(), "meter": meter.state_dict(),
                                    "loop": loop.__dict__, **rng_state(), "spec": spec.to_dict()})
        tracker.publish_checkpoint()  # a remote store holds it too: the run resumes on any machine
        meter.checkpoint_seconds += time.perf_counter() - start  # not charged to the training budget

    stop: list[int] = []

    def on_signal(signum, _frame) -> None:
        stop.append(signum)

    def record(losses: dict[str, float]) -> None:
        """The step's bookkeeping: the seed's per-iteration and per-epoch losses (rank 0 logs them), the bar."""
        for key, value in losses.items():
            loop.epoch_sums[key] = loop.epoch_sums.get(key, 0.0) + value
            loop.epoch_counts[key] = loop.epoch_counts.get(key, 0) + 1
        if meter.steps % spec.log_every == 0 or meter.steps == 1 or budget.spent(meter):
            tracker.metrics(losses, meter.images_seen)
        if int(meter.epochs) > loop.last_epoch:  # the seed's "mean loss per epoch"
            loop.last_epoch = int(meter.epochs)
            tracker.metrics(epoch_means(loop), loop.last_epoch)
            loop.epoch_sums, loop.epoch_counts = {}, {}
        tracker.maybe_flush()
        fraction = budget.fraction_spent(meter)
        bar.n = int(1000 * fraction)
        status = (f"{clock(meter, budget, fraction)} | {meter.images_seen / max(meter.device_seconds, 1e-9):.1f} "
                  "img/s " + " ".join(f"{k}={v:.3f}" for k, v in losses.items()))
        if figures.disable:
            bar.bar_format = "{l_bar}{bar}| " + status.replace("{", "{{").replace("}", "}}")
        else:  # a narrow terminal: the figures on their own line under the bar, which keeps its width
            figures.set_description_str(status, refresh=False)
            figures.refresh()
        bar.refresh()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    # The bar's clock is training time against the budget; evaluation and checkpoints are shown apart
    # (they are not charged), so a 2m budget reads 2 minutes however long its eval points take.
    bar = tqdm(total=1000, desc=f"{model.name} {budget.text}", unit="‰", disable=not progress,
               initial=int(1000 * budget.fraction_spent(meter)), bar_format="{l_bar}{bar}|")
    figures = tqdm(total=0, bar_format="  {desc}", leave=False,
                   disable=not progress or shutil.get_terminal_size().columns >= WIDE)
    last_ckpt = time.monotonic()
    model_train = getattr(model, "train", None)
    if callable(model_train):
        model_train()
    error: BaseException | None = None  # what this rank met since the ranks last agreed
    try:
        while True:
            # The ranks start each step's clock together, once rank 0's checkpoint, evaluation or upload is
            # done (it is not training), and all stop here if any of them raised since the last step.
            distributed.settle(error=error)
            error = None
            if budget.spent(meter):
                break
            n = spec.batch_size if cap is None else min(spec.batch_size, cap - meter.images_seen)
            n -= n % w.size  # K ranks take equal slices: a cut last batch loses its remainder
            if n == 0:
                break
            start = time.perf_counter()
            idx = batch_indices(meter.images_seen, n, len(data), spec.seed)
            mine = idx[w.rank * (n // w.size) : (w.rank + 1) * (n // w.size)]  # this rank's slice of the batch
            batch = _to_float(np.asarray(data.images[mine]))
            # the step's own collectives (gradients, BatchNorm) are inside; an exception here ends this process,
            # and the launcher stops the others (they wait in a collective this rank never reaches)
            try:
                losses = model.train_step(batch, indices=mine, fraction=budget.fraction_spent(meter), data=data)
                step = distributed.step_consensus(time.perf_counter() - start, bool(stop), losses,
                                                  diverged(losses, meter))
            except (Diverged, distributed.PeerFailed):  # the step ran all the same: its time counts in what was spent
                meter.add_step(n, time.perf_counter() - start, 0.0)  # (its FLOPs would need the broken nets)
                raise
            if step.stopping and not stop:
                stop.append(signal.SIGTERM)  # another rank was told to stop: all stop at this step
            flops = n * model.flops_per_train_image()
            meter.add_step(n, step.seconds, flops / n)
            meter.add_to_stage(getattr(model, "stage", None), n, step.seconds * meter.devices, flops)
            charges = getattr(model, "charges", [])  # one-off work (ldm: encoding, a reused autoencoder)
            for charge in charges:
                meter.charge(**charge)
            charges.clear()
            error = distributed.attempt(record, step.losses)

            fraction = budget.fraction_spent(meter)
            if loop.next_eval < len(fractions) and fraction >= fractions[loop.next_eval] - 1e-12:
                while loop.next_eval < len(fractions) and fraction >= fractions[loop.next_eval] - 1e-12:
                    loop.next_eval += 1
                distributed.settle(error=error)  # every rank evaluates: none may have failed on its way here
                error = evaluate(meter, loop.next_eval - 1) or distributed.attempt(save_checkpoint)
                last_ckpt = time.monotonic()
            elif time.monotonic() - last_ckpt >= spec.checkpoint_minutes * 60:
                error = error or distributed.attempt(save_checkpoint)
                last_ckpt = time.monotonic()
            if stop:
                distributed.settle(error=error or distributed.attempt(save_checkpoint))
                raise Interrupted(signal.Signals(stop[0]).name)
        if loop.epoch_counts:  # the last, partial epoch still gets its mean in the seed's per-epoch plot
            error = distributed.attempt(tracker.metrics, epoch_means(loop), loop.last_epoch + 1)
        if loop.next_eval < len(fractions):  # a time budget can end between points
            loop.next_eval = len(fractions)
            distributed.settle(error=error)
            error = evaluate(meter, len(fractions) - 1) or distributed.attempt(save_checkpoint)
        distributed.settle(error=error)
    finally:
        figures.close()
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # what the run spent, on every way out (a failed study trial counts in its tuning cost); tags, not
        # metric rows: set again by a resume, never doubled
        tracker.tags({"device_hours": f"{meter.device_hours:.6g}", "pflops": f"{meter.pflops:.6g}",
                      "images_seen": meter.images_seen})
        tracker.flush()
    return meter
