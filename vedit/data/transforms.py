"""The one place where videos are cut in time, cropped and resized, together with their side data."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from vedit.data.base import VideoItem
from vedit.ops.warp import resize_flow
from vedit.video import CHUNK, Video, VideoError, to_float

FLOW_KEYS = ("flow_fwd", "flow_bwd", "occ_fwd", "occ_bwd")
CROPS = ("center", "none", "keep_aspect")

log = logging.getLogger("vedit.data")


@dataclass
class Transform:
    """Frames `start, start + stride, ...` (at most `max_frames`), then crop and resize to `size` [H, W].

    crop="center" crops the largest centred window of the target aspect ratio before resizing;
    "none" resizes the whole frame to `size` (the aspect ratio may change); "keep_aspect" scales the
    short side to min(size) and rounds both sides to a multiple of `multiple` (no crop; the aspect
    ratio changes only by that rounding: 768x576 -> 704x512), as Rerender's released code does.
    The resize and crop are logged once per video and recorded (`video.meta["transform"]`).
    Side data follows: flow vectors and correspondence coordinates are scaled, masks and occlusion
    resized nearest, depth bilinear. Side data that a time cut cannot carry exactly is dropped (flow
    and occlusion when stride > 1, correspondence when start > 0), so the estimators recompute it.
    Frames are processed a chunk at a time and keep their dtype (uint8 stays uint8).
    """

    size: tuple[int, int] | list[int] | None = None
    max_frames: int | None = None
    stride: int = 1
    start: int = 0
    crop: str = "center"
    multiple: int = 64

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise VideoError(f"transform size={self.size} must be [height, width] of positive ints")
        if self.stride < 1 or self.start < 0 or (self.max_frames is not None and self.max_frames < 1):
            raise VideoError(f"transform stride={self.stride}, start={self.start}, max_frames={self.max_frames}: "
                             "stride and max_frames must be >= 1 and start >= 0")
        if self.crop not in CROPS:
            raise VideoError(f"transform crop={self.crop!r} must be one of {CROPS}")
        if self.multiple < 1:
            raise VideoError(f"transform multiple={self.multiple} must be >= 1")

    def describe(self) -> dict:
        out = {"size": list(self.size) if self.size else None, "max_frames": self.max_frames,
               "stride": self.stride, "start": self.start, "crop": self.crop}
        if self.crop == "keep_aspect":
            out["multiple"] = self.multiple
        return out

    def frames_needed(self) -> int | None:
        """How many leading frames a reader must decode (None: all)."""
        return None if self.max_frames is None else self.start + self.stride * (self.max_frames - 1) + 1

    def keeps(self, index: int, kept: int) -> bool:
        """Whether frame `index` is kept, `kept` frames having been kept before it."""
        return (index >= self.start and (index - self.start) % self.stride == 0
                and (self.max_frames is None or kept < self.max_frames))

    def geometry(self, h: int, w: int) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
        """The crop box (top, left, height, width) and output size (height, width) for an h x w frame."""
        if self.size is None:
            return (0, 0, h, w), (h, w)
        if self.crop == "keep_aspect":
            k = min(self.size) / min(h, w)
            m = self.multiple
            return (0, 0, h, w), (max(m, round(h * k / m) * m), max(m, round(w * k / m) * m))
        if self.crop == "none":
            return (0, 0, h, w), tuple(self.size)
        th, tw = self.size
        if w * th > h * tw:  # too wide
            cw = round(h * tw / th)
            return (0, (w - cw) // 2, h, cw), tuple(self.size)
        ch = round(w * th / tw)
        return ((h - ch) // 2, 0, ch, w), tuple(self.size)

    def stream(self, frames: Iterable[np.ndarray | torch.Tensor], video_id: str,
               expected: int | None = None) -> tuple[torch.Tensor, dict]:
        """Cut, crop and resize frames as they arrive ((H, W, 3) uint8 arrays or (3, H, W) tensors).

        Returns the kept frames (T, 3, H, W) in the input dtype and the geometry record. Only the
        output is held in memory (plus one chunk)."""
        out: torch.Tensor | None = None
        kept, pending, box, size, src = 0, [], None, None, None

        def flush() -> None:
            nonlocal out
            batch = torch.stack(pending)
            pending.clear()
            batch = _resize_frames(_crop(batch, box), size)
            if out is None:
                cap = len(range(self.start, expected or 0, self.stride)[: self.max_frames])
                out = torch.empty((max(cap, batch.shape[0]), *batch.shape[1:]), dtype=batch.dtype)
            while kept > out.shape[0]:  # more frames than the header said
                out = torch.cat([out, torch.empty_like(out)])
            out[kept - batch.shape[0]:kept] = batch

        index = -1
        for index, frame in enumerate(frames):
            if not self.keeps(index, kept):
                if self.max_frames is not None and kept >= self.max_frames:
                    break
                continue
            frame = torch.from_numpy(frame).permute(2, 0, 1) if isinstance(frame, np.ndarray) else frame
            if box is None:
                src = tuple(frame.shape[-2:])
                box, size = self.geometry(*src)
            elif tuple(frame.shape[-2:]) != src:
                raise VideoError(f"video {video_id!r}: frame {index} is {frame.shape[-1]}x{frame.shape[-2]}, "
                                 f"frame 0 was {src[1]}x{src[0]}; all frames must have one size")
            pending.append(frame)
            kept += 1
            if len(pending) == CHUNK:
                flush()
        if pending:
            flush()
        if out is None:
            raise VideoError(f"video {video_id!r}: transform start={self.start} is past the last of "
                             f"{index + 1} frames" if index >= 0 else f"video {video_id!r} has no frames")
        if kept < out.shape[0] * 3 // 4:
            out = out[:kept].clone()
        record = self.record(video_id, src, box, size, kept)
        return out[:kept], record

    def record(self, video_id: str, src: tuple[int, int], box, size, kept: int) -> dict:
        """What happened to the video's geometry; logged once when it changed anything."""
        h, w = src
        top, left, ch, cw = box
        info = {"source_size": [h, w], "crop_box": [top, left, ch, cw], "size": list(size), "crop": self.crop,
                "kept_area": round(ch * cw / (h * w), 4), "start": self.start, "stride": self.stride,
                "frames": kept}
        if (ch, cw) != (h, w):
            log.info("video %r: %dx%d source, centre crop %dx%d at (x=%d, y=%d) keeps %.0f%% of the frame, "
                     "resized to %dx%d (data.transform.crop=keep_aspect keeps the whole frame)",
                     video_id, w, h, cw, ch, left, top, 100 * info["kept_area"], size[1], size[0])
        elif tuple(size) != (h, w):
            log.info("video %r: %dx%d source resized to %dx%d (aspect %.3f -> %.3f)", video_id, w, h,
                     size[1], size[0], w / h, size[1] / size[0])
        return {"transform": info}

    def __call__(self, item: VideoItem) -> VideoItem:
        """Transform an item; frames a reader already transformed (meta "transform") are kept as they are."""
        video = item.video
        info = video.meta.get("transform")
        if info is None:
            pixels, record = self.stream(video.pixels, video.id, expected=video.num_frames)
            info = record["transform"]
            video = Video(pixels, fps=video.fps / self.stride if video.fps else video.fps, id=video.id,
                          meta={**video.meta, **record})
        indices = [self.start + self.stride * i for i in range(info["frames"])]
        box, size = tuple(info["crop_box"]), tuple(info["size"])
        side = self._cut_side(item.side, indices)
        if tuple(info["source_size"]) != size or box[2:] != size:
            side = {k: self._resize_side(k, v, box, size) for k, v in side.items()}
        return VideoItem(video, item.source_prompt, list(item.edit_prompts), side)

    def _cut_side(self, side: dict, indices: list[int]) -> dict:
        out = {}
        for key, value in side.items():
            if key in FLOW_KEYS:
                if self.stride == 1:
                    out[key] = value[indices[0]:indices[-1]]
            elif key == "correspondence":
                if self.start == 0:
                    out[key] = value[indices]
            else:
                out[key] = value[indices]
        return out

    @staticmethod
    def _resize_side(key: str, value: torch.Tensor, box: tuple[int, int, int, int], size) -> torch.Tensor:
        cropped = _crop(value, box)
        if key in ("flow_fwd", "flow_bwd"):
            return resize_flow(cropped, size)
        if key == "correspondence":
            return _resize_coordinates(value, box, size)
        return _resize(cropped, size, "bilinear" if key == "depth" else "nearest")


def _crop(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    return x[..., top:top + h, left:left + w]


def _resize_frames(x: torch.Tensor, size) -> torch.Tensor:
    """Frames (uint8 or float [0, 1]) resized bilinear with antialiasing, in their own dtype."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x.contiguous()
    y = F.interpolate(to_float(x), size=tuple(size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return y.mul_(255).round_().to(torch.uint8) if x.dtype == torch.uint8 else y.to(x.dtype)


def _resize(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=tuple(size), mode="nearest-exact")
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False, antialias=True).clamp(x.min(), x.max())


def _resize_coordinates(corr: torch.Tensor, box: tuple[int, int, int, int], size) -> torch.Tensor:
    """Correspondence maps: resample (nearest, NaN-safe), map values into the new grid; NaN if cropped away."""
    top, left, h, w = box
    sy, sx = size[0] / h, size[1] / w
    resampled = F.interpolate(_crop(corr, box), size=tuple(size), mode="nearest-exact")
    x = (resampled[:, 0] - left + 0.5) * sx - 0.5
    y = (resampled[:, 1] - top + 0.5) * sy - 0.5
    out = torch.stack([x, y], 1)
    outside = (x < -0.5) | (x > size[1] - 0.5) | (y < -0.5) | (y > size[0] - 0.5)  # cropped away in frame 0
    return out.masked_fill(outside[:, None], float("nan"))
