"""A folder of videos: mp4 (or other container) files and folders of frames, plus a prompts YAML."""

from __future__ import annotations

import logging
from pathlib import Path

from vedit.data.base import Dataset, VideoItem, check_frame_rate
from vedit.data.prompts import load_prompts
from vedit.data.transforms import Transform
from vedit.registry import DATASETS
from vedit.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoError

log = logging.getLogger("vedit.data")


def scan_videos(root: Path) -> dict[str, Path]:
    """id -> path for the video files and image-frame folders directly under `root`."""
    found = {}
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            found[path.stem] = path
        elif path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            found[path.name] = path
    return found


@DATASETS.register("folder")
class FolderDataset(Dataset):
    """Videos under `root` (file stem or folder name is the id) with prompts from `root/prompts`.

    The prompts YAML (relative to `root`, or absolute) maps video ids to prompts:

        videos:
          my_clip:                       # my_clip.mp4 or the frame folder my_clip/
            source_prompt: a man walking on the beach
            edit_prompts: [a robot walking on the beach, a man walking on the moon]

    or uses the `clips:` layout, whose `path` entries (relative to the YAML) name the video of each
    id: with them, the folder works as a clips list (e.g. ../shared/data/clips with
    prompts="clips.yaml"); a file a `path` names is that id's video only. `path` entries must stay under
    `paths_root` (default: the prompts file's folder), since a prompts file is untrusted input. A missing
    prompts file is an error naming the path; prompts=null runs without prompts (only methods that need
    none can edit then). Frame folders play at `frame_rate` frames per second (recorded as the source's fps).
    """

    name = "folder"

    def __init__(self, root: str | Path, prompts: str | Path | None = "prompts.yaml",
                 transform: Transform | None = None, paths_root: str | Path | None = None,
                 frame_rate: float = 10.0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise VideoError(f"folder dataset root {self.root} is not a folder")
        prompt_file = None if prompts is None else (self.root / prompts)
        if prompt_file is not None and not prompt_file.is_file():
            yamls = sorted(p.name for p in self.root.glob("*.y*ml"))
            raise VideoError(f"folder dataset: prompts file {prompt_file} does not exist"
                             + (f" (YAML files there: {', '.join(yamls)})" if yamls else "")
                             + "; fix data.prompts, or set data.prompts=null to run without prompts")
        self.prompts = load_prompts(prompt_file, paths=True, paths_root=paths_root)
        named = {e.path.resolve() for e in self.prompts.values() if e.path is not None}
        self.videos = {vid: p for vid, p in scan_videos(self.root).items() if p.resolve() not in named}
        self.videos.update({vid: e.path for vid, e in self.prompts.items() if e.path is not None})
        if not self.videos:
            raise VideoError(f"folder dataset {self.root} holds no videos ({', '.join(VIDEO_SUFFIXES)}) or "
                             "frame folders; add some or fix data.root")
        unmatched = sorted(set(self.prompts) - set(self.videos))
        if unmatched:
            log.warning("prompts file %s names videos that are not in %s: %s (known: %s)", prompt_file,
                        self.root, ", ".join(unmatched), ", ".join(sorted(self.videos)))
        self.transform = transform
        self.frame_rate = check_frame_rate(frame_rate)

    def video_ids(self) -> list[str]:
        return sorted(self.videos)

    def load(self, video_id: str) -> VideoItem:
        if video_id not in self.videos:
            raise VideoError(f"folder dataset {self.root} has no video {video_id!r}")
        return self.item(self.read(self.videos[video_id], video_id), self.prompts.get(video_id))

    def describe(self) -> dict:
        return {**super().describe(), "root": self.root.name}
