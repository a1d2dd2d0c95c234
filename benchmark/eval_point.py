"""What a run does at each eval point: a sample grid, the cost so far and, where eval.samples > 0, FID/KID/
precision/recall of N fresh samples. On K ranks the N samples are sharded: each rank draws its share of the
evaluation batches (each batch's noise seeded by its index, as one process draws it) and computes their
Inception features; rank 0 gathers them in batch order, scores and logs. The numbers are those of one
process evaluating the same checkpoint (`bench eval`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmark import distributed
from benchmark.budget import Meter
from benchmark.data import Prepared, prepare
from benchmark.device import rng_untouched
from benchmark.metrics import (
    SMALL_N,
    Evaluator,
    Features,
    draw,
    eval_batches,
    headline,
    provenance,
    sample_for_eval,
    sampling_bn,
    score,
)
from benchmark.spec import RunSpec

log = logging.getLogger(__name__)

HELDOUT_KEYS = ("fid", "kid_mean", "kid_std", "precision", "recall")  # logged again as <key>_heldout


def save_grid(images: torch.Tensor, path, per_row: int | None = None) -> None:
    """uint8 images as one PNG grid, square unless per_row says how many a row holds."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float() / 255.0, path, nrow=per_row or int(np.ceil(np.sqrt(len(images)))), padding=2)


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


def in_batch_order(parts: list[dict[str, Any]], n: int, batch_size: int) -> Features:
    """The ranks' features (each its eval_batches, in order) joined in the order one process draws them."""
    by_index: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for rank, got in enumerate(parts):
        row = 0
        for index, size in eval_batches(n, batch_size, rank, len(parts)):
            logits = got["logits"][row : row + size] if got["logits"] is not None else None
            by_index[index] = (got["pool"][row : row + size], logits)
            row += size
    ordered = [by_index[i] for i in sorted(by_index)]
    logits = [lg for _, lg in ordered]
    return Features(torch.cat([p for p, _ in ordered]), None if logits[0] is None else torch.cat(logits))


class EvalPoints:
    """The evaluations of one training run (called by every rank at the same eval points)."""

    def __init__(self, spec: RunSpec, model: Any, data: Prepared, tracker: Any, progress: bool,
                 on_eval: Callable[[dict[str, float], Meter, int], None] | None = None):
        self.spec, self.model, self.data, self.tracker = spec, model, data, tracker
        self.progress, self.on_eval = progress, on_eval
        self.evaluator: Evaluator | None = None
        self.real: Features | None = None  # rank 0's reference features, loaded at the first eval point
        self.heldout: Features | None = None  # the same of images training never saw, where the data has them

    def __call__(self, meter: Meter, index: int) -> BaseException | None:
        """Evaluate at eval point `index`. Every rank calls it; on several ranks an exception raised by one
        rank's own work is returned, for the next distributed.settle() to stop every rank with it."""
        start = time.perf_counter()
        w = distributed.world()
        n = self.spec.eval["samples"]
        values: dict[str, float] = {}
        shard: dict[str, Any] | None = None

        def sample() -> None:
            nonlocal shard
            # Building the Inception network draws its random init from the global RNG, which dropout in
            # training may read: evaluating must leave it as it was, or evaluating would change training.
            with rng_untouched(), distributed.alone():
                if hasattr(self.model, "sampling_generator"):  # standing BatchNorm statistics, once per point
                    self.model.sampling_generator()
                if w.main:
                    values.update(self._grid(meter, index))
                if n > 0:
                    shard = self._features(n)

        error = distributed.attempt(sample)
        if n > 0:
            parts = distributed.gather_to_main(shard, error)
        elif error is not None:
            return error
        if not w.main:
            return None
        return distributed.attempt(self._score_and_log, meter, index, values, parts if n > 0 else None, start)

    def _heldout_features(self, evaluator: Evaluator) -> Features | None:
        """Reference features of the valid partition, as many as the training reference has, where the run
        trains on CelebA's train partition; a folder has no partition, so nothing (said once)."""
        if self.data.split != "train":
            log.info("no held-out reference: %s has no partition the run does not train on (CelebA's train split "
                     "has valid)", self.data.name)
            return None
        heldout = prepare(self.spec.data, "valid", self.spec.resolution, progress=False)
        features, _ = evaluator.real_features(heldout, len(self.real.pool))
        self.tracker.tags({"metrics.heldout_reference": f"{heldout.name}:{heldout.split}",
                           "metrics.heldout_samples": str(len(features.pool))})
        return features

    def _grid(self, meter: Meter, index: int) -> dict[str, float]:
        fixed = torch.Generator().manual_seed(self.spec.seed + 12345)
        grid_start = time.perf_counter()
        (grid,) = draw(self.model, self.spec.eval["grid"], fixed, self.spec.eval["grid"], self.progress, desc="grid")
        grid_seconds = time.perf_counter() - grid_start
        step = meter.images_seen
        rel = f"samples/grid_{step:010d}.png"
        save_grid(grid, self.tracker.dir / rel)
        self.tracker.publish(rel)
        # MLflow's image cards step through a run's grids; the step is the eval point's index (the same
        # fraction of the budget in every run), so runs compared at one budget line up in the chart view.
        # "samples/" makes it a section of its own, above the metric charts.
        self.tracker.image("samples/grid", self.tracker.dir / rel, index)
        model = self.model
        return {"images_seen": step, "epochs": meter.epochs, "device_hours": meter.device_hours,
                "wall_hours": meter.wall_seconds / 3600, "pflops": meter.pflops, "steps": meter.steps,
                **stage_costs(meter), "sample_nfe": model.sample_nfe,
                "sample_gflops_per_image": model.flops_per_sample() / 1e9,
                "sample_seconds_per_image": grid_seconds / max(1, len(grid))}

    def _features(self, n: int) -> dict[str, Any]:
        """This rank's share of the N evaluation samples, as Inception features (and the seconds sampling took)."""
        w = distributed.world()
        if self.evaluator is None:
            self.evaluator = Evaluator(batch_size=self.spec.eval["batch_size"], progress=self.progress,
                                       precision=self.spec.eval["precision"], device=self.model.device)
        batches, seconds = sample_for_eval(self.model, n, self.spec.seed, self.spec.eval["batch_size"],
                                           self.progress, w.rank, w.size)
        if not batches:  # more ranks than evaluation batches
            return {"pool": None, "logits": None, "seconds": 0.0}
        features = self.evaluator.features(batches, total=sum(len(b) for b in batches), desc="fid")
        return {"pool": features.pool, "logits": features.logits, "seconds": seconds}

    def _score_and_log(self, meter: Meter, index: int, values: dict[str, float],
                       parts: list[dict[str, Any]] | None, start: float) -> None:
        spec, data, tracker, n = self.spec, self.data, self.tracker, self.spec.eval["samples"]
        if parts is not None:
            evaluator = self.evaluator
            if self.real is None:
                self.real, cached = evaluator.real_features(data, spec.eval["real_samples"])
                tracker.tags({**provenance(evaluator, n, len(self.real.pool), f"{data.name}:{data.split}",
                                           sampling_bn(self.model)),
                              "metrics.real_stats": "reused from cache" if cached else "computed",
                              "eval_ranks": len(parts)})
                if n < SMALL_N:
                    log.warning("eval.samples=%d: below %d samples FID is biased upwards, so KID leads; neither "
                                "is comparable with papers' 50,000-sample FIDs", n, SMALL_N)
                self.heldout = self._heldout_features(evaluator)
            fake = in_batch_order(parts, n, spec.eval["batch_size"])
            values.update(score(fake, self.real, evaluator.weights))
            if self.heldout is not None:  # memorising the reference helps the score above, not this one
                scored = score(fake, self.heldout, evaluator.weights)
                values.update({f"{k}_heldout": v for k, v in scored.items() if k in HELDOUT_KEYS})
            # device-seconds per image: every rank's sampling time, comparable across numbers of ranks
            values.update(eval_samples=n, sample_seconds_per_image=sum(p["seconds"] for p in parts) / n)
            extra_sets = getattr(self.model, "extra_eval_sets", None)
            if extra_sets is not None:  # e.g. the ldm's reconstructions: recon_fid bounds its samples
                chosen = np.sort(np.random.default_rng(1).permutation(len(data))[:n])
                with rng_untouched(), distributed.alone():
                    for name, images in extra_sets(torch.from_numpy(np.asarray(data.images[chosen]))).items():
                        scored = score(evaluator.features(images, desc=name), self.real, evaluator.weights)
                        values.update({f"{name}_{k}": v for k, v in scored.items() if k in ("fid", "kid_mean")})
        meter.eval_seconds += time.perf_counter() - start
        values["eval_seconds"] = meter.eval_seconds
        values["checkpoint_seconds"] = meter.checkpoint_seconds
        tracker.metrics(values, meter.images_seen)
        tracker.flush()
        if "fid" in values:
            log.info("eval at %d images (%.3g epochs): %s%s", meter.images_seen, meter.epochs,
                     headline(values, n, len(self.real.pool)),
                     f"; against {len(self.heldout.pool)} held-out (valid) images KID x 1000 = "
                     f"{1000 * values['kid_mean_heldout']:.2f}" if "kid_mean_heldout" in values else "")
        if self.on_eval is not None:  # the point's index: the same fraction of the budget in every run of a spec
            self.on_eval(values, meter, index)
