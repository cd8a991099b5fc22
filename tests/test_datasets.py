"""Datasets and transforms: DAVIS-mini and clips (when ../shared is present), mp4 folders, videoswap layout."""

from pathlib import Path

import pytest
import torch
import yaml

from vedit.data.davis import DavisDataset
from vedit.data.folder import FolderDataset
from vedit.data.synthetic import SyntheticDataset
from vedit.data.transforms import Transform
from vedit.data.videoswap import VideoSwapDataset
from vedit.ops.warp import backward_warp
from vedit.registry import DATASETS
from vedit.untrusted import UntrustedInputError
from vedit.video import VideoError, write_video

from conftest import SHARED
DAVIS = SHARED / "data" / "davis-mini"
CLIPS = SHARED / "data" / "clips"
needs_davis = pytest.mark.skipif(not DAVIS.is_dir(), reason=f"DAVIS-mini not found at {DAVIS}")
needs_clips = pytest.mark.skipif(not CLIPS.is_dir(), reason=f"clips not found at {CLIPS}")


def test_registry_names():
    assert DATASETS.get("davis") is DavisDataset and DATASETS.get("folder") is FolderDataset
    assert DATASETS.get("videoswap") is VideoSwapDataset


# --- transforms ----------------------------------------------------------------------------------

def test_transform_cuts_time_and_keeps_flow_consistent():
    item = SyntheticDataset(num_videos=1, num_frames=8, size=(64, 64)).load("synthetic_000")
    cut = Transform(max_frames=3, start=2)(item)
    assert torch.equal(cut.video.frames, item.video.frames[2:5])
    assert torch.equal(cut.side["flow_fwd"], item.side["flow_fwd"][2:4])
    assert "correspondence" not in cut.side  # refers to the original frame 0
    strided = Transform(stride=2)(item)
    assert strided.video.num_frames == 4 and "flow_fwd" not in strided.side and "mask" in strided.side


def test_transform_resize_scales_flow_so_warping_still_matches():
    item = SyntheticDataset(num_videos=1, num_frames=4, size=(64, 96)).load("synthetic_000")
    out = Transform(size=[96, 96])(item)  # centre crop 64x64 then upscale x1.5
    assert out.video.size == (96, 96)
    scaled = item.side["flow_fwd"][..., 16:80].abs().mean() * 1.5
    assert (out.side["flow_fwd"].abs().mean() - scaled).abs() < 0.05 * scaled
    assert set(out.side["mask"].unique().tolist()) <= {0.0, 1.0}
    s = out.side
    warped = backward_warp(out.video.frames[1:], s["flow_fwd"])
    valid = 1 - s["occ_fwd"]
    err = (((warped - out.video.frames[:-1]) ** 2).mean(1, keepdim=True) * valid).sum() / valid.sum()
    assert err < 3e-3


def test_transform_crop_none_and_describe():
    frames = torch.rand(2, 3, 20, 40)
    from vedit.data.base import VideoItem
    from vedit.video import Video

    out = Transform(size=[16, 16], crop="none")(VideoItem(Video(frames, 8, "x"), "s", []))
    assert out.video.size == (16, 16)
    assert Transform(size=[16, 16]).describe()["size"] == [16, 16]
    with pytest.raises(VideoError, match="crop"):
        Transform(crop="left")


# --- DAVIS and clips -----------------------------------------------------------------------------

@needs_davis
def test_davis_mini_blackswan():
    ds = DavisDataset(DAVIS, split="val")
    assert ds.video_ids() == ["blackswan"]
    item = ds.load("blackswan")
    assert item.video.num_frames == 50 and item.video.size == (480, 854)
    assert item.source_prompt is None and item.edit_prompts == []


@needs_davis
@needs_clips
def test_davis_with_clips_prompts_and_transform():
    ds = DavisDataset(DAVIS, sequences=["blackswan", "salsa"], prompts=CLIPS / "clips.yaml",
                      transform=Transform(size=[64, 64], max_frames=4))
    item = ds.load("blackswan")
    assert item.video.frames.shape == (4, 3, 64, 64)
    assert item.source_prompt.startswith("a black swan") and len(item.edit_prompts) == 4
    assert ds.load("salsa").source_prompt is None
    assert ds.describe() == {"name": "davis", "root": "davis-mini", "split": "val", "resolution": "480p",
                             "transform": Transform(size=[64, 64], max_frames=4).describe()}


def test_davis_bad_root_and_sequence(tmp_path):
    with pytest.raises(VideoError, match="JPEGImages/480p"):
        DavisDataset(tmp_path)
    (tmp_path / "JPEGImages" / "480p").mkdir(parents=True)
    with pytest.raises(VideoError, match="split file"):
        DavisDataset(tmp_path)
    with pytest.raises(VideoError, match="'bear'"):
        DavisDataset(tmp_path, sequences=["bear"]).load("bear")


@needs_clips
def test_clips_folder_with_clips_yaml():
    with pytest.raises(UntrustedInputError, match="blackswan.*davis-mini"):  # its path leaves the clips folder
        FolderDataset(CLIPS, prompts="clips.yaml")
    ds = FolderDataset(CLIPS, prompts="clips.yaml", transform=Transform(size=[64, 64], max_frames=3),
                       paths_root=CLIPS.parent)
    assert set(ds.video_ids()) == set(yaml.safe_load((CLIPS / "clips.yaml").read_text())["clips"])
    item = ds.load("car-turn")
    assert item.video.frames.shape == (3, 3, 64, 64) and item.video.fps == 10.0
    assert item.source_prompt == "a jeep car is moving on the road"
    assert ds.load("car-turn-wide").source_prompt is None


# --- folders of mp4s and frames -------------------------------------------------------------------

def test_folder_of_mp4_and_frames(tmp_path):
    frames = torch.linspace(0, 1, 5).view(5, 1, 1, 1).expand(5, 3, 32, 48).clone()
    write_video(tmp_path / "ramp.mp4", frames, fps=12)
    (tmp_path / "stills").mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40, 24), (10 * i, 0, 0)).save(tmp_path / "stills" / f"{i:05d}.png")
    (tmp_path / "prompts.yaml").write_text(
        "videos:\n  ramp:\n    source_prompt: a fading screen\n    edit_prompts: [a sunset]\n")
    ds = FolderDataset(tmp_path)
    assert ds.video_ids() == ["ramp", "stills"]
    ramp = ds.load("ramp")
    assert ramp.video.frames.shape == (5, 3, 32, 48) and ramp.video.fps == 12
    assert (ramp.video.frames.mean((1, 2, 3)) - torch.linspace(0, 1, 5)).abs().max() < 0.03
    assert ramp.source_prompt == "a fading screen" and ramp.edit_prompts == ["a sunset"]
    stills = ds.load("stills")
    assert stills.video.size == (24, 40) and stills.source_prompt is None
    assert ds.describe()["root"] == tmp_path.name


def test_folder_bad_inputs(tmp_path):
    with pytest.raises(VideoError, match="holds no videos"):
        FolderDataset(tmp_path, prompts=None)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    ds = FolderDataset(tmp_path, prompts=None)
    with pytest.raises(VideoError, match="'broken'"):
        ds.load("broken")
    (tmp_path / "prompts.yaml").write_text("just: [a list\n")
    with pytest.raises(VideoError, match="YAML"):
        FolderDataset(tmp_path)


# --- videoswap layout ----------------------------------------------------------------------------

def make_videoswap(root: Path) -> None:
    from PIL import Image

    for category, video in (("animal", "cat"), ("vehicle", "car")):
        frames = root / category / video / "frames"
        frames.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 16), (0, 40 * i, 0)).save(frames / f"{i:05d}.jpg")
    (root / "animal" / "cat" / "prompts.yaml").write_text("source_prompt: a cat\nedit_prompts: [a dog, a fox]\n")
    (root / "prompts.yaml").write_text("videos:\n  vehicle/car: {source_prompt: a car, edit_prompts: a bus}\n"
                                       "  animal/cat: {source_prompt: ignored}\n")


def test_videoswap_layout(tmp_path):
    make_videoswap(tmp_path)
    ds = VideoSwapDataset(tmp_path, transform=Transform(size=[16, 16], max_frames=2))
    assert ds.video_ids() == ["animal/cat", "vehicle/car"]
    cat = ds.load("animal/cat")
    assert cat.video.frames.shape == (2, 3, 16, 16)
    assert cat.source_prompt == "a cat" and cat.edit_prompts == ["a dog", "a fox"]  # per-video file wins
    car = ds.load("vehicle/car")
    assert car.source_prompt == "a car" and car.edit_prompts == ["a bus"]
    suite = tmp_path.parent / f"{tmp_path.name}_suite.yaml"  # a suite file outside root, as suite=videoswap gives
    suite.write_text("videos:\n  vehicle/car: {source_prompt: a red car, edit_prompts: [a tram]}\n")
    assert VideoSwapDataset(tmp_path, prompts=str(suite)).load("vehicle/car").edit_prompts == ["a tram"]
    with pytest.raises(VideoError, match="videoswap prompts file nowhere.yaml"):
        VideoSwapDataset(tmp_path, prompts="nowhere.yaml")
    with pytest.raises(VideoError, match="no <category>/<video>/frames"):
        VideoSwapDataset(tmp_path / "animal" / "cat" / "frames")
