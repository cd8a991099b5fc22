"""DOVER's network (Wu et al., ICCV 2023), written from its description and the released layout.

Two branches, each a backbone and a VQA head, scoring one view of the video:
- technical: the Video Swin Transformer (tiny) of FAST-VQA, with its "gated relative position bias":
  in the stages marked `frag_biases`, attention between tokens of the same fragment (the 7x7 grid of
  32 px fragments the view is built of) reads a second relative-position table. The gate is DOVER's
  own: `gate = |fragment(i) - fragment(j)|_1` per token pair, bias = `table * gate + frag_table *
  (1 - gate)` (so the gate is not clamped to 1: tokens two fragments apart get `2 * table - frag_table`).
- aesthetic: ConvNeXt-tiny inflated to 3D (stem 2x4x4, downsampling 1x2x2, depthwise kernels
  k x 7 x 7 with k cycling through `inflate` = "131"), channels-last LayerNorm on the output map.
- VQA head: 1x1x1 conv -> GELU -> 1x1x1 conv to one score per position (no pooling; dropout is
  inactive at inference and holds no weights).

Module names follow the released checkpoint (`DOVER.pth`: `technical_backbone.layers.0.blocks.1.attn.qkv.weight`,
`aesthetic_backbone.stages.2.4.dwconv.weight`, `technical_head.fc_hid.weight`, ...); the one difference
is that Swin's `relative_position_index` is computed, not stored (see `vedit.metrics.dover.dover_to_vedit`).
torchvision's `swin3d_t` has the same Swin-T geometry but no slot for the second table and its gate,
so its block cannot run DOVER's technical branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SwinSpec:
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window: tuple[int, int, int] = (8, 7, 7)
    patch: tuple[int, int, int] = (2, 4, 4)
    mlp_ratio: float = 4.0
    frag_biases: tuple[bool, ...] = (True, True, True, False)

    @property
    def out_dim(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)


@dataclass(frozen=True)
class ConvNeXtSpec:
    dims: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (3, 3, 9, 3)
    inflate: str = "131"


@dataclass(frozen=True)
class DoverArch:
    technical: SwinSpec = SwinSpec()
    aesthetic: ConvNeXtSpec = ConvNeXtSpec()
    head_hidden: int = 64


DOVER_ARCH = DoverArch()  # DOVER.pth: swin_tiny_grpb + conv_tiny, heads 768 -> 64 -> 1
TINY_ARCH = DoverArch(SwinSpec(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window=(2, 2, 2)),
                      ConvNeXtSpec(dims=(8, 16, 32, 64), depths=(1, 1, 3, 1)), head_hidden=8)


# --- technical branch: Video Swin with the fragment-gated bias -------------------------------------------

def window_partition(x: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """(B, D, H, W, C) -> (B * windows, wd * wh * ww, C), windows in (d, h, w) order."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window[0], window[0], h // window[1], window[1], w // window[2], window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: tuple[int, int, int], b: int, d: int, h: int, w: int) -> torch.Tensor:
    x = windows.view(b, d // window[0], h // window[1], w // window[2], *window, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def fit_window(size: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]) -> tuple[tuple, tuple]:
    """A window (and no shift) no larger than the feature map along each axis."""
    win, sh = list(window), list(shift)
    for i, s in enumerate(size):
        if s <= window[i]:
            win[i], sh[i] = s, 0
    return tuple(win), tuple(sh)


def relative_position_index(window: tuple[int, int, int]) -> torch.Tensor:
    """(N, N) index into the (2wd-1)(2wh-1)(2ww-1) table for the N = wd*wh*ww tokens of a window."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in window], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + torch.tensor([s - 1 for s in window])
    return rel[..., 0] * (2 * window[1] - 1) * (2 * window[2] - 1) + rel[..., 1] * (2 * window[2] - 1) + rel[..., 2]


@lru_cache(maxsize=64)
def shift_mask(d: int, h: int, w: int, window: tuple, shift: tuple, device: torch.device) -> torch.Tensor:
    """(windows, N, N) 0 / -100 mask of the shifted windows (regions as Swin labels them)."""
    labels = torch.zeros(1, d, h, w, 1, device=device)
    n = 0
    for sd in (slice(-window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for sh in (slice(-window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            for sw in (slice(-window[2]), slice(-window[2], -shift[2]), slice(-shift[2], None)):
                labels[:, sd, sh, sw, :] = n
                n += 1
    win = window_partition(labels, window).squeeze(-1)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@lru_cache(maxsize=64)
def fragment_gate(d: int, h: int, w: int, window: tuple, shift: tuple, device: torch.device) -> torch.Tensor:
    """(windows, N, N) integer gate: the L1 distance between the fragments of two tokens of a window.

    Fragments are a (1, wh, ww) grid over the (d, h, w) map, nearest-resized to it, shifted with the
    tokens. DOVER ties the grid to the window size (7 x 7, the view's 7 x 7 fragments)."""
    grid = torch.stack(torch.meshgrid(torch.arange(1), torch.arange(window[1]), torch.arange(window[2]),
                                      indexing="ij")).float()
    coords = F.interpolate(grid[None].to(device), size=(d, h, w)).long().permute(0, 2, 3, 4, 1)
    coords = torch.roll(coords, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    win = window_partition(coords, window)
    return (win[:, None, :] - win[:, :, None]).abs().sum(-1)


class WindowAttention3D(nn.Module):
    def __init__(self, dim: int, window: tuple[int, int, int], num_heads: int, frag_bias: bool) -> None:
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.scale = (dim // num_heads) ** -0.5
        size = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(size, num_heads))
        if frag_bias:
            self.fragment_position_bias_table = nn.Parameter(torch.zeros(size, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _bias(self, table: torch.Tensor, n: int) -> torch.Tensor:
        # DOVER indexes the full window's table with its first n x n entries, also for shrunk windows
        idx = self.relative_position_index[:n, :n].reshape(-1)
        return table[idx].reshape(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, gate: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self._bias(self.relative_position_bias_table, n).unsqueeze(0)
        if hasattr(self, "fragment_position_bias_table"):
            g = gate.unsqueeze(1)
            bias = bias * g + self._bias(self.fragment_position_bias_table, n) * (1 - g)
        nw = gate.shape[0]
        attn = (attn.view(b // nw, nw, self.num_heads, n, n) + bias.unsqueeze(0)).view(-1, self.num_heads, n, n)
        if mask is not None:
            attn = attn.view(b // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock3D(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: tuple, shift: tuple, mlp_ratio: float,
                 frag_bias: bool) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window, num_heads, frag_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        window, shift = fit_window((d, h, w), self.window, self.shift)
        x = self.norm1(x)
        pads = [(window[i] - s % window[i]) % window[i] for i, s in enumerate((d, h, w))]
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        _, dp, hp, wp, _ = x.shape
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        gate = fragment_gate(dp, hp, wp, window, shift, x.device)
        out = self.attn(window_partition(x, window), mask if shifted else None, gate)
        x = window_reverse(out.view(-1, *window, c), window, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w].contiguous()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self._attend(x, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:4]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window: tuple, mlp_ratio: float, frag_bias: bool,
                 downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.shift = tuple(s // 2 for s in window)
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, num_heads, window, (0, 0, 0) if i % 2 == 0 else self.shift, mlp_ratio, frag_bias)
            for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        window, shift = fit_window((d, h, w), self.window, self.shift)
        padded = [math.ceil(s / window[i]) * window[i] for i, s in enumerate((d, h, w))]
        mask = shift_mask(*padded, window, shift, x.device)
        x = x.permute(0, 2, 3, 4, 1)
        for block in self.blocks:
            x = block(x, mask)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 4, 1, 2, 3)


class PatchEmbed3D(nn.Module):
    def __init__(self, patch: tuple[int, int, int], embed_dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = x.shape[2:]
        pd, ph, pw = [(-s) % p for s, p in zip((d, h, w), self.patch)]
        if pd or ph or pw:
            x = F.pad(x, (0, pw, 0, ph, 0, pd))
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class FragmentSwin3D(nn.Module):
    """DOVER's technical backbone: (B, 3, T, H, W) -> (B, C, T/2, H/32, W/32), final LayerNorm applied."""

    def __init__(self, spec: SwinSpec = SwinSpec()) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed3D(spec.patch, spec.embed_dim)
        n = len(spec.depths)
        self.layers = nn.ModuleList(
            SwinStage(spec.embed_dim * 2 ** i, spec.depths[i], spec.num_heads[i], spec.window, spec.mlp_ratio,
                      bool(spec.frag_biases[i]), downsample=i < n - 1) for i in range(n))
        self.norm = nn.LayerNorm(spec.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


# --- aesthetic branch: ConvNeXt-3D ---------------------------------------------------------------------------

class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over dim 1 of (B, C, ...), as ConvNeXt writes it (biased variance, eps 1e-6)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        shape = (-1,) + (1,) * (x.ndim - 2)
        return self.weight.view(shape) * ((x - u) / torch.sqrt(s + self.eps)) + self.bias.view(shape)


class ConvNeXtBlock3D(nn.Module):
    def __init__(self, dim: int, t_kernel: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv3d(dim, dim, kernel_size=(t_kernel, 7, 7), padding=(t_kernel // 2, 3, 3), groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 4, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 4, 1, 2, 3)


class ConvNeXt3D(nn.Module):
    """DOVER's aesthetic backbone: (B, 3, T, H, W) -> (B, C, T/2, H/32, W/32), final LayerNorm applied."""

    def __init__(self, spec: ConvNeXtSpec = ConvNeXtSpec()) -> None:
        super().__init__()
        dims = spec.dims
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv3d(3, dims[0], kernel_size=(2, 4, 4), stride=(2, 4, 4)),
                           ChannelsFirstLayerNorm(dims[0]))]
            + [nn.Sequential(ChannelsFirstLayerNorm(dims[i]),
                             nn.Conv3d(dims[i], dims[i + 1], kernel_size=(1, 2, 2), stride=(1, 2, 2)))
               for i in range(len(dims) - 1)])
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock3D(dims[i], int(spec.inflate[j % len(spec.inflate)]))
                            for j in range(spec.depths[i])]) for i in range(len(dims)))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


# --- heads and the two-branch model ---------------------------------------------------------------------------

class VQAHead(nn.Module):
    """Per-position quality: (B, C, t, h, w) -> (B, 1, t, h, w)."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.fc_hid = nn.Conv3d(in_channels, hidden, 1)
        self.gelu = nn.GELU()
        self.fc_last = nn.Conv3d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_last(self.gelu(self.fc_hid(x)))


class DoverModel(nn.Module):
    """`model(technical_view, aesthetic_view)` -> (technical, aesthetic) scores: each head's output averaged
    over clips and positions, as `[r.mean() for r in DOVER(views)]`."""

    def __init__(self, arch: DoverArch = DOVER_ARCH) -> None:
        super().__init__()
        self.arch = arch
        self.technical_backbone = FragmentSwin3D(arch.technical)
        self.aesthetic_backbone = ConvNeXt3D(arch.aesthetic)
        self.technical_head = VQAHead(arch.technical.out_dim, arch.head_hidden)
        self.aesthetic_head = VQAHead(arch.aesthetic.dims[-1], arch.head_hidden)

    def forward(self, technical: torch.Tensor, aesthetic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.technical_head(self.technical_backbone(technical)).mean()
        a = self.aesthetic_head(self.aesthetic_backbone(aesthetic)).mean()
        return t, a
