"""`bench sample`: images from a run's latest checkpoint, as one grid or a folder of PNGs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from benchmark.eval_point import save_grid
from benchmark.evaluate import load_run, require_sampler, set_bn
from benchmark.metrics import draw, sampling_bn

log = logging.getLogger(__name__)

GRID_SUFFIXES = (".png", ".jpg", ".jpeg")


def drawn(run_id: str, n: int, seed: int, sampler_steps: int | None, device_name: str, batch_size: int,
          bn: str | None, progress: bool) -> tuple:
    """(tracker, spec, model, checkpoint state, n uint8 images) from a run's latest checkpoint, sampled with
    the steps and BatchNorm statistics asked for."""
    tracker, spec, model, state = load_run(run_id, device_name)
    if sampler_steps is not None:
        require_sampler(spec, model, "--steps")
        model.sampler_steps = sampler_steps
    set_bn(spec, model, bn)
    images = torch.cat([x.cpu() for x in draw(model, n, torch.Generator().manual_seed(seed), batch_size,
                                                   progress)])
    return tracker, spec, model, state, images


def sample_run(run_id: str, n: int, out: Path, seed: int = 0, sampler_steps: int | None = None,
               device_name: str = "auto", batch_size: int = 64, bn: str | None = None, progress: bool = False) -> dict:
    """Draw n images; `out` ending in .png/.jpg is one grid, anything else a folder of numbered PNGs
    (which `bench eval --real ... --fake FOLDER` scores)."""
    _, spec, model, state, images = drawn(run_id, n, seed, sampler_steps, device_name, batch_size, bn, progress)
    if out.suffix.lower() in GRID_SUFFIXES:
        save_grid(images, out)
    else:
        from PIL import Image

        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images.numpy()):
            Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(out / f"{i:05d}.png")
    return {"run_id": run_id, "model": spec.model, "images_seen": int(state["meter"]["images_seen"]), "n": n,
            "out": str(out), "sample_nfe": getattr(model, "sample_nfe", 1), "bn": sampling_bn(model)}
