"""What every model family shares: FLOP counting and uint8 output (device, precision and RNG helpers are in
benchmark/device.py, which the loop and the metrics use too)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmark.device import rng_untouched


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 on the CPU, rounded as PIL would save them."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().contiguous()


def count_flops(fn: Callable[[], None], models: list[nn.Module]) -> float:
    """FLOPs of fn, counted by torch.utils.flop_counter; the models' state and the RNGs are put back afterwards."""
    saved = [copy.deepcopy(m.state_dict()) for m in models]
    # Counting runs in the first step of every process, resumed ones too: the dropout masks it draws
    # must not move the global RNG, or a resumed run would train on other masks than the killed one.
    with rng_untouched(), FlopCounterMode(display=False) as counter:
        fn()
    for model, state in zip(models, saved, strict=True):
        model.load_state_dict(state)
    return float(counter.get_total_flops())


def flops_per_image(cache: dict[str, float], key: str, fn: Callable[[], None], models: list[nn.Module]) -> float:
    """FLOPs per image of fn, which runs the work on a batch of 2; counted once per key and cached, the
    models' state and gradients left as they were. Families call it from their per-step cost queries."""
    if key not in cache:
        cache[key] = count_flops(fn, models) / 2
        for model in models:
            model.zero_grad(set_to_none=True)
    return cache[key]
