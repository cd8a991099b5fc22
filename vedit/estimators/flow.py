"""Optical flow between consecutive frames: OpenCV DIS (offline default) and torchvision RAFT."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vedit.errors import EstimatorError
from vedit.video import frames_to_uint8, to_float

FLOW_KEYS = ("flow_fwd", "flow_bwd", "occ_fwd", "occ_bwd")
FLOW_METHODS = ("auto", "raft", "dis", "gt")
RAFT_WEIGHTS = {"raft_large": "Raft_Large_Weights", "raft_small": "Raft_Small_Weights"}


def _gray(frame: torch.Tensor) -> np.ndarray:
    return cv2.cvtColor(frames_to_uint8(frame[None])[0], cv2.COLOR_RGB2GRAY)


def _dis_map(fn, n: int, preset: int) -> None:
    """fn(dis, i) for i < n on a few threads, each with its own DIS instance (OpenCV releases the GIL;
    each pair is computed alone, so the results do not depend on the threads)."""
    local = threading.local()

    def call(i: int) -> None:
        if not hasattr(local, "dis"):
            local.dis = cv2.DISOpticalFlow_create(preset)
        fn(local.dis, i)

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1, n))) as pool:
        list(pool.map(call, range(n)))


def dis_flow(frames: torch.Tensor, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
             dtype: torch.dtype = torch.float32, backward: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """OpenCV DIS optical flow between consecutive frames -> (flow_fwd, flow_bwd), (T-1, 2, H, W).

    Frames are uint8 or float in [0, 1]; pairs on a few threads, results written into `dtype` tensors.
    `backward=False` skips the backward flow (None).
    """
    t, _, h, w = frames.shape
    fwd = torch.empty(t - 1, 2, h, w, dtype=dtype)
    bwd = torch.empty(t - 1, 2, h, w, dtype=dtype) if backward else None
    gray = [_gray(frame) for frame in frames]

    def pair(dis, i: int) -> None:
        fwd[i] = torch.from_numpy(dis.calc(gray[i], gray[i + 1], None)).permute(2, 0, 1)
        if bwd is not None:
            bwd[i] = torch.from_numpy(dis.calc(gray[i + 1], gray[i], None)).permute(2, 0, 1)

    _dis_map(pair, t - 1, preset)
    return fwd, bwd


def load_raft(name: str = "raft_large", device: str | torch.device = "cpu") -> torch.nn.Module:
    """torchvision RAFT with its weights from the torch hub cache; never downloads."""
    from torchvision.models import optical_flow

    if name not in RAFT_WEIGHTS:
        raise EstimatorError(f"unknown RAFT model {name!r}; choose one of {', '.join(RAFT_WEIGHTS)}")
    weights = getattr(optical_flow, RAFT_WEIGHTS[name]).DEFAULT
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not file.exists():
        raise EstimatorError(
            f"RAFT weights for {name} are not in the torch hub cache ({file}). Download {weights.url} "
            f"there (or set TORCH_HOME), or use the offline flow estimator: estimators.flow=dis")
    model = getattr(optical_flow, name)(weights=weights)
    return model.eval().to(device)


@torch.no_grad()
def raft_flow(frames: torch.Tensor, model: torch.nn.Module, iters: int = 12, batch_size: int = 8,
              dtype: torch.dtype = torch.float32, backward: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RAFT flow between consecutive frames -> (flow_fwd, flow_bwd).

    Frames are uint8 or float in [0, 1]. Inputs are replicate-padded to a multiple of 8 and at least
    128 (RAFT's correlation pyramid). `batch_size` pairs at a time (forward and backward in one
    call), written into `dtype` tensors: memory beyond the result does not grow with the length.
    `backward=False` skips the backward flow (None): half the compute.
    """
    device = next(model.parameters()).device
    t, _, h, w = frames.shape
    pad = (0, max(128, w + (-w) % 8) - w, 0, max(128, h + (-h) % 8) - h)
    fwd = torch.empty(t - 1, 2, h, w, dtype=dtype)
    bwd = torch.empty(t - 1, 2, h, w, dtype=dtype) if backward else None
    for i in range(0, t - 1, batch_size):
        chunk = to_float(frames[i:i + batch_size + 1])
        images = F.pad(chunk * 2 - 1, pad, mode="replicate").to(device)
        a, b = images[:-1], images[1:]
        if backward:
            a, b = torch.cat([a, b]), torch.cat([b, a])
        flow = model(a, b, num_flow_updates=iters)[-1][..., :h, :w].cpu()
        n = len(chunk) - 1
        fwd[i:i + n] = flow[:n]
        if bwd is not None:
            bwd[i:i + n] = flow[n:]
    return fwd, bwd


# ----------------------------------------------------------------------------- arbitrary frame pairs

def dis_flow_pairs(frames: torch.Tensor, pairs: list[tuple[int, int]],
                   preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV DIS flow directly between frames a and b of each pair -> (a to b, b to a), (N, 2, H, W)."""
    used = sorted({i for pair in pairs for i in pair})
    gray = {i: cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) for i, img in zip(used, frames_to_uint8(frames[used]))}
    ab, ba = [None] * len(pairs), [None] * len(pairs)

    def pair(dis, i: int) -> None:
        a, b = pairs[i]
        ab[i], ba[i] = dis.calc(gray[a], gray[b], None), dis.calc(gray[b], gray[a], None)

    _dis_map(pair, len(pairs), preset)
    return (torch.from_numpy(np.stack(ab)).permute(0, 3, 1, 2).float(),
            torch.from_numpy(np.stack(ba)).permute(0, 3, 1, 2).float())


@torch.no_grad()
def raft_flow_pairs(frames: torch.Tensor, pairs: list[tuple[int, int]], model: torch.nn.Module, iters: int = 12,
                    batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """RAFT flow directly between frames a and b of each pair -> (a to b, b to a), (N, 2, H, W).

    Padding as `raft_flow` (replicate, to a multiple of 8 and at least 128)."""
    device = next(model.parameters()).device
    h, w = frames.shape[-2:]
    pad = (0, max(128, w + (-w) % 8) - w, 0, max(128, h + (-h) % 8) - h)
    first = [a for a, _ in pairs] + [b for _, b in pairs]
    second = [b for _, b in pairs] + [a for a, _ in pairs]
    flows = []
    for i in range(0, len(first), batch_size):
        x = F.pad(to_float(frames[first[i:i + batch_size]]) * 2 - 1, pad, mode="replicate").to(device)
        y = F.pad(to_float(frames[second[i:i + batch_size]]) * 2 - 1, pad, mode="replicate").to(device)
        flows.append(model(x, y, num_flow_updates=iters)[-1].float().cpu())
    flow = torch.cat(flows)[..., :h, :w]
    n = len(pairs)
    return flow[:n].contiguous(), flow[n:].contiguous()
