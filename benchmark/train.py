"""The one budget-driven training loop: steps until the budget is spent, evaluates on a log-spaced
schedule, checkpoints atomically and resumes exactly where a killed run stopped."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmark import checkpoint, distributed
from benchmark.budget import Meter
from benchmark.data import Prepared
from benchmark.errors import Diverged
from benchmark.metrics import SMALL_N, Evaluator, draw, headline, provenance, sample_for_eval, sampling_bn, score
from benchmark.models.common import rng_untouched
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


def stage_costs(meter: Meter) -> dict[str, float]:
    """Per-stage cost of multi-stage families (ldm): images, device-hours and PFLOPs of each stage."""
    out = {}
    for key, value in meter.extra.items():
        stage, _, axis = key.partition("_")
        if axis == "device_seconds":
            out[f"{stage}_device_hours"] = value / 3600
        elif axis == "flops":
            out[f"{stage}_pflops"] = value / 1e15
        else:
            out[key] = value
    return out


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; the run checkpointed (where it had begun training) and ends as KILLED. A
    BaseException, like KeyboardInterrupt: raised from a signal handler, it must not be swallowed by code
    that catches Exception (logging does, when the signal lands while it writes)."""

    run_id: str | None = None  # set by the runner, for the message that says how to resume


def _to_float(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).float().div_(127.5).sub_(1.0)


def save_grid(images: torch.Tensor, path) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float() / 255.0, path, nrow=int(np.ceil(np.sqrt(len(images)))), padding=2)


def clock(meter: Meter, budget, fraction: float) -> str:
    """Training time spent (of a time budget), what is left of it at this pace, and evaluation time apart."""
    spent = tqdm.format_interval(meter.device_seconds)
    limit = f"/{tqdm.format_interval(budget.device_seconds)}" if budget.device_seconds else ""
    devices = f" device time ({meter.devices} devices)" if meter.devices > 1 else ""  # K x the wall clock
    left = meter.device_seconds * (1 - fraction) / fraction if fraction > 0 else 0.0
    return (f"train {spent}{limit}{devices}, ~{tqdm.format_interval(left)} left, "
            f"eval {tqdm.format_interval(meter.eval_seconds)}")


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
    state = checkpoint.load_latest(ckpt_path)
    if state is None and spent:  # --restart: the run starts over, charged with what it had spent
        meter.charge(None, 0, spent["seconds"], spent["flops"])
    if state is not None:
        model.load_state_dict(state["model"])
        meter.load_state_dict(state["meter"])
        meter.devices = w.size  # a checkpoint from K ranks resumes on any number of them
        loop = LoopState(**state["loop"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and "cuda_rng" in state:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("resumed from %s at %d images (%.2f epochs)", ckpt_path, meter.images_seen, meter.epochs)

    fractions = eval_fractions(spec.eval["points"])
    cap = budget.image_cap(len(data))
    evaluator: Evaluator | None = None
    real = None  # the reference features, loaded with the evaluator at the first eval point

    def save_checkpoint() -> None:
        if not w.main:  # rank 0 writes the one checkpoint; every rank holds the same state
            return
        start = time.perf_counter()
        checkpoint.save(ckpt_path, {
            "model": model.state_dict(),
            "meter": meter.state_dict(),
            "loop": loop.__dict__,
            "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
            "spec": spec.to_dict(),
        })
        tracker.publish_checkpoint()  # a remote store holds it too: the run resumes on any machine
        meter.eval_seconds += time.perf_counter() - start  # not charged to the training budget

    def evaluate() -> None:
        # Building the Inception network draws its random init from the global RNG, which dropout in
        # training also reads: evaluation must leave it as it was, or evaluating would change training.
        if w.main:  # rank 0 evaluates; the others wait for it at the barrier
            with rng_untouched(), distributed.alone():
                _evaluate()
        distributed.barrier()

    def _evaluate() -> None:
        nonlocal evaluator, real
        start = time.perf_counter()
        step = meter.images_seen
        if hasattr(model, "sampling_generator"):  # standing BatchNorm statistics: once per checkpoint, not per image
            model.sampling_generator()
        fixed = torch.Generator().manual_seed(spec.seed + 12345)
        grid_start = time.perf_counter()
        (grid,) = draw(model, spec.eval["grid"], fixed, spec.eval["grid"], progress, desc="grid")
        grid_seconds = time.perf_counter() - grid_start
        rel = f"samples/grid_{step:010d}.png"
        save_grid(grid, tracker.dir / rel)
        tracker.publish(rel)
        # MLflow's image cards step through a run's grids; the step is the eval point's index (the same
        # fraction of the budget in every run), so runs compared at one budget line up in the chart view.
        # "samples/" makes it a section of its own, above the metric charts.
        tracker.image("samples/grid", tracker.dir / rel, loop.next_eval - 1)
        values = {"images_seen": step, "epochs": meter.epochs, "device_hours": meter.device_hours,
                  "wall_hours": meter.wall_seconds / 3600,
                  "pflops": meter.pflops, "steps": meter.steps, **stage_costs(meter),
                  "sample_nfe": model.sample_nfe, "sample_gflops_per_image": model.flops_per_sample() / 1e9,
                  "sample_seconds_per_image": grid_seconds / max(1, len(grid))}
        n = spec.eval["samples"]
        if n > 0:
            if evaluator is None:
                evaluator = Evaluator(batch_size=spec.eval["batch_size"], progress=progress,
                                      precision=spec.eval["precision"])
                real, cached = evaluator.real_features(data, spec.eval["real_samples"])
                tracker.tags({**provenance(evaluator, n, len(real.pool), f"{data.name}:{data.split}",
                                           sampling_bn(model)),
                              "metrics.real_stats": "reused from cache" if cached else "computed"})
                if n < SMALL_N:
                    log.warning("eval.samples=%d: below %d samples FID is biased upwards, so KID leads; neither "
                                "is comparable with papers' 50,000-sample FIDs", n, SMALL_N)
            batches, sample_seconds = sample_for_eval(model, n, spec.seed, spec.eval["batch_size"], progress)
            fake = evaluator.features(batches, total=n, desc="fid")
            values.update(score(fake, real, evaluator.weights))
            values.update(eval_samples=n, sample_seconds_per_image=sample_seconds / n)
            extra_sets = getattr(model, "extra_eval_sets", None)
            if extra_sets is not None:  # e.g. the ldm's reconstructions: recon_fid bounds its samples
                index = np.sort(np.random.default_rng(1).permutation(len(data))[:n])
                for name, images in extra_sets(torch.from_numpy(np.asarray(data.images[index]))).items():
                    scored = score(evaluator.features(images, desc=name), real, evaluator.weights)
                    values.update({f"{name}_{k}": v for k, v in scored.items() if k in ("fid", "kid_mean")})
        meter.eval_seconds += time.perf_counter() - start
        values["eval_seconds"] = meter.eval_seconds
        tracker.metrics(values, step)
        tracker.flush()
        if "fid" in values:
            log.info("eval at %d images (%.3g epochs): %s", step, meter.epochs, headline(values, n))
        if on_eval is not None:  # the point's index: the same fraction of the budget in every run of a spec
            on_eval(values, meter, loop.next_eval - 1)

    stop: list[int] = []

    def on_signal(signum, _frame) -> None:
        stop.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    # The bar's clock is training time against the budget; evaluation and checkpoints are shown apart
    # (they are not charged), so a 2m budget reads 2 minutes however long its eval points take.
    bar = tqdm(total=1000, desc=f"{model.name} {budget.text}", unit="‰", disable=not progress,
               initial=int(1000 * budget.fraction_spent(meter)), bar_format="{l_bar}{bar}|")
    last_ckpt = time.monotonic()
    model_train = getattr(model, "train", None)
    if callable(model_train):
        model_train()
    try:
        while not budget.spent(meter):
            n = spec.batch_size if cap is None else min(spec.batch_size, cap - meter.images_seen)
            n -= n % w.size  # K ranks take equal slices: a cut last batch loses its remainder
            if n == 0:
                break
            start = time.perf_counter()
            idx = batch_indices(meter.images_seen, n, len(data), spec.seed)
            mine = idx[w.rank * (n // w.size) : (w.rank + 1) * (n // w.size)]  # this rank's slice of the batch
            batch = _to_float(np.asarray(data.images[mine]))
            losses = model.train_step(batch, indices=mine, fraction=budget.fraction_spent(meter), data=data)
            seconds = time.perf_counter() - start
            seconds, stopping, losses = distributed.step_consensus(seconds, bool(stop), losses)
            if stopping and not stop:
                stop.append(signal.SIGTERM)  # another rank was told to stop: all stop at this step
            bad = {k: v for k, v in losses.items() if not np.isfinite(v)}
            if bad:
                raise Diverged(f"training diverged: {', '.join(f'{k}={v}' for k, v in bad.items())} "
                               f"at step {meter.steps + 1} ({meter.images_seen} images)")
            flops = n * model.flops_per_train_image()
            meter.add_step(n, seconds, flops / n)
            meter.add_to_stage(getattr(model, "stage", None), n, seconds * meter.devices, flops)
            charges = getattr(model, "charges", [])  # one-off work (ldm: encoding, a reused autoencoder)
            for charge in charges:
                meter.charge(**charge)
            charges.clear()

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
            bar.bar_format = "{l_bar}{bar}| " + status.replace("{", "{{").replace("}", "}}")
            bar.refresh()
            if loop.next_eval < len(fractions) and fraction >= fractions[loop.next_eval] - 1e-12:
                while loop.next_eval < len(fractions) and fraction >= fractions[loop.next_eval] - 1e-12:
                    loop.next_eval += 1
                evaluate()
                save_checkpoint()
                last_ckpt = time.monotonic()
            elif time.monotonic() - last_ckpt >= spec.checkpoint_minutes * 60:
                save_checkpoint()
                last_ckpt = time.monotonic()
            if stop:
                save_checkpoint()
                raise Interrupted(signal.Signals(stop[0]).name)
        if loop.epoch_counts:  # the last, partial epoch still gets its mean in the seed's per-epoch plot
            tracker.metrics(epoch_means(loop), loop.last_epoch + 1)
        if loop.next_eval < len(fractions):  # a time budget can end between points
            loop.next_eval = len(fractions)
            evaluate()
            save_checkpoint()
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        tracker.flush()
    return meter
