"""Latent diffusion (Rombach et al. 2022), the seed's "unconditional latent diffusion with a UNet".

Stage 1 trains the KL autoencoder for the first `ae_fraction` of the budget (or takes one the runner hands
it from an earlier run, autoencoder_run = RUN_ID, charging that run's recorded stage-1 cost); stage 2
encodes the prepared data once into cached latents and trains
the DDPM UNet on them. Sampling is DDIM (or DDPM) in latent space, then one decoder pass."""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from benchmark import distributed
from benchmark.atomic import atomic_write, save_torch
from benchmark.data import Prepared, cache_root
from benchmark.device import autocast
from benchmark.errors import UserError
from benchmark.filelock import file_lock
from benchmark.models import ddpm
from benchmark.models.autoencoder import KLAutoencoder
from benchmark.models.common import flops_per_image, to_uint8

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    **ddpm.DEFAULTS,
    # stage 2: the UNet on 16x16x4 latents
    "ch": 128,
    "ch_mult": [1, 2, 2],
    "attn_resolutions": [8],
    "dropout": 0.0,
    "lr": 3e-4,  # the seed's
    # stage 1: the autoencoder
    "ae_ch": 64,
    "ae_ch_mult": [1, 2, 2],  # three levels: downsampling factor 4
    "ae_res_blocks": 1,
    "latent_channels": 4,
    "ae_lr": 2e-4,
    "ae_recon": "l1",  # l1 | l2
    "kl_weight": 1e-6,
    "ae_fraction": 0.25,  # share of the budget for stage 1
    "autoencoder_run": "",  # reuse the autoencoder of this earlier ldm run; stage 1 is then skipped
}
HELP = {
    **ddpm.HELP,
    "ch": "latent UNet base channels",
    "lr": "Adam learning rate of the latent UNet (the seed's 3e-4)",
    "ae_ch": "autoencoder base channels",
    "ae_ch_mult": "autoencoder channel multiplier per level; three levels downsample by 4",
    "ae_res_blocks": "residual blocks per autoencoder level",
    "latent_channels": "channels of the latent (16x16 at f=4)",
    "ae_lr": "Adam learning rate of the autoencoder",
    "ae_recon": "autoencoder reconstruction loss: l1 or l2",
    "kl_weight": "weight of the KL term that keeps latents near N(0, I)",
    "ae_fraction": "share of the budget for stage 1 (the autoencoder)",
    "autoencoder_run": "an earlier ldm run whose autoencoder is reused: stage 1 skipped, its cost charged",
}
STAGES = ("autoencoder", "diffusion")


def _weights_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for tensor in module.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class LDM:
    name = "ldm"

    def __init__(self, spec, device: torch.device, precision: str):
        if spec.ae_recon not in ("l1", "l2"):
            raise UserError(f"ae_recon must be l1 or l2, got {spec.ae_recon!r}")
        if not 0 <= spec.ae_fraction < 1:
            raise UserError(f"ae_fraction must be in [0, 1), got {spec.ae_fraction}")
        self.device, self.precision = device, precision
        self.memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        torch.manual_seed(spec.seed)
        self.ae = KLAutoencoder(spec.ae_ch, tuple(spec.ae_ch_mult), spec.ae_res_blocks,
                                spec.latent_channels).to(device, memory_format=self.memory_format)
        if spec.resolution % self.ae.factor:
            raise UserError(f"resolution {spec.resolution} is not divisible by the autoencoder's "
                            f"factor {self.ae.factor}")
        self.ae_opt = torch.optim.Adam(self.ae.parameters(), lr=spec.ae_lr, betas=(0.5, 0.9))  # LDM's AE betas
        self.dm = ddpm.DDPM(spec, device, precision, channels=spec.latent_channels,
                            size=spec.resolution // self.ae.factor, clip=False)
        self.kl_weight, self.recon, self.ae_fraction = spec.kl_weight, spec.ae_recon, spec.ae_fraction
        self.noise = torch.Generator().manual_seed(spec.seed + 2)  # the autoencoder's posterior draws
        self.stage = STAGES[0]
        self.scale: float | None = None  # 1 / std of the latents, so the diffusion sees unit variance
        self.latents: torch.Tensor | None = None
        # One-off work the loop charges on top of the steps: {stage, images, seconds, flops} each. Encoding
        # the data and a reused autoencoder cost the same whether their results were cached or not.
        self.charges: list[dict[str, Any]] = []
        self._recon_scored = False
        self._flops: dict[str, float] = {}

    def reuse_autoencoder(self, state: dict[str, torch.Tensor], cost: dict[str, float], origin: str) -> None:
        """Take a trained autoencoder (from an earlier run: the runner finds it) and skip stage 1; its
        recorded cost (images, device-seconds, FLOPs) is charged to this run's autoencoder stage."""
        try:
            self.ae.load_state_dict(state)
        except RuntimeError:
            raise UserError(f"autoencoder_run: {origin}'s autoencoder has other ae_* settings") from None
        self.stage = STAGES[1]
        self.charges.append({"stage": STAGES[0], **cost})
        log.info("reusing the autoencoder of %s; stage 1 skipped, its cost charged", origin)

    def _amp(self):
        return autocast(self.device, self.precision)

    # ------------------------------------------------------------ training

    def train_step(self, batch: torch.Tensor, *, indices: np.ndarray, fraction: float, data: Prepared,
                   **_) -> dict[str, float]:
        if self.stage == STAGES[0] and fraction >= self.ae_fraction:
            self.stage = STAGES[1]
            log.info("stage 2: latent diffusion (autoencoder trained for %.0f%% of the budget)", 100 * fraction)
        if self.stage == STAGES[0]:
            return self._autoencoder_step(batch.to(self.device, memory_format=self.memory_format))
        if self.latents is None:
            self.latents = self._encode_dataset(data)
        z = self.latents[torch.from_numpy(indices)].to(self.device, memory_format=self.memory_format)
        return {"loss": self.dm.fit(z * self.scale)}

    def _autoencoder_step(self, x: torch.Tensor) -> dict[str, float]:
        self._recon_scored = False
        self.ae_opt.zero_grad(set_to_none=True)
        with self._amp():
            loss, parts = self.ae.loss(x, self.noise, self.kl_weight, self.recon)
        loss.backward()
        distributed.average_gradients(self.ae.parameters())
        self.ae_opt.step()
        return {"loss_ae": loss.item(), **parts}

    @torch.no_grad()
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        with self._amp():
            return self.ae.encode(x.to(self.device, memory_format=self.memory_format))[0].float().cpu()

    def _encode_dataset(self, data: Prepared, batch_size: int = 256) -> torch.Tensor:
        """Posterior means of every prepared image, cached on disk by data and autoencoder weights. On K ranks
        it is built once: rank 0 reads its cache and hands the latents over, or each rank encodes its part and
        every rank gets all of them (no rank reads another's disk)."""
        self.ae.eval()
        key = f"{data.fingerprint}-{data.split}-{data.resolution}-{_weights_hash(self.ae)}"
        path = cache_root() / "latents" / f"{key}.pt"
        w = distributed.world()
        # rank 0 alone holds the lock: a rank of this job waiting for it would never reach the broadcast
        with file_lock(path.with_suffix(".lock")) if w.main else nullcontext():
            cached = None
            if w.main and path.is_file():
                cached = torch.load(path, map_location="cpu", weights_only=True)
            cached = distributed.broadcast(cached if isinstance(cached, dict) else None)
            if cached is not None:  # what encoding cost when it ran, charged again: the cache is no discount
                latents = cached["latents"]
                self.charges.append({"stage": self.stage, "images": 0, "seconds": cached["seconds"],
                                     "flops": cached["flops"]})
                log.info("reusing cached latents %s (charged as encoded: %.1f s)", path.name, cached["seconds"])
            else:
                start_, stop = distributed.part(len(data))
                log.info("encoding %d images into latents (once; cached as %s)", len(data), path.name)
                start = time.perf_counter()
                mine = [self._encode(torch.from_numpy(np.array(data.images[i : min(i + batch_size, stop)])).float()
                                     .div_(127.5).sub_(1.0)) for i in range(start_, stop, batch_size)]
                latents = distributed.all_rows(torch.cat(mine), len(data))
                seconds, flops = time.perf_counter() - start, len(data) * self._encoder_flops()
                if w.main:
                    with atomic_write(path) as tmp:
                        save_torch({"latents": latents, "seconds": seconds * w.size, "flops": flops}, tmp)
                # the seconds are inside this training step's measured time already
                self.charges.append({"stage": self.stage, "images": 0, "seconds": 0.0, "flops": flops})
        if self.scale is None:
            self.scale = float(1.0 / latents.std())
            log.info("latent scale factor 1/std = %.4f", self.scale)
        return latents

    # ------------------------------------------------------------ sampling and evaluation

    @property
    def sample_nfe(self) -> int:
        return self.dm.sample_nfe

    @property
    def sampler_steps(self) -> int:
        return self.dm.sampler_steps

    @sampler_steps.setter
    def sampler_steps(self, steps: int) -> None:
        self.dm.sampler_steps = steps

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = self.dm.sample_x0(n, generator) / (self.scale or 1.0)
        with self._amp():
            return to_uint8(self.ae.decode(z.to(memory_format=self.memory_format)))

    @torch.no_grad()
    def extra_eval_sets(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstructions of real images, scored as recon_fid: the autoencoder bounds the LDM's quality.
        Only when the autoencoder changed since it was last scored."""
        if self._recon_scored:
            return {}
        self._recon_scored = self.stage == STAGES[1]
        x = real.float().div(127.5).sub(1.0).to(self.device, memory_format=self.memory_format)
        with self._amp():
            return {"recon": to_uint8(self.ae.decode(self.ae.encode(x)[0]))}

    # ------------------------------------------------------------ state and cost

    def state_dict(self) -> dict[str, Any]:
        return {"ae": self.ae.state_dict(), "ae_opt": self.ae_opt.state_dict(), "dm": self.dm.state_dict(),
                "noise": self.noise.get_state(), "stage": self.stage, "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.charges = []  # a checkpoint's meter holds what was charged before it
        self.ae.load_state_dict(state["ae"])
        self.ae_opt.load_state_dict(state["ae_opt"])
        self.dm.load_state_dict(state["dm"])
        self.noise.set_state(state["noise"])
        self.stage, self.scale = state["stage"], state["scale"]

    def _x(self) -> torch.Tensor:
        return torch.zeros(2, 3, self.dm.size * self.ae.factor, self.dm.size * self.ae.factor, device=self.device)

    def _encoder_flops(self) -> float:
        return flops_per_image(self._flops, "encode", lambda: self._encode(self._x()), [self.ae])

    def flops_per_train_image(self) -> float:
        """Per image of the current stage: autoencoder forward+backward, or the UNet's on latents."""
        if self.stage == STAGES[0]:
            gen = torch.Generator().manual_seed(0)

            def step() -> None:
                self.ae.loss(self._x(), gen, self.kl_weight)[0].backward()

            return flops_per_image(self._flops, "ae", step, [self.ae])
        return self.dm.flops_per_train_image()

    def flops_per_sample(self) -> float:
        z = torch.zeros(2, self.dm.channels, self.dm.size, self.dm.size, device=self.device)

        def decode() -> None:
            with torch.no_grad():
                self.ae.decode(z)

        return self.dm.flops_per_sample() + flops_per_image(self._flops, "decode", decode, [self.ae])
