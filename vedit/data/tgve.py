"""LOVEU-TGVE-2023 layout: <root>/<subset>/480p_frames/<video>/*.jpg, prompts from the suite file.

    root/DAVIS_480p/480p_frames/bmx-rider/00000.jpg ...
    root/youtube_480p/480p_frames/<video>/...
    root/videvo_480p/480p_frames/<video>/...

Ids are "<subset>/<video>" (the challenge's submission layout is <subset>/<video>/<category>/). With a
suite file (benchmarks/suites/loveu-tgve-2023.yaml: per video its subset, frame count, source prompt and
edit prompts by category) the videos are the file's, in its order: a video missing on disk, or with
another number of frames than the file says, fails its cells with a message instead of shrinking the
benchmark. Without one, the subsets' folders are scanned and the cells have no prompts.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from vedit.data.base import Dataset, VideoItem, check_frame_rate
from vedit.data.prompts import load_prompts
from vedit.data.transforms import Transform
from vedit.registry import DATASETS
from vedit.untrusted import plain_name
from vedit.video import IMAGE_SUFFIXES, VideoError

SUBSETS = ("DAVIS_480p", "youtube_480p", "videvo_480p")
CATEGORIES = ("style", "object", "background", "multiple")


@DATASETS.register("tgve")
class TGVEDataset(Dataset):
    name = "tgve"

    def __init__(self, root: str | Path, prompts: str | Path | None = None, subsets: list[str] | None = None,
                 videos: list[str] | None = None, transform: Transform | None = None,
                 frame_rate: float = 10.0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise VideoError(f"tgve root {self.root} is not a folder; unzip loveu-tgve-2023.zip and point "
                             "data.root at the folder holding DAVIS_480p/, youtube_480p/ and videvo_480p/")
        unknown = sorted(set(subsets or ()) - set(SUBSETS))
        if unknown:
            raise VideoError(f"tgve subsets={unknown} unknown; choose from {list(SUBSETS)}")
        self.subsets = list(subsets or SUBSETS)
        self.transform = transform
        self.frame_rate = check_frame_rate(frame_rate)
        self.expected_frames: dict[str, int] = {}
        if prompts is None:
            self.prompts = {}
            self.ids = self._scan()
        else:
            suite = read_suite(Path(prompts))
            self.prompts = load_prompts(suite)
            self.ids = []
            for name, entry in suite["videos"].items():
                subset = entry.get("subset")
                if subset not in SUBSETS:
                    raise VideoError(f"tgve prompts {prompts}: video {name!r} has subset={subset!r}; "
                                     f"expected one of {list(SUBSETS)}")
                if subset in self.subsets:
                    self.ids.append(f"{subset}/{name}")
                    if entry.get("frames"):
                        self.expected_frames[name] = int(entry["frames"])
        if videos:
            wanted = set(videos)
            self.ids = [i for i in self.ids if i in wanted or i.split("/", 1)[1] in wanted]
            missing = wanted - set(self.ids) - {i.split("/", 1)[1] for i in self.ids}
            if missing:
                raise VideoError(f"tgve videos={sorted(missing)} are not in the suite (subsets {self.subsets})")
        if not self.ids:
            raise VideoError(f"tgve root {self.root}: no videos in subsets {self.subsets} "
                             "(expected <root>/<subset>/480p_frames/<video>/*.jpg)")

    def _scan(self) -> list[str]:
        return [f"{subset}/{folder.name}" for subset in self.subsets
                for folder in sorted((self.root / subset / "480p_frames").glob("*")) if folder.is_dir()]

    def video_ids(self) -> list[str]:
        return list(self.ids)

    def frames_dir(self, video_id: str) -> Path:
        subset, name = video_id.split("/", 1)
        return self.root / subset / "480p_frames" / name

    def load(self, video_id: str) -> VideoItem:
        if video_id not in self.ids:
            raise VideoError(f"tgve has no video {video_id!r}; ids look like 'DAVIS_480p/bmx-rider'")
        folder = self.frames_dir(video_id)
        name = video_id.split("/", 1)[1]
        if not folder.is_dir():
            raise VideoError(f"tgve video {video_id!r}: {folder} does not exist; is the challenge zip fully unpacked "
                             "into data.root?")
        expected = self.expected_frames.get(name)
        found = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if expected is not None and found != expected:
            raise VideoError(f"tgve video {video_id!r}: {found} frames in {folder}, the suite says {expected}; "
                             "re-extract the video's frames from the challenge zip")
        return self.item(self.read(folder, video_id), self.prompts.get(name))

    def describe(self) -> dict:
        return {**super().describe(), "root": self.root.name}  # subsets/videos filters keep the cells' keys


def read_suite(file: Path) -> dict:
    """The suite file's contents, its video names checked to be plain names."""
    if not file.exists():
        raise VideoError(f"tgve prompts file {file} does not exist; use benchmarks/suites/loveu-tgve-2023.yaml "
                         "(relative to the repository root) or leave prompts unset")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
        raise VideoError(f"tgve prompts file {file}: expected a 'videos' mapping (see "
                         "benchmarks/suites/loveu-tgve-2023.yaml)")
    for name in data["videos"]:  # a suite is untrusted input: its names become path parts
        plain_name(name, f"tgve prompts file {file}: video name")
    return data
