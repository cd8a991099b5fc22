"""Real footage at any length: uint8 streams, visible resizing, exact fps, truncated files, parameter
checks, exit codes and a store shared by several hosts. Generated videos, tiny backbone, seconds."""

import socket
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml

from vedit.data.base import VideoItem
from vedit.data.folder import FolderDataset
from vedit.data.synthetic import SyntheticDataset
from vedit.data.transforms import Transform
from vedit.editors.params import ParamError
from vedit.registry import EDITORS, UnknownNameError
from vedit.run import SetupError, check_config, failure_groups, open_store, run
from vedit.store import ResultStore
from vedit.video import VideoError, read_video, side_by_side, write_video

from test_run import cfg_for

REPO = Path(__file__).resolve().parents[1]
NTSC = Fraction(30000, 1001)


def write_mp4(path: Path, frames: int, width: int, height: int, fps=NTSC, faststart: bool = False) -> np.ndarray:
    """Random-block frames written with PyAV; returns them (T, H, W, 3) uint8."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (frames, height // 8, width // 8, 3), dtype=np.uint8)
    video = np.kron(blocks, np.ones((1, 8, 8, 1), dtype=np.uint8))
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "10", "g": "1"}
        for img in video:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return video


def rate_of(path: Path) -> Fraction:
    with av.open(str(path)) as c:
        return Fraction(c.streams.video[0].average_rate)


# --- memory: uint8 storage, streaming ------------------------------------------------------------

def test_read_keeps_uint8_and_frames_converts_on_demand(tmp_path):
    src = write_mp4(tmp_path / "v.mp4", 5, 64, 48)
    video = read_video(tmp_path / "v.mp4")
    assert video.pixels.dtype == torch.uint8 and video.pixels.shape == (5, 3, 48, 64)
    assert video.frames.dtype == torch.float32 and 0 <= video.frames.min() and video.frames.max() <= 1
    assert (video.frames - torch.from_numpy(src).permute(0, 3, 1, 2) / 255).abs().mean() < 0.02
    chunks = list(video.chunks(2))
    assert [c.shape[0] for c in chunks] == [2, 2, 1] and torch.equal(torch.cat(chunks), video.frames)


def test_reader_transforms_while_decoding_and_holds_only_the_output(tmp_path):
    write_mp4(tmp_path / "v.mp4", 12, 160, 64)
    t = Transform(size=[32, 32], max_frames=4, stride=2, start=1)
    video = read_video(tmp_path / "v.mp4", transform=t)
    assert video.pixels.shape == (4, 3, 32, 32) and video.pixels.dtype == torch.uint8
    assert video.meta["decoded_frames"] == 8  # frames 0..7: start + stride * (max_frames - 1) + 1
    assert video.pixels.untyped_storage().nbytes() == 4 * 3 * 32 * 32  # no leftover full-size buffer
    # the same frames as transforming the fully decoded video
    whole = Transform(size=[32, 32], max_frames=4, stride=2, start=1)(VideoItem(read_video(tmp_path / "v.mp4"), "", []))
    assert (video.pixels.float() - whole.video.pixels.float()).abs().max() <= 1


def test_identity_returns_the_stored_uint8_frames_without_a_copy(tmp_path):
    write_mp4(tmp_path / "v.mp4", 4, 64, 64)
    from vedit.task import EditTask

    video = read_video(tmp_path / "v.mp4")
    result = EDITORS.get("identity")().edit(EditTask(video, "a", "b"))
    assert result.frames.dtype == torch.uint8 and result.frames.data_ptr() == video.pixels.data_ptr()


def test_streaming_write_and_side_by_side_from_chunks(tmp_path):
    blocks = torch.randint(0, 256, (37, 3, 4, 6), dtype=torch.uint8)
    frames = blocks.repeat_interleave(8, 2).repeat_interleave(8, 3)  # 8x8 blocks survive yuv420p
    write_video(tmp_path / "a.mp4", frames, fps=NTSC)
    chunks = side_by_side(frames, frames.float() / 255, chunk=8)
    write_video(tmp_path / "sbs.mp4", chunks, fps=NTSC)
    for name, width in (("a.mp4", 48), ("sbs.mp4", 96)):
        back = read_video(tmp_path / name)
        assert back.num_frames == 37 and back.size == (32, width)
    assert (read_video(tmp_path / "sbs.mp4").frames[..., :48] - frames / 255).abs().mean() < 0.05


# --- exact frame rate -----------------------------------------------------------------------------

@pytest.mark.parametrize("fps", [NTSC, Fraction(24000, 1001), Fraction(25), Fraction(12)])
def test_written_rate_is_exact(tmp_path, fps):
    write_video(tmp_path / "v.mp4", torch.rand(3, 3, 16, 16), fps=float(fps))
    assert rate_of(tmp_path / "v.mp4") == fps


def test_run_keeps_the_source_rate(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    write_mp4(root / "clip.mp4", 4, 64, 64, fps=NTSC)
    (root / "prompts.yaml").write_text("videos:\n  clip: {source_prompt: a wall, edit_prompts: [a red wall]}\n")
    summary = run(cfg_for(tmp_path, "method=identity", "data=folder", f"data.root={root}", "metrics.names=[]",
                          base=("backbone=tiny", "metrics=tiny")))
    cell = tmp_path / "store" / "cells" / summary.records[0]["key"]
    assert rate_of(cell / "edited.mp4") == NTSC and rate_of(cell / "side_by_side.mp4") == NTSC


# --- visible resizing -----------------------------------------------------------------------------

def test_keep_aspect_scales_the_short_side_and_rounds_to_64():
    t = Transform(size=[512, 512], crop="keep_aspect")
    assert t.geometry(576, 768) == ((0, 0, 576, 768), (512, 704))
    assert t.geometry(272, 640) == ((0, 0, 272, 640), (512, 1216))  # 2.35:1 keeps its width
    assert t.geometry(144, 176) == ((0, 0, 144, 176), (512, 640))
    assert Transform(size=[512, 512]).geometry(272, 640) == ((0, 184, 272, 272), (512, 512))  # loses 57.5%


def test_keep_aspect_side_data_follows_and_warping_still_matches():
    from vedit.ops.warp import backward_warp

    item = SyntheticDataset(num_videos=1, num_frames=4, size=(48, 96)).load("synthetic_000")
    out = Transform(size=[32, 32], crop="keep_aspect", multiple=16)(item)
    assert out.video.size == (32, 64)  # 48x96 -> short side 32, long side 64
    info = out.video.meta["transform"]
    assert info["source_size"] == [48, 96] and info["crop_box"] == [0, 0, 48, 96] and info["size"] == [32, 64]
    s = out.side
    warped = backward_warp(out.video.frames[1:], s["flow_fwd"])
    valid = 1 - s["occ_fwd"]
    assert (((warped - out.video.frames[:-1]) ** 2).mean(1, keepdim=True) * valid).sum() / valid.sum() < 3e-3


def test_crop_is_logged_once_and_recorded_in_the_cell(tmp_path, caplog):
    root = tmp_path / "videos"
    root.mkdir()
    write_mp4(root / "wide.mp4", 4, 160, 64)  # 2.5:1
    (root / "prompts.yaml").write_text("videos:\n  wide: {source_prompt: a wall, edit_prompts: [a red wall]}\n")
    with caplog.at_level("INFO", logger="vedit.data"):
        summary = run(cfg_for(tmp_path, "method=identity", "data=folder", f"data.root={root}",
                              "data.transform.size=[64,64]", "metrics.names=[]", base=("backbone=tiny", "metrics=tiny")))
    crop_logs = [r.getMessage() for r in caplog.records if "centre crop" in r.getMessage()]
    assert len(crop_logs) == 1 and "160x64 source, centre crop 64x64 at (x=48, y=0) keeps 40%" in crop_logs[0]
    rec = summary.records[0]
    info = rec["source"]["transform"]
    assert info["source_size"] == [64, 160] and info["crop_box"] == [0, 48, 64, 64] and info["size"] == [64, 64]
    assert info["kept_area"] == 0.4 and "as the method saw it" in rec["outputs"]["side_by_side_shows"]


# --- truncated files ------------------------------------------------------------------------------

def test_truncated_file_warns_with_both_counts_and_the_record_keeps_it(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    write_mp4(tmp_path / "full.mp4", 30, 64, 64, faststart=True)
    data = (tmp_path / "full.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])
    video = read_video(root / "cut.mp4")
    assert 0 < video.num_frames < 30 and video.meta["header_frames"] == 30
    assert f"decoded to {video.num_frames} frames but its header says 30" in video.meta["warnings"][0]
    (root / "prompts.yaml").write_text("videos:\n  cut: {source_prompt: a wall, edit_prompts: [a red wall]}\n")
    summary = run(cfg_for(tmp_path, "method=identity", "data=folder", f"data.root={root}", "data.transform.size=null",
                          "metrics.names=[]", base=("backbone=tiny", "metrics=tiny")))
    rec = summary.records[0]
    assert rec["status"] == "ok" and rec["num_frames"] == video.num_frames
    assert "header says 30" in rec["warnings"][0]


# --- parameter checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("method,key,value,expected", [
    ("pix2video", "steps", -1, "steps=-1 is not allowed: expected an integer >= 1"),
    ("pix2video", "inversion_batch_size", 0, "inversion_batch_size=0 is not allowed: expected an integer >= 1"),
    ("framewise", "batch_size", 0, "batch_size=0 is not allowed: expected an integer >= 1"),
    ("framewise", "guidance_scale", "nan", "guidance_scale=nan is not allowed: expected a finite number"),
    ("framewise", "strength", 1.5, "strength=1.5 is not allowed: expected a finite number in (0, 1]"),
    ("rerender", "x0_strength", 0.0, "x0_strength=0.0 is not allowed"),
    ("rerender", "pixel_fusion.period", "[0.8,0.5]", "pixel_fusion.period=[0.8, 0.5] is not allowed: expected [start, end]"),
    ("rerender", "control", "sobel", "control='sobel' is not allowed: expected one of ['canny', 'hed']"),
    ("vidmp3", "tune_lr", 0, "tune_lr=0 is not allowed: expected a finite number > 0"),
    ("vidmp3", "guide_input", "multiplied", "expected one of ['multiply'"),
])
def test_bad_parameter_names_key_value_and_range_before_any_model(tmp_path, method, key, value, expected):
    cfg = cfg_for(tmp_path, f"method={method}", f"method.params.{key}={value}")
    with pytest.raises(ParamError) as err:
        check_config(cfg)
    assert expected in str(err.value) and str(err.value).startswith(f"{method}: ")


def test_unknown_parameter_and_method_get_did_you_mean(tmp_path):
    with pytest.raises(ParamError, match="stpes is unknown, did you mean 'steps'"):
        check_config(cfg_for(tmp_path, "method=pix2video", "+method.params.stpes=3"))
    with pytest.raises(ParamError, match="mask_strenght is unknown, did you mean 'mask_strength'"):
        check_config(cfg_for(tmp_path, "method=rerender", "+method.params.pixel_fusion.mask_strenght=1"))
    cfg = cfg_for(tmp_path, "method=pix2video")
    cfg.method.name = "pix2vid"
    with pytest.raises(UnknownNameError, match="Did you mean 'pix2video'"):
        check_config(cfg)


def test_every_shipped_method_config_passes_its_checks(tmp_path):
    for yaml_file in sorted((REPO / "conf" / "method").glob("*.yaml")):
        check_config(cfg_for(tmp_path, f"method={yaml_file.stem}"))


def test_unwritable_store_is_a_setup_error_naming_the_folder(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SetupError, match=r"store_dir=.*file/store is not writable"):
        open_store(str(tmp_path / "file" / "store"))


def test_missing_prompts_file_names_the_path(tmp_path):
    write_mp4(tmp_path / "v.mp4", 2, 16, 16)
    (tmp_path / "prompt.yaml").write_text("videos: {}\n")
    with pytest.raises(VideoError, match=r"prompts file .*prompts.yaml does not exist \(YAML files there: prompt.yaml\)"):
        FolderDataset(tmp_path)
    assert FolderDataset(tmp_path, prompts=None).video_ids() == ["v"]


# --- exit codes and the failure summary -----------------------------------------------------------

def test_failures_are_grouped_by_error():
    records = [{"status": "failed", "error": f"VideoError: video '{v}' has 1 frame(s); editing needs at least 2"}
               for v in "abc"] + [{"status": "failed", "error": "EditorError: NaN"}, {"status": "ok"}]
    groups = failure_groups(records)
    assert [n for n, _ in groups] == [3, 1] and "video 'a'" in groups[0][1]


def vedit_run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vedit.run", *overrides, f"store_dir={tmp_path / 'store'}",
                           f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'hydra'}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_exit_status_says_whether_cells_failed(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("one", "two"):
        write_video(root / f"{name}.mp4", torch.rand(1, 3, 16, 16))  # one frame: every cell fails
    (root / "prompts.yaml").write_text(yaml.safe_dump(
        {"videos": {v: {"source_prompt": "a", "edit_prompts": ["b"]} for v in ("one", "two")}}))
    args = ("method=identity", "backbone=tiny", "metrics=tiny", "metrics.names=[]", "data=folder",
            f"data.root={root}", "data.transform.size=null")
    failed = vedit_run(tmp_path, *args)
    assert failed.returncode == 1
    assert "2 of 2 cells failed" in failed.stdout and "2 x VideoError: video 'one' has 1 frame(s)" in failed.stdout
    assert vedit_run(tmp_path, *args, "allow_failures=true").returncode == 0
    sweep = vedit_run(tmp_path, "-m", *args, "seed=0,1")  # the sweep runs every job, then exits 1
    assert sweep.returncode == 1 and "4 failed" in sweep.stdout
    setup = vedit_run(tmp_path, "method=pix2video", "method.name=pix2vid", "backbone=tiny")
    assert setup.returncode == 1 and "Did you mean 'pix2video'" in setup.stderr and "Traceback" not in setup.stderr
    steps = vedit_run(tmp_path, "method=pix2video", "backbone=tiny", "method.params.steps=-1")
    assert steps.returncode == 1 and "steps=-1 is not allowed" in steps.stderr and "Traceback" not in steps.stderr


# --- a store shared by several hosts --------------------------------------------------------------

def test_clean_tmp_leaves_other_hosts_work_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "node-a.cluster")
    store = ResultStore(tmp_path)
    work_a = store.new_workdir("k")
    assert ".node-a-cluster." in work_a.name
    dead_a = work_a.with_name(work_a.name.replace(f".{work_a.name.split('.')[2]}.", ".999999999."))
    dead_a.mkdir()
    monkeypatch.setattr(socket, "gethostname", lambda: "node-b")
    store.clean_tmp()  # node-b cannot tell whether node-a's pid 999999999 is alive: keep it
    assert work_a.exists() and dead_a.exists()
    monkeypatch.setattr(socket, "gethostname", lambda: "node-a.cluster")
    store.clean_tmp()  # node-a knows: its dead process's folder goes, its live one stays
    assert work_a.exists() and not dead_a.exists()
