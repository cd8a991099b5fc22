"""DAVIS 2017 layout: JPEGImages/<resolution>/<sequence>/*.jpg, ImageSets/2017/<split>.txt."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from vedit.data.base import Dataset, VideoItem, check_frame_rate
from vedit.data.prompts import load_prompts
from vedit.data.transforms import Transform
from vedit.registry import DATASETS
from vedit.video import Video, VideoError

log = logging.getLogger(__name__)


@DATASETS.register("davis")
class DavisDataset(Dataset):
    """DAVIS sequences with prompts from a YAML (`videos:` or `clips:` layout; missing -> source_prompt None).

    Annotations/<resolution>/<sequence>/*.png, when present for every frame read, give the subject
    mask (any object id > 0), cut, cropped and resized by the transform exactly like the frames.
    """

    name = "davis"

    def __init__(self, root: str | Path, split: str = "val", resolution: str = "480p",
                 sequences: list[str] | None = None, prompts: str | Path | dict | None = None,
                 transform: Transform | None = None, frame_rate: float = 24.0) -> None:
        self.root, self.split, self.resolution = Path(root), split, resolution
        self.frames_dir = self.root / "JPEGImages" / resolution
        if not self.frames_dir.is_dir():
            raise VideoError(f"DAVIS root {self.root} has no JPEGImages/{resolution}; point data.root at a "
                             "DAVIS 2017 folder (JPEGImages/480p/<sequence>/*.jpg)")
        self.sequences = list(sequences) if sequences else self._read_split()
        self.prompts = load_prompts(prompts)
        self.transform = transform
        self.frame_rate = check_frame_rate(frame_rate)

    def _read_split(self) -> list[str]:
        file = self.root / "ImageSets" / "2017" / f"{self.split}.txt"
        if not file.exists():
            raise VideoError(f"DAVIS split file {file} does not exist; choose split=train|val or list sequences")
        return [line.strip() for line in file.read_text().splitlines() if line.strip()]

    def video_ids(self) -> list[str]:
        return list(self.sequences)

    def load(self, video_id: str) -> VideoItem:
        folder = self.frames_dir / video_id
        if video_id not in self.sequences or not folder.is_dir():
            raise VideoError(f"DAVIS sequence {video_id!r} is not in {self.frames_dir}")
        video = self.read(folder, video_id)
        masks = read_masks(self.root / "Annotations" / self.resolution / video_id, video)
        return self.item(video, self.prompts.get(video_id), {} if masks is None else {"mask": masks})

    def describe(self) -> dict:
        return {**super().describe(), "root": self.root.name, "split": self.split, "resolution": self.resolution}


def read_masks(folder: Path, video: Video) -> torch.Tensor | None:
    """(N, 1, H, W) {0, 1} from the first N indexed PNGs of `folder` (any non-zero label is the
    subject), in the source's frame indices and size: the transform that cut and resized `video`
    while decoding (its meta "transform") cuts and resizes them the same way. None when the folder
    is absent or annotates fewer frames (e.g. DAVIS test-dev's first-frame-only annotations), with a
    warning for the latter."""
    from PIL import Image

    if not folder.is_dir():
        return None
    info = video.meta.get("transform")
    if info:
        (h, w), needed = info["source_size"], info["start"] + info["stride"] * (info["frames"] - 1) + 1
    else:
        (h, w), needed = video.size, video.num_frames
    files = sorted(folder.glob("*.png"))
    if len(files) < needed:
        log.warning("%s: %d annotation PNGs for %d frames; not used as subject masks", folder, len(files), needed)
        return None
    masks = []
    for file in files[:needed]:
        a = np.asarray(Image.open(file))
        if a.shape[:2] != (h, w):
            raise VideoError(f"video {video.id!r}: annotation {file} is {a.shape[1]}x{a.shape[0]}, frames {w}x{h}; "
                             "use the annotations of the frames' resolution")
        masks.append((a if a.ndim == 2 else a.max(-1)) > 0)
    return torch.from_numpy(np.stack(masks))[:, None].float()
