"""Warp error and motion alignment: how well the edited video follows the source video's motion.

Named variants, each after its source (docs/METRICS.md compares them with the papers' numbers):

- `warp_error` (Lai et al., ECCV 2018): flow between consecutive *source* frames; edited frame t+1
  warped back to t (bilinear); squared error over the non-occluded pixels and the 3 channels,
  averaged per pair, then over the T-1 pairs. Occlusion: the forward-backward check of Sundaram et
  al. (`vedit.ops.warp.OCCLUSION_RULE`), or ground truth. Values in [0, 1] units (`warp_error`) and
  x255^2 (`warp_error_255`).
- `warp_error_l1` (StreamV2V's released tool): the same pairing, mean absolute error in 0-255.
- `motion_alignment` (V2VBench): minus the mean end-point error between the flow of the edited
  video and the flow of the source video, both by the same estimator (V2VBench uses GMFlow; vedit
  its own estimator, named in the record).
- `warp_mse` / `warp_mse_01`: the pooled MSE (all non-occluded pixels of all pairs at once):
  `warp_mse` as Pix2Video's paper states its Pixel-MSE (0-255 at 512x512, each edited frame warped
  to the next), `warp_mse_01` 0-1 at native resolution with edited t+1 warped to t (Rerender's scale).

Every variant names in its config the flow estimator that actually ran (never "auto"), the
occlusion rule, the resolution and the pairing. Frames may be uint8 or float in [0, 1]; pairs are
processed `chunk` at a time, so memory does not grow with the video's length.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vedit.estimators import Estimators
from vedit.metrics.base import Metric, MetricError, to_float
from vedit.ops.warp import OCCLUSION_RULE, backward_warp, resize_flow
from vedit.registry import METRICS
from vedit.task import EditTask
from vedit.video import Video, to_uint8

GT_OCCLUSION = "ground-truth occlusion of the synthetic dataset (hidden, outside, or bilinear sample mixing surfaces)"


class FlowMetric(Metric):
    """Shared parts: the estimators, the resolution, the record of which flow and occlusion ran."""

    higher_is_better = False
    pairing = "consecutive pairs (t, t+1), t = 0..T-2, of the source flow"

    def __init__(self, estimators: Estimators | None = None, size: int | None = None, chunk: int = 8) -> None:
        self.estimators = estimators or Estimators()
        self.size, self.chunk = size, int(chunk)

    def flow_method(self, task: EditTask) -> str:
        return self.estimators.flow_method_for(task)

    def device(self) -> torch.device:
        """Where the warping runs: the estimators' device (the GPU when they use one)."""
        return torch.device(self.estimators.device)

    def occlusion_rule(self, task: EditTask) -> str:
        return GT_OCCLUSION if self.flow_method(task) == "gt" and "occ_fwd" in task.side else OCCLUSION_RULE

    def resolution(self) -> str:
        return f"{self.size}x{self.size}" if self.size else "native (source) resolution"

    def models(self, task: EditTask) -> dict[str, Any]:
        return {"flow": self.flow_method(task)}

    def config(self, task: EditTask) -> dict[str, Any]:
        method = self.flow_method(task)
        flow = {"method": method}
        if method == "raft":
            flow.update(model=self.estimators.raft_name, iters=self.estimators.raft_iters)
        return {**super().config(task), "flow": flow, "occlusion": self.occlusion_rule(task),
                "resolution": self.resolution(), "pairing": self.pairing}

    def check_pairs(self, edited: torch.Tensor, task: EditTask) -> None:
        self.check_frames(edited, task, min_frames=2)
        if edited.shape[0] != task.video.num_frames:
            raise MetricError(f"{self.name}: {edited.shape[0]} edited frames for the {task.video.num_frames} source "
                              f"frames of video {task.video.id!r}; the metric pairs them frame by frame")

    def pairs(self, edited: torch.Tensor, task: EditTask, scale: float, direction: str = "t+1->t"):
        """Yield (target frame, the other frame warped onto it, valid mask) per chunk of pairs, at the
        metric's size: direction "t+1->t" warps edited[t+1] to t by flow_fwd[t] (valid where occ_fwd is 0),
        "t->t+1" warps edited[t] to t+1 by flow_bwd[t] (valid where occ_bwd is 0). The source flow is
        read a piece at a time (`Estimators.iter_flow`)."""
        fwd_dir = direction == "t+1->t"
        flow_key, occ_key = ("flow_fwd", "occ_fwd") if fwd_dir else ("flow_bwd", "occ_bwd")
        device = self.device()
        for base, flow in self.estimators.iter_flow(task, dtype=torch.float32):
            size = (self.size, self.size) if self.size else tuple(flow[flow_key].shape[-2:])
            for offset in range(0, flow[flow_key].shape[0], self.chunk):
                piece = slice(offset, offset + self.chunk)
                vectors = resize_flow(flow[flow_key][piece].to(device, torch.float32), size)
                start = base + offset
                frames = to_float(edited[start:start + vectors.shape[0] + 1].to(device))
                if tuple(frames.shape[-2:]) != size:
                    frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
                frames = frames * scale
                occ = flow[occ_key][piece].to(device, torch.float32)
                if tuple(occ.shape[-2:]) != size:
                    occ = F.interpolate(occ, size=size, mode="nearest")
                if fwd_dir:
                    yield frames[:-1], backward_warp(frames[1:], vectors), 1.0 - occ
                else:
                    yield frames[1:], backward_warp(frames[:-1], vectors), 1.0 - occ


@METRICS.register("warp_error")
class WarpError(FlowMetric):
    """Lai et al. 2018: per pair, mean squared error over non-occluded pixels and channels; mean over pairs."""

    name = "warp_error"

    def __init__(self, estimators: Estimators | None = None, size: int | None = None, chunk: int = 8) -> None:
        super().__init__(estimators, size, chunk)
        self.convention = ("Lai et al. 2018: MSE in [0, 1] (warp_error_255: x255^2) over non-occluded pixels and "
                           f"the 3 channels, per pair then mean over pairs; {self.pairing}; {self.resolution()}")

    def per_pair(self, frame: torch.Tensor, warped: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return ((warped - frame) ** 2).mean(1, keepdim=True)

    def mean_over_pairs(self, edited: torch.Tensor, task: EditTask, scale: float) -> tuple[float, list]:
        """Per pair the mean error over its non-occluded pixels, then the mean over the pairs that have
        any (a pair occluded everywhere is skipped; Lai et al.'s code would count it as 0); and the
        per-pair errors (None for those skipped)."""
        sums, counts = [], []
        for frame, warped, valid in self.pairs(edited, task, scale):
            sums.append((self.per_pair(frame, warped, valid) * valid).double().sum((1, 2, 3)).cpu())
            counts.append(valid.double().sum((1, 2, 3)).cpu())
        sums, counts = torch.cat(sums), torch.cat(counts)
        if not (counts > 0).any():
            raise MetricError(f"{self.name}: every pixel of video {task.video.id!r} is occluded; no pixel to compare")
        per_pair = sums / counts.clamp_min(1)
        series = [v if n > 0 else None for v, n in zip(per_pair.tolist(), counts.tolist())]
        return per_pair[counts > 0].mean().item(), series

    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        return self.evaluate(edited, task)[0]

    def evaluate(self, edited: torch.Tensor, task: EditTask) -> tuple[dict[str, float], dict[str, list]]:
        self.check_pairs(edited, task)
        value, per_pair = self.mean_over_pairs(edited, task, 1.0)
        return {self.name: value, f"{self.name}_255": value * 255**2}, {self.name: per_pair}


@METRICS.register("warp_error_l1")
class WarpErrorL1(WarpError):
    """StreamV2V's released tool: per pair, mean absolute error in 0-255 over non-occluded pixels."""

    name = "warp_error_l1"

    def __init__(self, estimators: Estimators | None = None, size: int | None = None, chunk: int = 8) -> None:
        super().__init__(estimators, size, chunk)
        self.convention = ("StreamV2V: L1 in 0-255 over non-occluded pixels and the 3 channels, per pair then mean "
                           f"over pairs; {self.pairing}; {self.resolution()}")

    def per_pair(self, frame: torch.Tensor, warped: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return (warped - frame).abs().mean(1, keepdim=True)

    def evaluate(self, edited: torch.Tensor, task: EditTask) -> tuple[dict[str, float], dict[str, list]]:
        self.check_pairs(edited, task)
        value, per_pair = self.mean_over_pairs(edited, task, 255.0)
        return {self.name: value}, {self.name: per_pair}


@METRICS.register("warp_mse")
class WarpMSE(FlowMetric):
    """MSE between edited frame t and edited frame t+1 warped back to t by the *source* flow, pooled.

    The squared errors are averaged over all non-occluded pixels of all pairs and the 3 channels
    together (not per pair as `warp_error`). With `size`, frames (bilinear, antialiased), flow
    (vectors scaled) and occlusion (nearest) are resized to size x size first. `scale` 255 measures
    pixel values in 0-255 (`warp_mse`, 512x512), 1 in 0-1 (`warp_mse_01`, native resolution).
    """

    DIRECTIONS = {"t->t+1": "edited[t] warped to t+1 by the source flow_bwd[t] (Pix2Video's paper: each frame "
                             "warped to the next)",
                  "t+1->t": "edited[t+1] warped to t by the source flow_fwd[t]"}

    def __init__(self, estimators: Estimators | None = None, scale: int = 255, size: int | None = 512,
                 name: str | None = None, chunk: int = 8, direction: str = "t->t+1") -> None:
        if scale not in (1, 255):
            raise MetricError(f"warp_mse: scale={scale} must be 255 (pixel values 0-255) or 1 (0-1)")
        if direction not in self.DIRECTIONS:
            raise MetricError(f"warp_mse: direction={direction!r} must be one of {', '.join(self.DIRECTIONS)}")
        super().__init__(estimators, size, chunk)
        self.scale, self.direction = scale, direction
        self.pairing = f"consecutive pairs (t, t+1) of the source flow, {direction}, all pixels of all pairs pooled"
        self.name = name or {(255, 512): "warp_mse", (1, None): "warp_mse_01"}.get(
            (scale, size), f"warp_mse_{scale}_{size or 'native'}")
        self.convention = (f"pixel values 0-{scale}, {self.resolution().replace('native (source)', 'native')}; "
                           "MSE over non-occluded pixels of all consecutive pairs pooled, "
                           f"{self.DIRECTIONS[direction]}")

    def config(self, task: EditTask) -> dict[str, Any]:
        return {**super().config(task), "scale": self.scale}

    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        self.check_pairs(edited, task)
        total = count = 0.0
        for frame, warped, valid in self.pairs(edited, task, float(self.scale), self.direction):
            total += (((warped - frame) ** 2).mean(1, keepdim=True) * valid).double().sum().item()
            count += valid.double().sum().item()
        if count == 0:
            raise MetricError(f"{self.name}: every pixel of video {task.video.id!r} is occluded; no pixel to compare")
        return {self.name: total / count}


@METRICS.register("warp_mse_01")
class WarpMSE01(WarpMSE):
    """`warp_mse` in the 0-1 convention at the native resolution (the name a metrics list can use)."""

    def __init__(self, estimators: Estimators | None = None, chunk: int = 8) -> None:
        super().__init__(estimators, scale=1, size=None, chunk=chunk, direction="t+1->t")


@METRICS.register("motion_alignment")
class MotionAlignment(FlowMetric):
    """V2VBench: minus the mean end-point error between the edited video's and the source video's flows."""

    name = "motion_alignment"
    higher_is_better = True
    pairing = "consecutive pairs (t, t+1) of each video's own flow"

    def __init__(self, estimators: Estimators | None = None, size: int | None = None, chunk: int = 8) -> None:
        super().__init__(estimators, size, chunk)
        self.convention = ("V2VBench: -mean over pixels and pairs of |flow(edited) - flow(source)| in pixels, "
                           f"both flows by the same estimator (V2VBench: GMFlow); {self.resolution()}")

    def flow_method(self, task: EditTask) -> str:
        return self.estimators.flow_method_for(_without_side(task.video))  # an estimator on both videos

    def occlusion_rule(self, task: EditTask) -> str:
        return "none (all pixels)"

    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        self.check_pairs(edited, task)
        size = (self.size, self.size) if self.size else tuple(task.video.size)
        pixels = torch.cat([_resized_uint8(c, tuple(task.video.size)) for c in edited.split(self.chunk)])
        edited_video = Video(pixels, fps=task.video.fps, id=f"{task.video.id}/edited")
        epe, device = [], self.device()
        # the source flow is cached (the warp metrics read the same); the edit's is estimated forward only
        for (_, ours), (_, theirs) in zip(self.estimators.iter_forward_flow(_without_side(edited_video)),
                                          self.estimators.iter_flow(_without_side(task.video))):
            for offset in range(0, ours.shape[0], self.chunk):
                a = resize_flow(ours[offset:offset + self.chunk].to(device, torch.float32), size)
                b = resize_flow(theirs["flow_fwd"][offset:offset + self.chunk].to(device, torch.float32), size)
                epe.append((a - b).norm(dim=1).mean((1, 2)).cpu())
        return {self.name: -torch.cat(epe).double().mean().item()}


def _resized_uint8(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Frames as uint8 at `size` (bilinear, antialiased, when they differ)."""
    if tuple(frames.shape[-2:]) != size:
        frames = F.interpolate(to_float(frames), size=size, mode="bilinear", antialias=True)
    return to_uint8(frames)


def _without_side(video: Video) -> EditTask:
    return EditTask(video=video, source_prompt="", target_prompt="")
