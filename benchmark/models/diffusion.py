"""Gaussian diffusion (Ho et al. 2020): noise schedules, the forward process q(x_t | x_0), the training
target (epsilon, or v of Salimans & Ho 2022), and two samplers over S of the T steps: DDPM's ancestral
sampler on a respaced schedule (S = T is the original) and DDIM (Song et al. 2021) with eta."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.distributed import shard, world
from benchmark.progress import SAMPLING_PROGRESS

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
SAMPLERS = ("ddim", "ddpm")


def make_betas(schedule: str, T: int) -> torch.Tensor:
    """float64 betas: DDPM's linear 1e-4..0.02 (scaled to T), or Nichol & Dhariwal's cosine schedule."""
    if schedule == "linear":
        scale = 1000 / T
        return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule {schedule!r}")


def timesteps(T: int, steps: int) -> list[int]:
    """S of the T steps, evenly spaced from T-1 down to 0 (both ends included)."""
    steps = max(1, min(steps, T))
    return sorted({int(round(x)) for x in np.linspace(0, T - 1, steps)}, reverse=True)


class GaussianDiffusion:
    def __init__(self, schedule: str = "linear", T: int = 1000, prediction: str = "eps"):
        self.T, self.prediction = T, prediction
        self.betas = make_betas(schedule, T)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)  # float64: the tail needs the digits

    def _ab(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha-bar at t, broadcast against `like` (float32 on its device)."""
        return self.alphas_cumprod[t.cpu()].to(like.device, torch.float32).reshape(-1, *[1] * (like.dim() - 1))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A draw of x_t ~ q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I)."""
        ab = self._ab(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction == "eps":
            return noise
        ab = self._ab(t, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def loss(self, net: Callable, x0: torch.Tensor, generator: torch.Generator,
             amp: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
        """The simple MSE objective at a uniformly drawn t; noise comes from `generator` (resumable)."""
        # drawn for the global batch, then this rank's slice: K ranks draw what one process draws
        n = x0.shape[0] * world().size
        t = shard(torch.randint(0, self.T, (n,), generator=generator))
        noise = shard(torch.randn((n, *x0.shape[1:]), generator=generator)).to(x0.device)
        x_t = self.q_sample(x0, t, noise)
        with amp():
            out = net(x_t, t.to(x0.device))
        return F.mse_loss(out.float(), self.target(x0, noise, t))

    def predict(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, epsilon) implied by the network's output at x_t."""
        ab = self._ab(t, x_t)
        if self.prediction == "eps":
            return (x_t - (1 - ab).sqrt() * out) / ab.sqrt(), out
        return ab.sqrt() * x_t - (1 - ab).sqrt() * out, (1 - ab).sqrt() * x_t + ab.sqrt() * out

    @torch.no_grad()
    def sample(self, net: Callable, shape: tuple[int, ...], generator: torch.Generator, device: torch.device,
               sampler: str = "ddim", steps: int = 50, eta: float = 0.0, clip: bool = True,
               x_T: torch.Tensor | None = None,
               amp: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
        """x_0 from x_T ~ N(0, I) in `steps` network evaluations. clip keeps x_0 in [-1, 1] (pixels only).

        ddim: x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z, with
              sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev); eta = 0 is deterministic.
        ddpm: the Gaussian posterior q(x_prev | x_t, x0) on the respaced schedule (Nichol & Dhariwal)."""
        x = (x_T if x_T is not None else torch.randn(shape, generator=generator)).to(device, torch.float32)
        ts = timesteps(self.T, steps)
        report = SAMPLING_PROGRESS.get()
        for i, t in enumerate(ts):
            if report is not None and i > 0:
                report(1 / len(ts))
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            ab_t = float(self.alphas_cumprod[t])
            ab_prev = float(self.alphas_cumprod[prev]) if prev >= 0 else 1.0
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
            with amp():
                out = net(x, tt).float()
            x0, eps = self.predict(out, x, tt)
            if clip:
                x0 = x0.clamp(-1, 1)
                eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
            if prev < 0:
                x = x0
                break
            if sampler == "ddim":
                sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
                x = math.sqrt(ab_prev) * x0 + math.sqrt(max(0.0, 1 - ab_prev - sigma**2)) * eps
            else:
                beta = 1 - ab_t / ab_prev
                mean = (math.sqrt(ab_prev) * beta / (1 - ab_t)) * x0 \
                    + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)) * x
                sigma = math.sqrt(beta * (1 - ab_prev) / (1 - ab_t))
                x = mean
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator).to(device)
        return x
