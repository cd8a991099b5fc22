"""DAVIS 2017 layout: JPEGImages/<resolution>/<sequence>/*.jpg, ImageSets/2017/<split>.txt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vedit.data.base import Dataset, VideoItem
from vedit.data.prompts import load_prompts
from vedit.data.transforms import Transform
from vedit.registry import DATASETS
from vedit.video import VideoError


@DATASETS.register("davis")
class DavisDataset(Dataset):
    """DAVIS sequences with prompts from a YAML (`videos:` or `clips:` layout; missing -> source_prompt None).

    Annotations/<resolution>/<sequence>/*.png, when present, give the subject mask (any object id > 0).
    """

    name = "davis"

    def __init__(self, root: str | Path, split: str = "val", resolution: str = "480p",
                 sequences: list[str] | None = None, prompts: str | Path | dict | None = None,
                 transform: Transform | None = None) -> None:
        self.root, self.split, self.resolution = Path(root), split, resolution
        self.frames_dir = self.root / "JPEGImages" / resolution
        if not self.frames_dir.is_dir():
            raise VideoError(f"DAVIS root {self.root} has no JPEGImages/{resolution}; point data.root at a "
                             "DAVIS 2017 folder (JPEGImages/480p/<sequence>/*.jpg)")
        self.sequences = list(sequences) if sequences else self._read_split()
        self.prompts = load_prompts(prompts)
        self.transform = transform

    def _read_split(self) -> list[str]:
        file = self.root / "ImageSets" / "2017" / f"{self.split}.txt"
        if not file.exists():
            raise VideoError(f"DAVIS split file {file} does not exist; choose split=train|val or list sequences")
        return [line.strip() for line in file.read_text().splitlines() if line.strip()]

    def video_ids(self) -> list[str]:
        return list(self.sequences)

    def load(self, video_id: str) -> VideoItem:
        folder = self.frames_dir / video_id
        if not folder.is_dir():
            raise VideoError(f"DAVIS sequence {video_id!r} is not in {self.frames_dir}")
        video = self.read(folder, video_id)
        side = {}
        masks = self.root / "Annotations" / self.resolution / video_id
        if masks.is_dir():
            side["mask"] = read_masks(masks, video.meta.get("decoded_frames", video.num_frames), video_id)
        return self.item(video, self.prompts.get(video_id), side)

    def describe(self) -> dict:
        return {**super().describe(), "root": self.root.name, "split": self.split, "resolution": self.resolution}


def read_masks(folder: Path, num_frames: int, video_id: str) -> torch.Tensor:
    """(T, 1, H, W) {0, 1} from indexed PNGs (any non-zero label is the subject)."""
    from PIL import Image

    files = sorted(folder.glob("*.png"))[:num_frames]  # the decoded leading frames
    if len(files) != num_frames:
        raise VideoError(f"DAVIS sequence {video_id!r}: {len(files)} annotation PNGs for {num_frames} frames "
                         f"in {folder}")
    arrays = [np.asarray(Image.open(f)) for f in files]
    masks = [(a if a.ndim == 2 else a.max(-1)) > 0 for a in arrays]
    return torch.from_numpy(np.stack(masks))[:, None].float()
