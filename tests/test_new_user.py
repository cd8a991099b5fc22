"""What a new user tripped on: runs without prompts, clips files, frame rates, config spellings, logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from vedit.data.folder import FolderDataset
from vedit.run import CONF_DIR, run
from vedit.video import read_video, write_video

REPO = Path(__file__).resolve().parents[1]


def _videos(root: Path, names=("a", "b"), fps=7) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        g = torch.Generator().manual_seed(i)
        write_video(root / f"{name}.mp4", torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8, generator=g), fps=fps)


FOLDER = ("data=folder", "data.transform.size=[32,32]")
SYNTHETIC = ("data=synthetic", "data.num_videos=2", "data.num_frames=3", "data.size=[32,32]", "prompts_per_video=1")


def _cfg(tmp_path: Path, *overrides: str, data: tuple[str, ...] = FOLDER):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=["backbone=tiny", "metrics=tiny", *data, f"store_dir={tmp_path / 'store'}",
                                            f"cache_dir={tmp_path / 'cache'}", *overrides])


def test_without_prompts_identity_runs_and_skips_only_the_prompt_metrics(tmp_path):
    _videos(tmp_path / "vids")
    summary = run(_cfg(tmp_path, "method=identity", f"data.root={tmp_path / 'vids'}", "data.prompts=null"))
    assert summary.computed == 2 and summary.failed == 0
    for rec in summary.records:
        assert "clip_image" in rec["metrics"] and "warp_error" in rec["metrics"]
        assert "clip_text" not in rec["metrics"] and "frame_acc" not in rec["metrics"]
        assert set(rec["metrics_skipped"]) == {"clip_text", "frame_acc"}
    # a method that needs a prompt still says so
    framewise = run(_cfg(tmp_path, "method=framewise", f"data.root={tmp_path / 'vids'}", "data.prompts=null",
                         "method.params.steps=2"))
    assert framewise.failed == 2
    assert all("target_prompt=None" in r["error"] or "source_prompt=None" in r["error"] for r in framewise.records)


def test_a_clips_file_names_each_video_once(tmp_path):
    _videos(tmp_path, names=("beach", "moon"))
    (tmp_path / "clips.yaml").write_text(yaml.safe_dump({"clips": {
        "beach_walk": {"path": "beach.mp4", "source_prompt": "a man on a beach", "edit_prompts": ["a robot"]},
        "moon_walk": {"path": "moon.mp4", "source_prompt": "a man", "edit_prompts": ["a man on the moon"]}}}))
    ds = FolderDataset(tmp_path, prompts="clips.yaml")
    assert ds.video_ids() == ["beach_walk", "moon_walk"]  # not also 'beach' and 'moon' without prompts
    summary = run(_cfg(tmp_path, "method=identity", f"data.root={tmp_path}", "data.prompts=clips.yaml"))
    assert summary.computed == 2 and summary.failed == 0


def test_records_keep_the_frame_rates(tmp_path):
    _videos(tmp_path / "vids", names=("clip",), fps=7)
    frames = tmp_path / "vids" / "stills"
    frames.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(frames / f"{i:05d}.png")
    summary = run(_cfg(tmp_path, "method=identity", f"data.root={tmp_path / 'vids'}", "data.prompts=null",
                       "data.frame_rate=12.5"))
    recs = {r["video"]: r for r in summary.records}
    assert recs["clip"]["fps"] == {"source": 7.0, "output": 7.0, "from": "container"}
    assert recs["stills"]["fps"] == {"source": 12.5, "output": 12.5, "from": "data.frame_rate"}
    edited = Path(recs["stills"]["_dir"] if "_dir" in recs["stills"] else tmp_path / "store" / "cells" /
                  recs["stills"]["key"]) / "edited.mp4"
    assert read_video(edited).fps == pytest.approx(12.5)
    stride = run(_cfg(tmp_path, "method=identity", f"data.root={tmp_path / 'vids'}", "data.prompts=null",
                      "data.transform.stride=2"))
    assert {r["video"]: r["fps"]["output"] for r in stride.records}["clip"] == pytest.approx(3.5)


def test_tables_show_one_column_per_convention_and_count_failures_in_their_row(tmp_path):
    from vedit.leaderboard import format_table, leaderboard, pretty

    run(_cfg(tmp_path, "method=identity", data=SYNTHETIC))
    from vedit.leaderboard import load_records

    records = load_records([tmp_path / "store"])
    failed = {**records[0], "key": "broken", "status": "failed", "error": "EditorError: x", "video": "other"}
    failed.pop("metric_sets"), failed.pop("metric_entries")
    table = leaderboard([*records, failed])
    assert len(table) == 1  # the failure is in identity's row, not a row with no metric models
    assert table.iloc[0]["cells"] == 2 and table.iloc[0]["failed"] == 1
    shown = pretty(table).columns
    assert "clip_text ↑" in shown and "warp_error ↓" in shown
    assert not [c for c in shown if "_x100" in c or "_255" in c]
    assert "clip_text_x100 ↑" in pretty(table, all_columns=True).columns
    assert format_table(records, "md") == format_table(records, "markdown")


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_errors_are_one_line_messages(tmp_path):
    """Misspelt config options reach vedit's did-you-mean; a missing store is an error, not 'wrote'."""
    cases = [(["-m", "vedit.run", "method=pix2vid"], "unknown method 'pix2vid'. Did you mean 'pix2video'?"),
             (["-m", "vedit.run", "method=pix2video", "method.params.stepz=5"], "stepz is unknown, did you mean 'steps'?"),
             (["-m", "vedit.run", "-m", "method=identity,rerendr"], "Did you mean 'rerender'?"),
             (["-m", "vedit.evaluate", "metrics=tgv"], "Did you mean 'tgve'?"),
             (["-m", "vedit.leaderboard", str(tmp_path / "none")], "does not exist"),
             (["-m", "vedit.leaderboard", str(tmp_path / "none"), "--formats", "mdx"], "--formats 'mdx' unknown"),
             (["-m", "vedit.export_tgve", str(tmp_path / "none"), str(tmp_path / "out")], "does not exist")]
    for args, message in cases:
        out = _cli(*args)
        assert out.returncode != 0, args
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, out.stderr)
    assert not (tmp_path / "out").exists()


def test_evaluate_writes_its_log_under_outputs_not_the_working_directory(tmp_path):
    run(_cfg(tmp_path, "method=identity", data=SYNTHETIC))
    out = _cli("-m", "vedit.evaluate", f"store_dir={tmp_path / 'store'}", "metrics=tiny",
               f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "outputs", "store"]
    assert list((tmp_path / "outputs" / "evaluate").glob("*/evaluate.log"))
    assert not (REPO / "evaluate.log").exists()


def test_default_metrics_offline_fail_at_once_and_name_metrics_tiny(tmp_path, monkeypatch):
    from vedit.metrics.base import MetricError
    from vedit.metrics.clip_models import load_clip
    from vedit.run import SetupError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MetricError, match=r"timm/vit_large_patch14_clip_224.openai.*not in the Hugging Face cache.*"
                                          r"metrics=tiny"):
        load_clip("ViT-L-14", "openai")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["backbone=tiny", "method=identity", *SYNTHETIC, "metrics=default",
                                           f"store_dir={tmp_path / 'store'}", f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(SetupError, match="metrics=tiny"):
        run(cfg)
    assert not list((tmp_path / "store").glob("cells/*"))  # nothing ran
