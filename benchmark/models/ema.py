"""Exponential moving average of a network's weights, used for sampling and metrics (Ho et al. 2020)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weights after every optimizer step.

    The decay warms up as (1 + n) / (10 + n) so that short runs are not stuck near the initial weights:
    at decay 0.9999 the average would otherwise remember the random init for ~10,000 steps."""

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(net).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.shadow.parameters()), list(net.parameters()), 1.0 - decay)
        for shadow, buffer in zip(self.shadow.buffers(), net.buffers(), strict=True):
            shadow.copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.updates = state["updates"]
