"""Backward warping by optical flow, forward-backward occlusion, flow chaining and resizing.

Flow is in pixels, channels (dx, dy), on pixel centres: pixel (x, y) of a (H, W) image sits at
integer coordinates x in [0, W-1], y in [0, H-1]. See `vedit.task` for the flow conventions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_grid(height: int, width: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 2, H, W) pixel-centre coordinates (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                            torch.arange(width, dtype=dtype, device=device), indexing="ij")
    return torch.stack([xs, ys])[None]


def _check_flow(image: torch.Tensor, flow: torch.Tensor) -> None:
    if image.ndim != 4 or flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"backward_warp needs image (B, C, H, W) and flow (B, 2, H, W); "
                         f"got {tuple(image.shape)} and {tuple(flow.shape)}")
    if image.shape[-2:] != flow.shape[-2:] or image.shape[0] != flow.shape[0]:
        raise ValueError(f"backward_warp: image {tuple(image.shape)} and flow {tuple(flow.shape)} differ in "
                         "batch or size; resize the flow with resize_flow first")


def backward_warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear",
                  padding_mode: str = "border") -> torch.Tensor:
    """Sample `image` at p + flow(p) for every pixel p (`padding_mode` outside the frame: border or zeros).

    With `flow = flow_fwd[t]` and `image = frame[t + 1]`, the result is frame t+1 brought back to
    frame t's pixel grid.
    """
    _check_flow(image, flow)
    h, w = image.shape[-2:]
    coords = pixel_grid(h, w, flow.dtype, flow.device) + flow
    # align_corners=True: -1 and +1 are the centres of the first and last pixels.
    gx = 2.0 * coords[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * coords[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def outside_frame(flow: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: where p + flow(p) leaves the frame (beyond the outer pixel edges)."""
    h, w = flow.shape[-2:]
    target = pixel_grid(h, w, flow.dtype, flow.device) + flow
    x, y = target[:, :1], target[:, 1:]
    return (x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5)


OCCLUSION_RULE = ("forward-backward check (Sundaram et al. 2010, as Lai et al. 2018): occluded where "
                  "|f + b(p+f)|^2 > 0.01 (|f|^2 + |b(p+f)|^2) + 0.5 (pixels^2) or p + f leaves the frame")


def _fb_occlusion(flow: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    other_at_target = backward_warp(other, flow)
    diff = (flow + other_at_target).square().sum(1, keepdim=True)
    bound = 0.01 * (flow.square().sum(1, keepdim=True) + other_at_target.square().sum(1, keepdim=True)) + 0.5
    return ((diff > bound) | outside_frame(flow)).float()


def occlusion_masks(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-backward consistency check -> (occ_fwd, occ_bwd), (N, 1, H, W) float in {0, 1}.

    A pixel of frame t is occluded in t+1 where |f + b(p + f)|^2 > 0.01 (|f|^2 + |b(p + f)|^2) + 0.5
    (squared norms in pixels^2, Sundaram et al. 2010 as used by Lai et al. 2018's warp error; see
    OCCLUSION_RULE) or where p + f leaves the frame; the same with the roles swapped for occ_bwd.
    """
    if flow_fwd.shape != flow_bwd.shape:
        raise ValueError(f"occlusion_masks: flow_fwd {tuple(flow_fwd.shape)} and flow_bwd "
                         f"{tuple(flow_bwd.shape)} must have the same shape")
    return _fb_occlusion(flow_fwd, flow_bwd), _fb_occlusion(flow_bwd, flow_fwd)


RERENDER_OCCLUSION_RULE = ("forward-backward check of the Rerender-A-Video released code (UnFlow's constants, plain "
                           "norms): occluded where |f + b(p+f)| > 0.01 (|f(p)| + |b(p)|) + 0.5 (pixels), b(p+f) "
                           "zero outside the frame")


def rerender_occlusion(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The released Rerender-A-Video code's forward-backward check -> (occ_fwd, occ_bwd), (N, 1, H, W) float.

    Plain (not squared) norms, one threshold 0.01 (|f(p)| + |b(p)|) + 0.5 for both directions (both flows
    read at p itself), the other flow sampled bilinearly with zeros outside the frame (so a pixel leaving
    the frame is occluded once its flow exceeds about 0.5 px). See RERENDER_OCCLUSION_RULE.
    """
    if flow_fwd.shape != flow_bwd.shape:
        raise ValueError(f"rerender_occlusion: flow_fwd {tuple(flow_fwd.shape)} and flow_bwd "
                         f"{tuple(flow_bwd.shape)} must have the same shape")
    f, b = flow_fwd.float(), flow_bwd.float()
    bound = 0.01 * (f.norm(dim=1, keepdim=True) + b.norm(dim=1, keepdim=True)) + 0.5
    occ_fwd = (f + backward_warp(b, f, padding_mode="zeros")).norm(dim=1, keepdim=True) > bound
    occ_bwd = (b + backward_warp(f, b, padding_mode="zeros")).norm(dim=1, keepdim=True) > bound
    return occ_fwd.float(), occ_bwd.float()


def chain_to_first(flow_bwd: torch.Tensor, occ_bwd: torch.Tensor | None = None) -> torch.Tensor:
    """Compose backward flows: (T-1, 2, H, W) -> correspondence (T, 2, H, W).

    Entry t holds, per pixel of frame t, its (x, y) coordinates in frame 0; NaN where the chain
    breaks (the pixel came from outside the frame, or from a pixel occluded per `occ_bwd`).
    Coordinates are carried by bilinear sampling renormalised over the valid neighbours.
    """
    n, _, h, w = flow_bwd.shape
    current = pixel_grid(h, w, flow_bwd.dtype, flow_bwd.device)
    out = [current[0]]
    for t in range(n):
        flow = flow_bwd[t:t + 1]
        valid = torch.isfinite(current[:, :1]).to(flow.dtype)
        filled = torch.nan_to_num(current) * valid
        weight = backward_warp(valid, flow)
        coords = backward_warp(filled, flow) / weight.clamp_min(1e-6)
        broken = (weight < 0.5) | outside_frame(flow)
        if occ_bwd is not None:
            broken |= occ_bwd[t:t + 1] > 0.5
        current = torch.where(broken, torch.full_like(coords, float("nan")), coords)
        out.append(current[0])
    return torch.stack(out)


def resize_flow(flow: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """Resize (N, 2, H, W) flow to (N, 2, *size), scaling dx by W'/W and dy by H'/H."""
    h, w = flow.shape[-2:]
    new_h, new_w = int(size[0]), int(size[1])
    if (new_h, new_w) == (h, w):
        return flow
    resized = F.interpolate(flow, size=(new_h, new_w), mode="bilinear", align_corners=False)
    scale = torch.tensor([new_w / w, new_h / h], dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)
    return resized * scale
