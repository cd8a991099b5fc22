"""Rerender's key frames: which frames are keys, and flows between them."""

from __future__ import annotations

import torch

from vedit.ops.warp import chain_to_first, pixel_grid


def key_frame_indices(num_frames: int, key_interval: int) -> list[int]:
    """0, K, 2K, ... and the last frame."""
    keys = list(range(0, num_frames, key_interval))
    return keys if keys[-1] == num_frames - 1 else keys + [num_frames - 1]


def chained_flow(flow_bwd: torch.Tensor, occ_bwd: torch.Tensor, src: int,
                 dst: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow (1, 2, H, W) from frame src to an earlier frame dst (pixel p of src sits at p + flow in
    dst), chained over adjacent backward flows, and its occlusion (1, 1, H, W): 1 where the chain
    breaks."""
    return flow_from_correspondence(chain_to_first(flow_bwd[dst:src], occ_bwd[dst:src])[-1:])


def flow_from_correspondence(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2, H, W) coordinates in another frame (NaN where none) -> (flow, occlusion)."""
    occ = torch.isnan(coords[:, :1]).float()
    return torch.nan_to_num(coords - pixel_grid(*coords.shape[-2:], coords.dtype, coords.device), nan=0.0), occ
