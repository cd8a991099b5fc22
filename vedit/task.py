"""EditTask (one cell of work) and EditResult (what an editor returns)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vedit.video import Video

# Side data conventions (all tensors on CPU, float32, at the video's resolution):
#   flow_fwd  (T-1, 2, H, W)  pixel p of frame t moves to p + flow_fwd[t](p) in frame t+1 (dx, dy)
#   flow_bwd  (T-1, 2, H, W)  pixel p of frame t+1 comes from p + flow_bwd[t](p) in frame t
#   occ_fwd   (T-1, 1, H, W)  1 where a pixel of frame t is not visible in frame t+1
#   occ_bwd   (T-1, 1, H, W)  1 where a pixel of frame t+1 is not visible in frame t
#   depth     (T, 1, H, W)    larger = nearer (disparity-like), as DPT predicts
#   mask      (T, 1, H, W)    subject mask in {0, 1}
#   correspondence (T, 2, H, W)  (x, y) pixel coordinates in frame 0 of each pixel; NaN where none
SIDE_KEYS = ("flow_fwd", "flow_bwd", "occ_fwd", "occ_bwd", "depth", "mask", "correspondence")


@dataclass
class EditTask:
    video: Video
    source_prompt: str
    target_prompt: str
    seed: int = 0
    side: dict[str, torch.Tensor] = field(default_factory=dict)
    dataset: str = ""
    prompt_category: str | None = None  # the target prompt's category where the suite gives one (TGVE)

    def __post_init__(self) -> None:
        unknown = set(self.side) - set(SIDE_KEYS)
        if unknown:
            raise ValueError(f"EditTask side data has unknown keys {sorted(unknown)}; known: {SIDE_KEYS}")


@dataclass
class EditResult:
    frames: torch.Tensor  # (T, 3, H, W) float in [0, 1] or uint8, CPU
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    peak_memory_bytes: int = 0
    info: dict = field(default_factory=dict)
