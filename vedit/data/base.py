"""The dataset interface: an iterable of VideoItems (video, prompts, optional side data)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from vedit.video import Video, VideoError, read_video

if TYPE_CHECKING:
    from vedit.data.prompts import PromptEntry
    from vedit.data.transforms import Transform


@dataclass
class VideoItem:
    video: Video
    source_prompt: str | None
    edit_prompts: list[str]
    side: dict[str, torch.Tensor] = field(default_factory=dict)  # see vedit.task for conventions


def check_frame_rate(frame_rate: float) -> float:
    """The frame rate of frame folders (video files keep their container's), checked positive."""
    if not isinstance(frame_rate, (int, float)) or isinstance(frame_rate, bool) or not frame_rate > 0:
        raise VideoError(f"data.frame_rate={frame_rate!r}: the frames per second of frame folders, a number > 0")
    return float(frame_rate)


class Dataset(abc.ABC):
    name: str = "dataset"
    transform: Transform | None = None
    frame_rate: float | None = None  # frame folders' rate (data.frame_rate); video files keep their own

    @abc.abstractmethod
    def video_ids(self) -> list[str]:
        """Ids of the videos, in a stable order; cheap (no decoding)."""

    @abc.abstractmethod
    def load(self, video_id: str) -> VideoItem:
        """Read one video (and its prompts and side data), transformed to the configured size."""

    def __len__(self) -> int:
        return len(self.video_ids())

    def __iter__(self) -> Iterator[VideoItem]:
        for vid in self.video_ids():
            yield self.load(vid)

    def describe(self) -> dict:
        """What identifies this dataset's outputs in a cell key (name and transform)."""
        return {"name": self.name, "transform": self.transform.describe() if self.transform else None}

    def read(self, path: str | Path, video_id: str) -> Video:
        """Decode only the frames the transform keeps, transforming them as they are decoded."""
        return read_video(path, video_id=video_id, transform=self.transform, frame_rate=self.frame_rate)

    def item(self, video: Video, entry: PromptEntry | None, side: dict | None = None) -> VideoItem:
        """The VideoItem with the entry's prompts (none when missing), transformed."""
        item = VideoItem(video, entry.source_prompt if entry else None,
                         list(entry.edit_prompts) if entry else [], side or {})
        return self.transform(item) if self.transform else item
