"""`bench sample --nearest K`: the memorisation check GAN papers show. Each generated image beside the K training
images nearest to it in Inception space (the 2048-d pool features FID uses, Euclidean), as one grid, a row per
sample; a model that copies its training set shows its copies here, however good its KID looks against that set.

The distance to the nearest training image is given beside the same distance for real training images to their
nearest *other* training image: a sample much nearer than that is a near-copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from benchmark import data as data_mod
from benchmark.eval_point import save_grid
from benchmark.metrics import Evaluator
from benchmark.sample import drawn

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
    tracker, spec, _, state, images = drawn(run_id, n, seed, sampler_steps, device_name, batch_size, bn, progress)
    step = int(state["meter"]["images_seen"])
    data = data_mod.prepare(spec.data, spec.split, spec.resolution, spec.synthetic_images, progress)
    evaluator = Evaluator(batch_size=spec.eval["batch_size"], progress=progress, precision=spec.eval["precision"])
    # every training image (cached like the reference statistics: a seeded subset of all of them is all of them,
    # in order)
    train, _ = evaluator.real_features(data, len(data))
    fake = evaluator.features(images, desc="samples")
    dist, index = nearest(fake.pool, train.pool, k)
    rows = [torch.cat([images[i : i + 1], torch.from_numpy(np.asarray(data.images[index[i].numpy()]))])
            for i in range(n)]
    rel = f"nearest/nearest_{step:010d}.png"
    save_grid(torch.cat(rows), tracker.dir / rel, per_row=k + 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tracker.dir / rel, out)
    tracker.publish(rel)
    tracker.image(KEY, tracker.dir / rel, step)
    nearest_, scale = dist[:, 0], float(train_to_train(train.pool).median())
    tracker.metrics({"nearest_train_distance": float(nearest_.mean()), "train_nearest_other_distance": scale}, step)
    tracker.flush()
    return {"model": spec.model, "images_seen": step, "n": n, "k": index.shape[1], "out": str(out),
            "train_images": len(data), "nearest_distance": float(nearest_.mean()), "train_median": scale,
            "closer_than_train": int((nearest_ < scale).sum())}
