"""Overlapping temporal windows for videos longer than a motion module's context.

AnimateDiff's long-video practice: run the video model on windows of `length` frames that overlap
by `overlap` frames and average the noise predictions of overlapping frames with per-position
weights at every denoising step. The defaults used here, 16-frame windows overlapping by 4 with
"pyramid" weights, match AnimateDiff-Evolved's static context options (context_length 16,
context_overlap 4, fuse method pyramid), which also blends whole noise predictions; diffusers'
FreeNoise blends inside the transformer blocks and defaults to a stride of 4 (overlap 12). With
pyramid weights and overlap k, the last k frames of one window and the first k of the next are
cross-faded linearly (weights k..1 against 1..k), so no seam.
"""

from __future__ import annotations

from typing import Callable

import torch

WEIGHTINGS = ("pyramid", "flat")


def temporal_windows(num_frames: int, length: int, overlap: int) -> list[tuple[int, int]]:
    """[(start, end)] covering 0..num_frames: stride length - overlap, the last window ending at the
    last frame (it may overlap its neighbour by more). One window when the video fits in one."""
    if length < 1 or not 0 <= overlap < length:
        raise ValueError(f"window length={length} must be >= 1 and overlap={overlap} in [0, length)")
    if num_frames <= length:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - length + 1, length - overlap))
    if starts[-1] + length < num_frames:
        starts.append(num_frames - length)
    return [(s, s + length) for s in starts]


def window_weights(length: int, weighting: str = "pyramid") -> torch.Tensor:
    """Per-position weights of one window: pyramid [1, 2, .., 2, 1] (AnimateDiff-Evolved's "pyramid") or flat."""
    if weighting == "flat":
        return torch.ones(length)
    if weighting == "pyramid":
        i = torch.arange(length, dtype=torch.float32)
        return torch.minimum(i + 1, length - i)
    raise ValueError(f"window weighting={weighting!r}; choose one of {WEIGHTINGS}")


def blend_windows(fn: Callable[[int, int], torch.Tensor], num_frames: int, windows: list[tuple[int, int]],
                  weights: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Weighted mean over windows of `fn(start, end)` (frames start..end-1 along `dim`).

    A single window is returned as `fn` computed it (no arithmetic on it).
    """
    if len(windows) == 1:
        return fn(*windows[0])
    covered = set().union(*(range(s, e) for s, e in windows))
    if len(covered) != num_frames or min(covered) != 0 or max(covered) != num_frames - 1:
        raise ValueError(f"windows {windows} do not cover frames 0..{num_frames - 1} exactly")
    out = total = None
    for start, end in windows:
        y = fn(start, end)
        if out is None:
            shape = list(y.shape)
            shape[dim] = num_frames
            out = y.new_zeros(shape)
            total = torch.zeros(num_frames, dtype=y.dtype, device=y.device)
        w = weights[: end - start].to(y.device, y.dtype)
        total[start:end] += w
        view = [1] * y.ndim
        view[dim] = end - start
        out.narrow(dim, start, end - start).add_(y * w.view(view))
    view = [1] * out.ndim
    view[dim] = num_frames
    return out / total.view(view)
