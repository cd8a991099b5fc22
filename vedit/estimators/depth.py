"""Monocular depth: transformers DPT."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEPTH_METHODS = ("auto", "dpt", "gt")


@torch.no_grad()
def dpt_depth(frames: torch.Tensor, model: torch.nn.Module, resolution: int = 384, batch_size: int = 8) -> torch.Tensor:
    """(T, 1, H, W) relative inverse depth (larger = nearer) from a transformers DPT model."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = []
    for i in range(0, frames.shape[0], batch_size):
        x = F.interpolate(frames[i:i + batch_size], size=(resolution, resolution), mode="bicubic",
                          align_corners=False).clamp(0, 1)
        x = ((x - 0.5) / 0.5).to(device, dtype)
        pred = model(pixel_values=x).predicted_depth.float()
        out.append(F.interpolate(pred[:, None], size=frames.shape[-2:], mode="bicubic", align_corners=False).cpu())
    return torch.cat(out)
