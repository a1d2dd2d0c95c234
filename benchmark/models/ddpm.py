"""DDPM (Ho et al. 2020) in pixel space: a UNet trained on the simple MSE objective, an EMA of its weights
for sampling, and DDPM or DDIM sampling with S steps. The latent model (ldm.py) runs the same on latents."""

from __future__ import annotations

from typing import Any

import torch

from benchmark.device import autocast
from benchmark.distributed import average_gradients, dropout_noise
from benchmark.errors import UserError
from benchmark.models.common import flops_per_image, to_uint8
from benchmark.models.diffusion import PREDICTIONS, SAMPLERS, SCHEDULES, GaussianDiffusion, timesteps
from benchmark.models.ema import EMA
from benchmark.models.unet import UNet

DEFAULTS: dict[str, Any] = {
    "ch": 64,
    "ch_mult": [1, 2, 2, 2],
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "dropout": 0.1,
    "schedule": "linear",  # linear (Ho et al.) | cosine (Nichol & Dhariwal)
    "timesteps": 1000,
    "prediction": "eps",  # eps | v
    "lr": 2e-4,
    "beta1": 0.9,
    "beta2": 0.999,
    "warmup_steps": 0,
    "grad_clip": 1.0,
    "ema_decay": 0.9999,
    "sampler": "ddim",  # ddim | ddpm (ancestral)
    "sampler_steps": 50,  # network evaluations per image
    "sampler_eta": 0.0,
    # The UNet trains ~4% slower in channels_last on CPU (GroupNorm, concatenated skips; measured by
    # bench calibrate --families); on CUDA with bf16 channels_last is the faster layout: set it there.
    "channels_last": False,
}
HELP = {
    "ch": "UNet base channels",
    "ch_mult": "channel multiplier per UNet level (one downsampling between levels)",
    "num_res_blocks": "residual blocks per UNet level",
    "attn_resolutions": "feature-map sides with self-attention",
    "dropout": "dropout in the residual blocks",
    "schedule": "noise schedule: linear (Ho et al.) or cosine (Nichol & Dhariwal)",
    "timesteps": "diffusion steps T of training",
    "prediction": "what the UNet predicts: eps (noise) or v",
    "lr": "Adam learning rate",
    "beta1": "Adam beta1",
    "beta2": "Adam beta2",
    "warmup_steps": "linear learning-rate warm-up, steps",
    "grad_clip": "gradient-norm clip; 0: none",
    "ema_decay": "decay of the EMA weights that sample (with warm-up)",
    "sampler": "ddim or ddpm (ancestral), on sampler_steps of the T steps",
    "sampler_steps": "network evaluations per sampled image",
    "sampler_eta": "DDIM's eta: 0 deterministic, 1 as stochastic as DDPM",
    "channels_last": "NHWC layout; off: ~4% slower on CPU for the UNet (bench calibrate --families)",
}


def check_choices(spec) -> None:
    for key, allowed in (("schedule", SCHEDULES), ("prediction", PREDICTIONS), ("sampler", SAMPLERS)):
        if spec.values[key] not in allowed:
            raise UserError(f"{key} must be one of {', '.join(allowed)}, got {spec.values[key]!r}")
    for key in ("ch_mult", "attn_resolutions"):
        if not all(isinstance(v, int) and v > 0 for v in spec.values[key]):
            raise UserError(f"{key} must be a list of positive integers, got {spec.values[key]!r}")
    if not spec.ch_mult or spec.timesteps < 1 or spec.sampler_steps < 1 or spec.ch < 1:
        raise UserError("ch, ch_mult, timesteps and sampler_steps must be positive")


class DDPM:
    """The family interface over a UNet; channels/size/clip let the latent model reuse it on latents."""

    name = "ddpm"

    def __init__(self, spec, device: torch.device, precision: str, channels: int = 3, size: int | None = None,
                 clip: bool = True):
        check_choices(spec)
        self.device, self.precision = device, precision
        self.channels, self.size, self.clip = channels, size or spec.resolution, clip
        if self.size % 2 ** (len(spec.ch_mult) - 1):
            raise UserError(f"size {self.size} does not halve {len(spec.ch_mult) - 1} times (ch_mult {spec.ch_mult})")
        self.memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        torch.manual_seed(spec.seed)
        self.net = UNet(channels, spec.ch, tuple(spec.ch_mult), spec.num_res_blocks, tuple(spec.attn_resolutions),
                        spec.dropout, self.size).to(device, memory_format=self.memory_format)
        self.ema = EMA(self.net, spec.ema_decay)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=spec.lr, betas=(spec.beta1, spec.beta2))
        self.lr, self.warmup, self.grad_clip = spec.lr, spec.warmup_steps, spec.grad_clip
        self.diffusion = GaussianDiffusion(spec.schedule, spec.timesteps, spec.prediction)
        self.noise = torch.Generator().manual_seed(spec.seed + 1)  # t and epsilon; saved for exact resume
        # dropout's masks, drawn on the device for the global batch (every rank holds the same stream)
        self.dropout_noise = torch.Generator(device=device).manual_seed(spec.seed + 3)
        self.steps = 0
        self.sampler, self.sampler_steps, self.sampler_eta = spec.sampler, spec.sampler_steps, spec.sampler_eta
        self._flops: dict[str, float] = {}

    def _amp(self):
        return autocast(self.device, self.precision)

    def train_step(self, batch: torch.Tensor, **_) -> dict[str, float]:
        return {"loss": self.fit(batch.to(self.device, memory_format=self.memory_format, non_blocking=True))}

    def fit(self, x0: torch.Tensor) -> float:
        """One optimizer step on a batch of x_0 (pixels, or scaled latents); returns the loss."""
        if self.warmup:
            for group in self.opt.param_groups:
                group["lr"] = self.lr * min(1.0, (self.steps + 1) / self.warmup)
        self.opt.zero_grad(set_to_none=True)
        with dropout_noise(self.dropout_noise):
            loss = self.diffusion.loss(self.net, x0, self.noise, self._amp)
        loss.backward()
        average_gradients(self.net.parameters())
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.opt.step()
        self.ema.update(self.net)
        self.steps += 1
        return loss.item()

    @property
    def sample_nfe(self) -> int:
        """Network evaluations per generated image: the sampling cost axis."""
        return len(timesteps(self.diffusion.T, self.sampler_steps))

    def sample_x0(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n samples of x_0 as floats, from the EMA weights."""
        return self.diffusion.sample(self.ema.shadow, (n, self.channels, self.size, self.size), generator,
                                     self.device, self.sampler, self.sampler_steps, self.sampler_eta,
                                     clip=self.clip, amp=self._amp)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return to_uint8(self.sample_x0(n, generator))

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "noise": self.noise.get_state(), "dropout_noise": self.dropout_noise.get_state(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.noise.set_state(state["noise"])
        if "dropout_noise" in state:  # checkpoints from before it drew dropout from the global RNG
            self.dropout_noise.set_state(state["dropout_noise"])
        self.steps = state["steps"]

    def flops_per_train_image(self) -> float:
        x = torch.zeros(2, self.channels, self.size, self.size, device=self.device)
        t = torch.zeros(2, dtype=torch.long, device=self.device)
        return flops_per_image(self._flops, "train", lambda: self.net(x, t).sum().backward(), [self.net])

    def flops_per_sample(self) -> float:
        x = torch.zeros(2, self.channels, self.size, self.size, device=self.device)
        t = torch.zeros(2, dtype=torch.long, device=self.device)

        def forward() -> None:
            with torch.no_grad():
                self.net(x, t)

        return self.sample_nfe * flops_per_image(self._flops, "forward", forward, [self.net])
