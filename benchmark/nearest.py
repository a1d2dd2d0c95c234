"""`bench sample --nearest K`: the memorisation check GAN papers show. Each generated image beside the K training
images nearest to it in Inception space (the 2048-d pool features FID uses, Euclidean), as one grid, a row per
sample; a model that copies its training set shows its copies here, however good its KID looks against that set.

The distance to the nearest training image is given beside the same distance for real training images to their
nearest *other* training image: a sample much nearer than that is a near-copy."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from benchmark import data as data_mod
from benchmark.evaluate import load_run, require_sampler, set_bn
from benchmark.metrics import Evaluator, draw

log = logging.getLogger(__name__)

KEY = "nearest/grid"  # the MLflow image key: steps through the checkpoints it was drawn at
REFERENCE = 1_000  # training images whose nearest other training image gives the scale


def nearest(fake: torch.Tensor, train: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices), each (len(fake), k): the k rows of train nearest to each row of fake, nearest
    first. float64: the squared norms of 2048-d features are ~1e2-1e3, where float32 loses the small distances."""
    dist = torch.cdist(fake.double(), train.double())
    values, index = dist.topk(min(k, len(train)), dim=1, largest=False)
    return values, index


def train_to_train(train: torch.Tensor, count: int = REFERENCE) -> torch.Tensor:
    """Each of up to `count` training images' distance to its nearest other training image (a seeded subset)."""
    chosen = torch.from_numpy(np.sort(np.random.default_rng(0).permutation(len(train))[:count]))
    dist = torch.cdist(train[chosen].double(), train.double())
    dist[torch.arange(len(chosen)), chosen] = float("inf")  # not itself
    return dist.min(dim=1).values


def nearest_run(run_id: str, n: int, k: int, out: Path, seed: int = 0, sampler_steps: int | None = None,
                device_name: str = "auto", batch_size: int = 64, bn: str | None = None,
                progress: bool = False) -> dict:
    """Draw n images from the run's latest checkpoint, find each one's k nearest training images (the run's own
    data and split), save the grid to out and log it into the run at the checkpoint's step, with the mean
    nearest distance as the metric nearest_train_distance."""
    tracker, spec, model, state = load_run(run_id, device_name)
    if sampler_steps is not None:
        require_sampler(spec, model, "--steps")
        model.sampler_steps = sampler_steps
    set_bn(spec, model, bn)
    step = int(state["meter"]["images_seen"])
    images = torch.cat([x.cpu() for x in draw(model, n, torch.Generator().manual_seed(seed), batch_size,
                                                   progress)])
    data = data_mod.prepare(spec.data, spec.split, spec.resolution, spec.synthetic_images, progress)
    evaluator = Evaluator(batch_size=spec.eval["batch_size"], progress=progress, precision=spec.eval["precision"])
    # every training image (cached like the reference statistics: a seeded subset of all of them is all of them,
    # in order)
    train, _ = evaluator.real_features(data, len(data))
    fake = evaluator.features(images, desc="samples")
    dist, index = nearest(fake.pool, train.pool, k)
    scale = train_to_train(train.pool)
    rows = [torch.cat([images[i : i + 1], torch.from_numpy(np.asarray(data.images[index[i].numpy()]))])
            for i in range(n)]
    grid = torch.cat(rows)
    _save(grid, out, k + 1)
    rel = f"nearest/nearest_{step:010d}.png"
    _save(grid, tracker.dir / rel, k + 1)
    tracker.publish(rel)
    tracker.image(KEY, tracker.dir / rel, step)
    mean = float(dist[:, 0].mean())
    tracker.metrics({"nearest_train_distance": mean, "train_nearest_other_distance": float(scale.median())}, step)
    tracker.flush()
    return {"run_id": run_id, "model": spec.model, "images_seen": step, "n": n, "k": index.shape[1],
            "out": str(out), "train_images": len(data), "nearest_distance": mean,
            "nearest_distances": dist[:, 0].tolist(), "train_median": float(scale.median()),
            "closer_than_train": int((dist[:, 0] < scale.median()).sum())}


def _save(grid: torch.Tensor, path: Path, per_row: int) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid.float() / 255.0, path, nrow=per_row, padding=2)
