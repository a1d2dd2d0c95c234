"""The first stage of latent diffusion (Rombach et al. 2022): a convolutional autoencoder with a KL
penalty towards N(0, I) on its latents. With ch_mult of three levels it maps 64x64x3 to 16x16x4 (f = 4).
Reconstruction is L1 (or L2) plus a small KL; perceptual and adversarial losses need downloaded weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.distributed import shard, world
from benchmark.models.unet import Downsample, ResBlock, Upsample, group_norm


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
        cur = ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(cur, ch * mult))
                cur = ch * mult
            if level != len(ch_mult) - 1:
                layers.append(Downsample(cur))
        layers += [ResBlock(cur, cur), group_norm(cur), nn.SiLU(), nn.Conv2d(cur, 2 * z_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int):
        super().__init__()
        cur = ch * ch_mult[-1]
        layers: list[nn.Module] = [nn.Conv2d(z_channels, cur, 3, padding=1), ResBlock(cur, cur)]
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock(cur, ch * mult))
                cur = ch * mult
            if level != 0:
                layers.append(Upsample(cur))
        layers += [group_norm(cur), nn.SiLU(), nn.Conv2d(cur, 3, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class KLAutoencoder(nn.Module):
    def __init__(self, ch: int = 64, ch_mult: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1,
                 z_channels: int = 4):
        super().__init__()
        self.factor = 2 ** (len(ch_mult) - 1)
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of the diagonal Gaussian posterior over latents."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def loss(self, x: torch.Tensor, generator: torch.Generator, kl_weight: float,
             recon: str = "l1") -> tuple[torch.Tensor, dict[str, float]]:
        """LDM's objective: reconstruction summed per image + kl_weight * KL(q(z|x) || N(0, I)), batch-averaged."""
        mean, logvar = self.encode(x)
        # drawn for the global batch, then this rank's slice: K ranks draw what one process draws
        eps = shard(torch.randn((mean.shape[0] * world().size, *mean.shape[1:]), generator=generator)).to(mean.device)
        z = mean + (0.5 * logvar).exp() * eps
        rec = self.decode(z).float()
        per_pixel = (rec - x).abs() if recon == "l1" else (rec - x) ** 2
        rec_loss = per_pixel.flatten(1).sum(1).mean()
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).flatten(1).sum(1).mean()
        return rec_loss + kl_weight * kl, {"recon_l1": F.l1_loss(rec, x).item(), "kl": kl.item()}
