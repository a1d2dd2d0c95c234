"""eval.samples = auto: the largest N the run's budget affords for its evaluations, from this device's
measured sampling and Inception throughput, and eval.real_samples = auto following it. A 2-minute CPU run
gets a small N and says KID leads; a 58-hour GPU run gets 10,000 or more."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import torch

from benchmark.budget import Budget
from benchmark.data import Prepared, prepare
from benchmark.device import pick_device, resolve_precision
from benchmark.metrics import Evaluator, sample_for_eval
from benchmark.models import family
from benchmark.spec import RunSpec

log = logging.getLogger(__name__)

SIZES = (64, 128, 256, 500, 1_000, 2_000, 5_000, 10_000, 50_000)
SHARE = 0.10  # of the budget's device time that evaluations may take
REAL_FLOOR = 256  # a reference smaller than this makes KID's estimate noisy at any N
PROBE = 4  # images sampled and scored to measure the device (a diffusion sampler: 50 passes each)


def real_samples(n: int, split_size: int) -> int:
    """eval.real_samples = auto: as many real images as generated ones (at least REAL_FLOOR), capped by the split."""
    return min(split_size, max(n, REAL_FLOOR))


def budget_seconds(budget: Budget, dataset_size: int, batch_size: int, train_image_seconds: float) -> float:
    """The budget's device time: its own time limit, or its image, epoch, step or FLOP limit at the measured
    speed; the earliest limit wins, as in training."""
    bounds = [budget.device_seconds] if budget.device_seconds else []
    images = [budget.images, budget.epochs and budget.epoch_images(dataset_size),
              budget.steps and budget.steps * batch_size]
    bounds += [i * train_image_seconds for i in images if i]
    return min(bounds)


def choose(budget_s: float, points: int, per_image_s: float, real_image_s: float, split_size: int) -> int:
    """The largest N of SIZES whose evaluations at every point (and the reference's features, once) fit in
    SHARE of the budget; the smallest where none does."""
    def cost(n: int) -> float:
        return points * n * per_image_s + real_samples(n, split_size) * real_image_s

    fits = [n for n in SIZES if cost(n) <= SHARE * budget_s]
    return fits[-1] if fits else SIZES[0]


def measure(model: Any, spec: RunSpec, device: torch.device) -> tuple[float, float]:
    """Seconds per generated image to sample and to score (Inception), on PROBE images of this model.
    Its own generators and the RNG fork leave training's random state as it was."""
    evaluator = Evaluator(batch_size=spec.eval["batch_size"], progress=False, precision=spec.eval["precision"],
                          device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        sample_for_eval(model, 1, spec.seed, 1)  # first call: allocations, kernels
        batches, sample_s = sample_for_eval(model, PROBE, spec.seed, PROBE)
        evaluator.features(batches)  # first call, as above
        full = torch.cat(batches).repeat(-(-spec.eval["batch_size"] // PROBE), 1, 1, 1)[: spec.eval["batch_size"]]
        start = time.perf_counter()
        evaluator.features(full)  # Inception is scored in full batches: a small one overstates its cost
        score_s = (time.perf_counter() - start) / len(full)
    return sample_s / PROBE, score_s


def resolve(spec: RunSpec, device: torch.device, precision: str, data: Prepared) -> tuple[RunSpec, str | None]:
    """spec with eval.samples and eval.real_samples as numbers, and a line saying how auto chose them (None
    where both were given). Sampling cost is measured on a throwaway model of the spec's family."""
    n, real = spec.eval["samples"], spec.eval["real_samples"]
    line = None
    if n == "auto":
        model = family(spec.model)[0](spec, device, precision)
        sample_s, score_s = measure(model, spec, device)
        train_s = sample_s * model.flops_per_train_image() / model.flops_per_sample()
        budget = budget_seconds(spec.budget_obj, len(data), spec.batch_size, train_s)
        points = spec.eval["points"]
        n = choose(budget, points, sample_s + score_s, score_s, len(data))
        share = (points * n * (sample_s + score_s)) / budget
        per = f"{1000 * sample_s:.3g} ms sampling + {1000 * score_s:.3g} ms Inception per image, measured here"
        several = points > 1
        line = (f"eval.samples = auto -> {n:,}: {points} eval point{'s' * several} of {n:,} "
                f"take{'s' * (not several)} ~{share:.0%} of the budget "
                f"({_duration(budget)}{'' if spec.budget_obj.device_seconds else ', estimated from FLOPs'}; {per})")
        bigger = [s for s in (2_000, 5_000, 10_000) if s > n]
        if bigger:
            line += f"; {bigger[0]:,} would take ~{points * bigger[0] * (sample_s + score_s) / budget:.0%}"
        if n == SIZES[0] and share > SHARE:
            line += f"; even the smallest N is over {SHARE:.0%}"
    if real == "auto":
        real = real_samples(n, len(data))
    return replace(spec, eval={**spec.eval, "samples": n, "real_samples": real}), line


def resolve_on(spec: RunSpec, device_name: str) -> tuple[RunSpec, str | None]:
    """resolve() for a spec not yet training (a study's trials, a compare's models): on the device they will
    train on, at the precision they will pick, on their data."""
    device = pick_device(device_name)
    data = prepare(spec.data, spec.split, spec.resolution, spec.synthetic_images, progress=False)
    return resolve(spec, device, resolve_precision(spec.precision, device), data)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.3g} device-hours" if seconds >= 3600 else f"{seconds:.0f} device-seconds"
