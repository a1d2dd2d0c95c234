"""WGAN-GP (Gulrajani et al. 2017) on the DCGAN backbone: a critic without BatchNorm, the Wasserstein
loss with a gradient penalty, n_critic critic steps per generator step. Lucic et al. 2018 found it
among the best GANs on CelebA 64 (FID about 30 at their budget)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmark.device import autocast
from benchmark.distributed import average_gradients, shard, world
from benchmark.errors import UserError
from benchmark.models.common import flops_per_image
from benchmark.models.dcgan import DCGAN, Discriminator, _check_finite
from benchmark.models.dcgan import DEFAULTS as DCGAN_DEFAULTS
from benchmark.models.dcgan import HELP as DCGAN_HELP

DEFAULTS: dict[str, Any] = {
    **DCGAN_DEFAULTS,  # the same G and widths, lr 1e-4, beta1 0.5
    "beta2": 0.9,  # Gulrajani et al. use (0.5, 0.9) for DCGAN-like nets and (0.0, 0.9) for ResNets
    "n_critic": 5,
    "gp_weight": 10.0,
    "critic_norm": "layer",  # layer | none: BatchNorm would couple the samples the penalty is taken on
}
HELP = {
    **DCGAN_HELP,
    "lr_d": "Adam learning rate of the critic",
    "beta2": "Adam beta2 (both nets); Gulrajani et al. use 0.9",
    "ndf": "the critic's width: channels of its first layer",
    "n_critic": "critic steps per generator step",
    "gp_weight": "weight of the gradient penalty (lambda)",
    "critic_norm": "normalisation in the critic: layer or none (BatchNorm would couple the penalised samples)",
}


class WGANGP(DCGAN):
    """Each train_step is one critic step on one real batch; every n_critic-th also steps the generator,
    so images_seen counts the real images the critic read, as for every other family."""

    name = "wgan-gp"

    def __init__(self, spec, device: torch.device, precision: str):
        if spec.critic_norm not in ("layer", "none"):
            raise UserError(f"critic_norm must be layer or none, got {spec.critic_norm!r}")
        if spec.n_critic < 1:
            raise UserError("n_critic must be at least 1")
        super().__init__(spec, device, precision)
        self.n_critic, self.gp_weight = spec.n_critic, spec.gp_weight
        self.critic_steps = 0

    def _discriminator(self, spec) -> nn.Module:
        return Discriminator(spec.ndf, norm=spec.critic_norm, sigmoid=False)

    def _penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """E[(||grad_x D(x_hat)|| - 1)^2] on random interpolates of real and fake."""
        alpha = shard(torch.rand(real.shape[0] * world().size, 1, 1, 1, generator=self.noise)).to(self.device)
        x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        with autocast(self.device, self.precision):
            out = self.D(x_hat)
        (grad,) = torch.autograd.grad(out.float().sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

    def train_step(self, real: torch.Tensor, **_) -> dict[str, float]:
        self._sampling_g = None
        real = real.to(self.device, memory_format=self.memory_format, non_blocking=True)
        n = real.shape[0]
        with torch.no_grad(), autocast(self.device, self.precision):
            fake = self.G(self._z_shard(n)).float()
        self.opt_d.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            d_real, d_fake = self.D(real).float(), self.D(fake).float()
        _check_finite(d_real, d_fake)
        gp = self._penalty(real, fake)
        wasserstein = d_real.mean() - d_fake.mean()
        loss_d = -wasserstein + self.gp_weight * gp
        loss_d.backward()
        average_gradients(self.D.parameters())
        self.opt_d.step()
        self.critic_steps += 1
        out = {"loss_d": loss_d.item(), "wasserstein": wasserstein.item(), "gp": gp.item()}
        if self.critic_steps % self.n_critic == 0:
            out["loss_g"] = self._generator_step(n)
        return out

    def _generator_step(self, n: int) -> float:
        self.opt_g.zero_grad(set_to_none=True)
        self.D.requires_grad_(False)  # the critic's weight gradients would be thrown away
        with autocast(self.device, self.precision):
            d_fake = self.D(self.G(self._z_shard(n))).float()
        _check_finite(d_fake)
        loss_g = -d_fake.mean()
        loss_g.backward()
        average_gradients(self.G.parameters())
        self.D.requires_grad_(True)
        self.opt_g.step()
        return loss_g.item()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "critic_steps": self.critic_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.critic_steps = state["critic_steps"]

    def flops_per_train_image(self) -> float:
        """A critic step (G forward, D on real, fake and interpolates with double backward) per image,
        plus a generator step every n_critic images."""
        # FlopCounterMode's module hooks refuse autograd.grad on a leaf; from a non-leaf the work is the same.
        real = torch.zeros(2, 3, 64, 64, device=self.device, requires_grad=True) * 1.0
        z = torch.zeros(2, self.z_dim, 1, 1, device=self.device)

        def critic() -> None:
            with torch.no_grad():
                fake = self.G(z)
            (self.D(real).sum() - self.D(fake).sum() + self._penalty(real, fake)).backward()

        def generator() -> None:
            self.D.requires_grad_(False)
            self.D(self.G(z)).sum().backward()
            self.D.requires_grad_(True)

        state = self.noise.get_state()  # the penalty draws alphas; counting must not move the stream
        nets = [self.G, self.D]
        flops = (flops_per_image(self._flops, "critic", critic, nets)
                 + flops_per_image(self._flops, "generator", generator, nets) / self.n_critic)
        self.noise.set_state(state)
        return flops
