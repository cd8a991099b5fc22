"""Image preprocessing for the metric models, as the benchmarks' reference libraries do it.

Both references resample 8-bit PIL images: the shortest side is resized to `size` with the long side
truncated (`int(size * long / short)`: 854x480 -> 398x224), then centre-cropped, scaled to [0, 1]
and normalised. They differ only in the crop offset: transformers' image processors floor
`(h - crop) / 2`, torchvision's `CenterCrop` (open_clip's transform) rounds it half to even.
`square` first resizes every frame to square x square (PIL's default filter for RGB, bicubic),
losing the aspect ratio, as LOVEU-TGVE's evaluation script does before CLIP's preprocessing.

Frames are (N, 3, H, W) uint8, or float in [0, 1] (rounded to 8 bits first, as a stored frame is).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vedit.video import to_uint8

REFERENCES = ("transformers", "open_clip")
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shortest side `size` and the other truncated, as transformers and torchvision."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize the shortest side to `size`, centre-crop `crop` (h, w), scale to [0, 1], normalise.

    `reference`: "transformers" (crop offset floored, as CLIPImageProcessor / BitImageProcessor) or
    "open_clip" (rounded half to even, as torchvision's CenterCrop); `square`: resize every frame to
    square x square first (TGVE).
    """

    size: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "bicubic"
    reference: str = "transformers"
    square: int | None = None

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f"image preprocessing reference {self.reference!r}: choose one of {', '.join(REFERENCES)}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"image preprocessing resample {self.resample!r}: choose one of {', '.join(RESAMPLE)}")
        object.__setattr__(self, "crop", tuple(int(c) for c in self.crop))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["crop"], out["mean"], out["std"] = list(self.crop), list(self.mean), list(self.std)
        return out

    def label(self) -> str:
        square = f"{self.square}x{self.square} (aspect lost), then " if self.square else ""
        crop_rule = "floor" if self.reference == "transformers" else "round"
        return (f"{square}8-bit PIL {self.resample} resize of the shortest side to {self.size} (long side truncated), "
                f"centre crop {self.crop[0]}x{self.crop[1]} (offset {crop_rule}ed, as {self.reference})")

    def _offset(self, extent: int, crop: int) -> int:
        if self.reference == "transformers":
            return (extent - crop) // 2
        return int(round((extent - crop) / 2.0))

    def image(self, pixels: np.ndarray) -> np.ndarray:
        """One (H, W, 3) uint8 frame -> (crop_h, crop_w, 3) uint8, resized and cropped."""
        img = Image.fromarray(pixels)
        if self.square:
            img = img.resize((self.square, self.square), resample=Image.Resampling.BICUBIC)
        h, w = resized_size(img.height, img.width, self.size)
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), resample=RESAMPLE[self.resample])
        ch, cw = self.crop
        if ch > h or cw > w:
            raise ValueError(f"crop {ch}x{cw} is larger than the resized frame {h}x{w}; size must be >= the crop")
        top, left = self._offset(h, ch), self._offset(w, cw)
        return np.asarray(img)[top:top + ch, left:left + cw]

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 or float in [0, 1] -> (N, 3, crop_h, crop_w) float32, normalised."""
        pixels = to_uint8(frames).permute(0, 2, 3, 1).cpu().numpy()
        workers = max(1, min(8, os.cpu_count() or 1, len(pixels)))
        if workers > 1:  # PIL resizes without the GIL; each frame alone, so the result is the same
            with ThreadPoolExecutor(workers) as pool:
                images = list(pool.map(self.image, pixels))
        else:
            images = [self.image(p) for p in pixels]
        out = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (out - mean) / std

    @classmethod
    def from_image_processor(cls, processor: Any, square: int | None = None) -> "ImagePreprocess":
        """The preprocessing a transformers image processor (CLIPImageProcessor, BitImageProcessor)
        configures: its shortest_edge, crop_size, mean, std and resample."""
        size = _get(processor.size, "shortest_edge")
        crop = processor.crop_size
        if size is None or not getattr(processor, "do_center_crop", True):
            raise ValueError(f"{type(processor).__name__}: only shortest-edge resize with a centre crop is supported "
                             f"(size={processor.size}, crop_size={crop})")
        resample = processor.resample
        names = {int(v): k for k, v in RESAMPLE.items()}
        value = int(getattr(resample, "value", resample))
        if value not in names:
            raise ValueError(f"{type(processor).__name__}: resample {resample!r} is not supported")
        return cls(size=int(size), crop=(int(_get(crop, "height")), int(_get(crop, "width"))),
                   mean=tuple(processor.image_mean), std=tuple(processor.image_std), resample=names[value],
                   reference="transformers", square=square)


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
