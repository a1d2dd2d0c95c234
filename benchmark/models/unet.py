"""The UNet of Ho et al. 2020 (DDPM), shared by pixel-space and latent diffusion: residual blocks with a
sinusoidal time embedding, self-attention at chosen resolutions, GroupNorm and SiLU throughout."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.distributed import GlobalDropout


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """The Transformer's sinusoidal position encoding of the diffusion step t, (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups as in DDPM; narrow test-sized models use as many as divide the channels."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def zero(module: nn.Module) -> nn.Module:
    """Zero-initialised last layer: each residual branch starts as the identity (DDPM's init)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between; temb_dim=None for the autoencoder."""

    def __init__(self, cin: int, cout: int, temb_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout) if temb_dim else None
        self.norm2, self.dropout = group_norm(cout), GlobalDropout(dropout)  # the global batch's masks
        self.conv2 = zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb is not None:
            h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the spatial positions, as in DDPM."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (n, hw, c)
        return x + self.out(a.transpose(-1, -2).reshape(n, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """(x_t (N, C, R, R), t (N,)) -> the prediction (epsilon or v), same shape as x_t.

    ch_mult sets the channels per resolution level (each level after the first halves R);
    attention sits at the resolutions listed in attn_resolutions."""

    def __init__(self, in_channels: int = 3, ch: int = 128, ch_mult: tuple[int, ...] = (1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions: tuple[int, ...] = (16,), dropout: float = 0.1,
                 resolution: int = 64):
        super().__init__()
        self.ch = ch
        temb_dim = 4 * ch
        self.temb = nn.Sequential(nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips, cur, res = [ch], ch, resolution
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(self._block(cur, ch * mult, temb_dim, dropout, res in attn_resolutions))
                cur = ch * mult
                skips.append(cur)
            if level != len(ch_mult) - 1:
                self.down.append(Downsample(cur))
                skips.append(cur)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(cur, cur, temb_dim, dropout), Attention(cur),
                                  ResBlock(cur, cur, temb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(self._block(cur + skips.pop(), ch * mult, temb_dim, dropout, res in attn_resolutions))
                cur = ch * mult
            if level != 0:
                self.up.append(Upsample(cur))
                res *= 2
        self.norm_out = group_norm(cur)
        self.conv_out = zero(nn.Conv2d(cur, in_channels, 3, padding=1))

    @staticmethod
    def _block(cin: int, cout: int, temb_dim: int, dropout: float, attention: bool) -> nn.Module:
        block = ResBlock(cin, cout, temb_dim, dropout)
        return _Sequential(block, Attention(cout)) if attention else block

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.temb(timestep_embedding(t, self.ch))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, temb)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, temb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = layer(torch.cat([h, hs.pop()], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Sequential(nn.Sequential):
    """A residual block followed by attention, both taking the time embedding."""

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, temb)
        return x
