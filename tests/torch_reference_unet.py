"""A PyTorch U-Net with the state_dict layout of the published BUSGen model, for tests.

Written from the architecture description in tests/data/README.md's source (the reference
README of the published model) and checked against its key/shape lists; used to test that
`busgen_jax.models.torch_convert` imports such weights and reproduces the forward pass. Its
defaults are the published layout; `twin(config)` builds the same architecture as any of this
project's U-Net configs, for side-by-side speed measurements (`benchmarks/train_step.py`).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn


def interleaved_sinusoids(num_timesteps: int, dim: int) -> torch.Tensor:
    freqs = torch.exp(-torch.arange(0, dim, 2).float() / dim * math.log(10000.0))
    angles = torch.arange(num_timesteps).float()[:, None] * freqs[None, :]
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).view(num_timesteps, dim)


class AttnBlock(nn.Module):
    def __init__(self, ch: int, groups: int, num_heads: int = 1):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch)
        self.proj_q = nn.Conv2d(ch, ch, 1)
        self.proj_k = nn.Conv2d(ch, ch, 1)
        self.proj_v = nn.Conv2d(ch, ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        self.num_heads = num_heads

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.group_norm(x)
        if self.num_heads > 1:  # not published: PyTorch's fused attention over heads
            heads = lambda z: z.reshape(b, self.num_heads, c // self.num_heads, h * w).transpose(
                2, 3
            )
            q, k, v = heads(self.proj_q(y)), heads(self.proj_k(y)), heads(self.proj_v(y))
            out = nn.functional.scaled_dot_product_attention(q, k, v)
            return x + self.proj(out.transpose(2, 3).reshape(b, c, h, w))
        q = self.proj_q(y).permute(0, 2, 3, 1).reshape(b, h * w, c)
        k = self.proj_k(y).reshape(b, c, h * w)
        v = self.proj_v(y).permute(0, 2, 3, 1).reshape(b, h * w, c)
        weights = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=-1)
        out = torch.bmm(weights, v).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.proj(out)


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, emb_dim, dropout, attn, groups, num_heads=1):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.GroupNorm(groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.cond_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.block2 = nn.Sequential(
            nn.GroupNorm(groups, out_ch),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = AttnBlock(out_ch, groups, num_heads) if attn else nn.Identity()

    def forward(self, x, temb, cemb):
        h = self.block1(x)
        h = h + self.temb_proj(temb)[:, :, None, None] + self.cond_proj(cemb)[:, :, None, None]
        h = self.block2(h) + self.shortcut(x)
        return self.attn(h)


class DownSample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 5, stride=2, padding=2)

    def forward(self, x, temb, cemb):
        return self.c1(x) + self.c2(x)


class UpSample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.c = nn.Conv2d(ch, ch, 3, padding=1)
        self.t = nn.ConvTranspose2d(ch, ch, 5, stride=2, padding=2, output_padding=1)

    def forward(self, x, temb, cemb):
        return self.c(self.t(x))


class TorchUNet(nn.Module):
    """The published layout: `n_classes` and `n_devices` count the table rows (null included)."""

    def __init__(
        self,
        *,
        ch=128,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        dropout=0.15,
        n_classes=3,
        n_devices=4,
        num_timesteps=500,
        groups=32,
        image_channels=3,
        attention_levels=None,
        attention_in_up_path=False,
        middle_attention=True,
        num_heads=1,
        time_embedding="table",
    ):
        super().__init__()
        emb_dim = 4 * ch
        attention_levels = range(len(ch_mult)) if attention_levels is None else attention_levels
        self.time_embedding = nn.Module()
        table = interleaved_sinusoids(num_timesteps, ch)
        self.time_embedding.timembedding = nn.Sequential(
            # A frozen table of the sinusoids is what a sinusoidal embedding computes at integer t.
            nn.Embedding.from_pretrained(table, freeze=time_embedding != "table"),
            nn.Linear(ch, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.cond_embedding = nn.Module()
        self.cond_embedding.cls_condEmbedding = nn.Embedding(n_classes, ch)
        self.cond_embedding.dev_condEmbedding = nn.Embedding(n_devices, ch)
        self.cond_embedding.condEmbedding = nn.Sequential(
            nn.Linear(2 * ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.head = nn.Conv2d(image_channels + 1, ch, 3, padding=1)
        block = lambda i, o, attn: ResBlock(i, o, emb_dim, dropout, attn, groups, num_heads)
        self.downblocks, chs, now = nn.ModuleList(), [ch], ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.downblocks.append(block(now, ch * mult, level in attention_levels))
                now = ch * mult
                chs.append(now)
            if level != len(ch_mult) - 1:
                self.downblocks.append(DownSample(now))
                chs.append(now)
        self.middleblocks = nn.ModuleList(
            [block(now, now, middle_attention), block(now, now, False)]
        )
        self.upblocks = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            up_attn = attention_in_up_path and level in attention_levels
            for _ in range(num_res_blocks + 1):
                self.upblocks.append(block(chs.pop() + now, ch * ch_mult[level], up_attn))
                now = ch * ch_mult[level]
            if level != 0:
                self.upblocks.append(UpSample(now))
        self.tail = nn.Sequential(
            nn.GroupNorm(groups, now), nn.SiLU(), nn.Conv2d(now, image_channels, 3, padding=1)
        )

    def forward(self, x, t, class_ids, device_ids, box_mask):
        """x [B, C, H, W], t int64 [B], ids int64 [B], box_mask [B, 1, H, W]."""
        temb = self.time_embedding.timembedding(t)
        cond = self.cond_embedding
        cemb = torch.cat([cond.cls_condEmbedding(class_ids), cond.dev_condEmbedding(device_ids)], 1)
        cemb = cond.condEmbedding(cemb)
        h = self.head(torch.cat([x, box_mask], dim=1))
        skips = [h]
        for layer in self.downblocks:
            h = layer(h, temb, cemb)
            skips.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb, cemb)
        for layer in self.upblocks:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, temb, cemb)
        return self.tail(h)


def twin(config) -> TorchUNet:
    """The PyTorch U-Net with the architecture of this project's U-Net `config` (ConfigDict)."""
    return TorchUNet(
        ch=config.base_channels,
        ch_mult=tuple(config.channel_mults),
        num_res_blocks=config.num_res_blocks,
        dropout=config.dropout,
        n_classes=config.num_classes + 1,
        n_devices=config.num_devices + 1,
        num_timesteps=config.num_timesteps,
        groups=config.norm_groups,
        image_channels=config.image_channels,
        attention_levels=tuple(config.attention_levels),
        attention_in_up_path=config.attention_in_up_path,
        middle_attention=config.middle_attention,
        num_heads=config.num_heads,
        time_embedding=config.time_embedding,
    )


def published_guided_eps(net: TorchUNet, class_ids, device_ids, box_mask, guidance_weight=1.8):
    """The published sampler's network call, as a float64 NumPy `eps_fn(x, index)` for
    `dpm_solver_reference`: classifier-free guidance eps_u + (1 + w)(eps_c - eps_u) on a doubled
    batch whose unconditional half has null class and device and a zeroed box channel, and the
    timestep index cast to int64 for the time table (truncating it). Arrays are NHWC."""
    net = copy.deepcopy(net).double()  # the caller's float32 model stays as it is
    ids = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)
    null = torch.zeros(len(class_ids), dtype=torch.long)
    classes = torch.cat([ids(class_ids), null])
    devices = torch.cat([ids(device_ids), null])
    mask = torch.as_tensor(np.asarray(box_mask, np.float64)).permute(0, 3, 1, 2)
    masks = torch.cat([mask, torch.zeros_like(mask)])

    def eps_fn(x: np.ndarray, index: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(x).permute(0, 3, 1, 2)
        t = torch.as_tensor(index).long()
        with torch.no_grad():
            out = net(torch.cat([x, x]), torch.cat([t, t]), classes, devices, masks)
        cond, uncond = out.chunk(2)
        return (uncond + (1.0 + guidance_weight) * (cond - uncond)).permute(0, 2, 3, 1).numpy()

    return eps_fn
