"""VideoSwap-style layout: <root>/<category>/<video>/frames/* with prompts per video or global.

Accepted layout (ids are "<category>/<video>"):

    root/
      prompts.yaml                      optional global file, `videos:` layout keyed by "<category>/<video>"
      <category>/<video>/frames/00000.jpg ...
      <category>/<video>/masks/00000.png ...   optional subject masks, one per frame (non-zero = subject)
      <category>/<video>/prompts.yaml   optional per-video file: {source_prompt: ..., edit_prompts: [...]}

A per-video file wins over the global one. `prompts` names the global file: under root, else as given
(a suite file such as benchmarks/suites/videoswap.yaml); only the default `prompts.yaml` may be absent.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from vedit.data.base import Dataset, VideoItem, check_frame_rate
from vedit.data.davis import read_masks
from vedit.data.prompts import PromptEntry, load_prompts
from vedit.data.transforms import Transform
from vedit.registry import DATASETS
from vedit.video import VideoError


@DATASETS.register("videoswap")
class VideoSwapDataset(Dataset):
    name = "videoswap"

    def __init__(self, root: str | Path, prompts: str | Path | None = "prompts.yaml",
                 transform: Transform | None = None, frame_rate: float = 10.0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise VideoError(f"videoswap root {self.root} is not a folder")
        global_file = None
        if prompts is not None:
            global_file = self.root / prompts if (self.root / prompts).exists() else Path(prompts)
            if not global_file.exists():
                if str(prompts) != "prompts.yaml":
                    raise VideoError(f"videoswap prompts file {prompts} is neither under {self.root} nor at that "
                                     "path; fix data.prompts (or null for per-video prompts.yaml files only)")
                global_file = None
        self.prompts = load_prompts(global_file)
        self.ids = sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in self.root.glob("*/*/frames") if p.is_dir())
        if not self.ids:
            raise VideoError(f"videoswap root {self.root} has no <category>/<video>/frames folders")
        self.transform = transform
        self.frame_rate = check_frame_rate(frame_rate)

    def video_ids(self) -> list[str]:
        return list(self.ids)

    def prompt_entry(self, video_id: str) -> PromptEntry | None:
        file = self.root / video_id / "prompts.yaml"
        if not file.exists():
            return self.prompts.get(video_id)
        data = yaml.safe_load(file.read_text()) or {}
        if not isinstance(data, dict):
            raise VideoError(f"videoswap prompts {file} must be a mapping with source_prompt and edit_prompts")
        return load_prompts({"videos": {video_id: data}})[video_id]

    def load(self, video_id: str) -> VideoItem:
        if video_id not in self.ids:
            raise VideoError(f"videoswap root {self.root} has no video {video_id!r}")
        video = self.read(self.root / video_id / "frames", video_id)
        masks = read_masks(self.root / video_id / "masks", video)
        return self.item(video, self.prompt_entry(video_id), {} if masks is None else {"mask": masks})

    def describe(self) -> dict:
        return {**super().describe(), "root": self.root.name}
