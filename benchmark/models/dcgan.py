"""DCGAN (Radford et al. 2016) exactly as the seed report trained it: BCE, Adam, z of 100 dims."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.device import autocast
from benchmark.distributed import average_gradients, local_batchnorm, shard, sync_batchnorm, world
from benchmark.errors import Diverged, UserError
from benchmark.models.common import flops_per_image, to_uint8

# The seed's settings; experiments/seed-dcgan.toml writes them out with its 50-epoch budget.
DEFAULTS: dict[str, Any] = {
    "z_dim": 100,
    "ngf": 64,
    "ndf": 64,
    "lr_g": 1e-4,
    "lr_d": 1e-4,
    "beta1": 0.5,
    "beta2": 0.9999,  # as the report writes it
    "sync_batchnorm": True,  # over several ranks (--nproc): BatchNorm statistics of the global batch
}
HELP = {
    "z_dim": "length of G's noise vector z",
    "ngf": "G's width: channels of its last hidden layer (x8, x4, x2, x1 from 4x4 up)",
    "ndf": "D's width: channels of its first layer",
    "lr_g": "Adam learning rate of G",
    "lr_d": "Adam learning rate of D",
    "beta1": "Adam beta1 (both nets)",
    "beta2": "Adam beta2 (both nets); the seed report's 0.9999 as written, the tutorial's 0.999",
    "sync_batchnorm": "on several ranks: BatchNorm over the global batch (as one process); false: each rank's slice",
}


class Generator(nn.Module):
    """z (N, z_dim, 1, 1) -> image (N, 3, 64, 64) in [-1, 1]: five transposed convolutions."""

    def __init__(self, z_dim: int = 100, ngf: int = 64):
        super().__init__()

        def up(cin: int, cout: int, stride: int = 2, pad: int = 1) -> list[nn.Module]:
            return [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

        self.main = nn.Sequential(
            *up(z_dim, ngf * 8, 1, 0),  # 4x4
            *up(ngf * 8, ngf * 4),  # 8x8
            *up(ngf * 4, ngf * 2),  # 16x16
            *up(ngf * 2, ngf),  # 32x32
            nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False),  # 64x64
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    """image (N, 3, 64, 64) -> probability of being real (N,): five convolutions, sigmoid output. The DCGAN
    family trains on its logits (sigmoid=False, see bce); the seed's network is the same.

    norm="layer" and sigmoid=False make it the critic of WGAN-GP, where BatchNorm would break the gradient
    penalty (it couples the samples of a batch)."""

    def __init__(self, ndf: int = 64, norm: str = "batch", sigmoid: bool = True):
        super().__init__()

        def down(cin: int, cout: int, first: bool = False) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=False)]
            if not first and norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            elif not first and norm == "layer":
                layers.append(nn.GroupNorm(1, cout))  # LayerNorm over (C, H, W), per-channel affine
            return [*layers, nn.LeakyReLU(0.2, inplace=True)]

        self.main = nn.Sequential(
            *down(3, ndf, first=True),  # 32x32; no normalisation on the first layer (Radford et al.)
            *down(ndf, ndf * 2),
            *down(ndf * 2, ndf * 4),
            *down(ndf * 4, ndf * 8),  # 4x4
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
            *([nn.Sigmoid()] if sigmoid else []),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).reshape(-1)


STANDING_BATCHES = 16  # noise batches (of 64) averaged into standing statistics: 1,024 draws of z


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) for convolutions, N(1, 0.02) for BatchNorm scales (Radford et al.)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's BCE of sigmoid(logits), computed from the logits in fp32 (outside autocast). BCE on the
    probabilities, as the seed and the PyTorch tutorial write it, clamps them at 1e-12 in its gradient: once D
    rejects fakes with a logit below about -28 (loss_g > 28), G's gradient shrinks 1,600-fold at -35, and the
    seed's settings on celeba-sample trapped G there within 6 epochs (docs/results/cpu-celeba-sample)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def _check_finite(*outputs: torch.Tensor) -> None:
    """A NaN or infinite output of D would train on silently; name the cause, a diverged discriminator."""
    if not all(torch.isfinite(o).all() for o in outputs):
        raise Diverged("training diverged: the discriminator's output became NaN or infinite")


class DCGAN:
    """The family interface: build, train_step, sample, state_dict/load_state_dict, FLOPs."""

    name = "dcgan"
    sample_nfe = 1  # network evaluations per generated image

    def __init__(self, spec, device: torch.device, precision: str):
        if spec.resolution != 64:
            raise UserError(f"dcgan is built for 64x64 images; got resolution {spec.resolution}")
        self.device, self.precision = device, precision
        self.z_dim = spec.z_dim
        self.memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        torch.manual_seed(spec.seed)
        self.G = Generator(spec.z_dim, spec.ngf).apply(dcgan_init).to(device, memory_format=self.memory_format)
        self.D = self._discriminator(spec).apply(dcgan_init).to(device, memory_format=self.memory_format)
        if spec.sync_batchnorm:  # over K ranks, the global batch's statistics, as one process would have
            self.G, self.D = sync_batchnorm(self.G), sync_batchnorm(self.D)
        betas = (spec.beta1, spec.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=spec.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=spec.lr_d, betas=betas)
        # Training noise has its own generator so that evaluation never shifts the training stream.
        self.noise = torch.Generator(device="cpu").manual_seed(spec.seed + 1)
        self.seed = spec.seed
        self.bn = spec.eval.get("bn", "standing")
        self._sampling_g: tuple[str, nn.Module] | None = None  # (bn, G as it samples); rebuilt after a step
        self._flops: dict[str, float] = {}

    def _discriminator(self, spec) -> nn.Module:
        return Discriminator(spec.ndf, sigmoid=False)  # logits: the sigmoid is inside the loss (bce)

    def _z(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.z_dim, 1, 1, generator=generator).to(self.device)

    def _z_shard(self, n: int) -> torch.Tensor:
        """Training noise for this rank's n: drawn for the global batch, so K ranks draw what one process does."""
        return shard(self._z(n * world().size, self.noise))

    def train_step(self, real: torch.Tensor, **_) -> dict[str, float]:
        """One D step then one G step (non-saturating loss), as in the seed."""
        self._sampling_g = None
        real = real.to(self.device, memory_format=self.memory_format, non_blocking=True)
        n = real.shape[0]
        ones = torch.ones(n, device=self.device)
        zeros = torch.zeros(n, device=self.device)
        z = self._z_shard(n)

        self.opt_d.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            d_real = self.D(real)
            fake = self.G(z)
            d_fake = self.D(fake.detach())
        _check_finite(d_real, d_fake)
        loss_d = bce(d_real, ones) + bce(d_fake, zeros)
        loss_d.backward()
        average_gradients(self.D.parameters())
        self.opt_d.step()

        self.opt_g.zero_grad(set_to_none=True)
        # D's weight gradients from G's loss are thrown away by the next zero_grad; not computing them
        # leaves every number unchanged and skips a third of the backward work through D.
        self.D.requires_grad_(False)
        with autocast(self.device, self.precision):
            d_fake_g = self.D(fake)
        _check_finite(d_fake_g)
        loss_g = bce(d_fake_g, ones)
        loss_g.backward()
        average_gradients(self.G.parameters())
        self.D.requires_grad_(True)
        self.opt_g.step()
        return {
            "loss_d": loss_d.item(),
            "loss_g": loss_g.item(),
            "d_x": torch.sigmoid(d_real.float()).mean().item(),
            "d_g_z": torch.sigmoid(d_fake.float()).mean().item(),
        }

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n images as uint8 (n, 3, 64, 64) from G with the BatchNorm statistics of `self.bn`."""
        with autocast(self.device, self.precision):
            images = self.sampling_generator()(self._z(n, generator))
        return to_uint8(images)

    def sampling_generator(self) -> nn.Module:
        """G as it samples, on a copy so that nothing of training changes (weights, running statistics,
        optimizer, RNG streams). Early in training the running averages still hold their N(0, 1) start while
        the N(0, 0.02) init keeps pre-BN variances far below 1: eval-mode samples are then flat grey tiles
        that measure BatchNorm's warm-up, not G. Hence the default, standing statistics (Brock et al. 2019):
        the running averages recomputed in train mode from fresh noise, then eval mode."""
        if self._sampling_g is not None and self._sampling_g[0] == self.bn:
            return self._sampling_g[1]
        g = local_batchnorm(copy.deepcopy(self.G))  # rank 0 samples alone: no statistics over ranks
        if self.bn == "running":
            g.eval()
        elif self.bn == "standing":
            for module in g.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.reset_running_stats()
                    module.momentum = None  # a plain average over the noise batches
            noise = torch.Generator().manual_seed(self.seed + 4242)  # its own stream: training never sees it
            with torch.no_grad(), autocast(self.device, self.precision):
                for _ in range(STANDING_BATCHES):
                    g(self._z(64, noise))
            g.eval()
        self._sampling_g = (self.bn, g)  # "batch": train mode, each batch normalised by its own statistics
        return g

    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "noise": self.noise.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sampling_g = None
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.noise.set_state(state["noise"])

    def flops_per_train_image(self) -> float:
        """Forward + backward FLOPs of one training image: D on real and fake, G, D again for G's loss."""
        real = torch.zeros(2, 3, 64, 64, device=self.device)
        z = torch.zeros(2, self.z_dim, 1, 1, device=self.device)

        def step() -> None:  # the work of train_step, D's skipped weight gradients included
            fake = self.G(z)
            (self.D(real).sum() + self.D(fake.detach()).sum()).backward()
            self.D.requires_grad_(False)
            self.D(fake).sum().backward()
            self.D.requires_grad_(True)

        return flops_per_image(self._flops, "train", step, [self.G, self.D])

    def flops_per_sample(self) -> float:
        z = torch.zeros(2, self.z_dim, 1, 1, device=self.device)

        def forward() -> None:
            with torch.no_grad():
                self.G(z)

        return flops_per_image(self._flops, "sample", forward, [self.G, self.D])
