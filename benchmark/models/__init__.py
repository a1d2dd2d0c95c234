"""Model families. Each offers the same few things, so nothing else branches on the model:

    Family(spec, device, precision)          # build nets, optimizers (and EMA where it has one)
    train_step(real_uint8_batch) -> dict     # losses for logging
    sample(n, generator) -> uint8 (n,3,H,W)
    state_dict() / load_state_dict()         # everything needed to resume bit-exactly
    flops_per_train_image(), flops_per_sample(), sample_nfe
"""

from __future__ import annotations

from typing import Any

from benchmark.errors import UserError
from benchmark.models import dcgan

FAMILIES = {
    "dcgan": (dcgan.DCGAN, dcgan.DEFAULTS, "the seed's DCGAN (Radford et al. 2016): BCE, Adam, z=100"),
}


def family(name: str) -> tuple[type, dict[str, Any]]:
    """The family class and its hyperparameter defaults; an unknown name is a UserError."""
    if name not in FAMILIES:
        raise UserError(f"unknown model {name!r}; choose from: {', '.join(FAMILIES)}")
    cls, defaults, _ = FAMILIES[name]
    return cls, defaults
