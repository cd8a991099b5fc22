"""End-to-end runs through the Hydra configs on the tiny backbone and synthetic data."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from vedit.editors.base import Editor, PhaseTimer
from vedit.leaderboard import format_table
from vedit.registry import EDITORS
from vedit.run import CONF_DIR, SetupError, run

TINY = ["backbone=tiny", "data=synthetic", "metrics=tiny", "data.num_videos=2", "data.num_frames=4",
        "prompts_per_video=1"]


def cfg_for(tmp_path: Path, *overrides: str, base: tuple[str, ...] = tuple(TINY)):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*base, f"store_dir={tmp_path / 'store'}",
                                            f"cache_dir={tmp_path / 'cache'}", *overrides])


def test_identity_run_writes_videos_records_and_exact_metrics(tmp_path):
    summary = run(cfg_for(tmp_path, "method=identity"))
    assert summary.computed == 2 and summary.failed == 0
    for rec in summary.records:
        cell = Path(tmp_path / "store" / "cells" / rec["key"])
        assert (cell / "edited.mp4").stat().st_size > 0 and (cell / "side_by_side.mp4").stat().st_size > 0
        assert rec["backbone_kind"] == "tiny"
        assert rec["config"]["method"]["name"] == "identity"
        assert rec["git_commit"] and "torch" in rec["versions"] and rec["device"]
        # identity keeps the source, whose warp error under ground-truth flow is ~0 (uint8 rounding and
        # bilinear interpolation of smooth textures only; the occlusion covers the object edges)
        assert rec["metrics"]["warp_error"] < 1e-4 and rec["metrics"]["warp_mse_01"] < 1e-4
        assert rec["metric_info"]["warp_mse"]["higher_is_better"] is False
        assert rec["metric_info"]["warp_error"]["config"]["flow"] == {"method": "gt"}
        assert rec["metric_models"] == {"clip": "tiny-clip-0", "flow": "gt"} and rec["metric_tiny"]
    table = format_table(summary.records)
    assert "identity [tiny; tiny metrics]" in table and "warp_mse ↓" in table


def test_rerun_skips_finished_cells_and_force_recomputes(tmp_path):
    first = run(cfg_for(tmp_path, "method=identity"))
    again = run(cfg_for(tmp_path, "method=identity"))
    assert again.computed == 0 and again.skipped == first.computed
    assert [r["finished_at"] for r in again.records] == [r["finished_at"] for r in first.records]
    forced = run(cfg_for(tmp_path, "method=identity", "force=true"))
    assert forced.computed == first.computed


def test_framewise_on_tiny_backbone_edits_every_frame(tmp_path):
    summary = run(cfg_for(tmp_path, "method=framewise", "method.params.steps=4"))
    assert summary.failed == 0, [r.get("error") for r in summary.records]
    rec = summary.records[0]
    assert rec["num_frames"] == 4
    assert set(rec["timings"]) >= {"preprocessing", "sampling"}
    assert set(rec["metrics"]) >= {"clip_text", "clip_image", "frame_acc", "warp_mse"}


class _NaNEditor(Editor):
    name = "nan"

    def edit(self, task):
        self.check_inputs(task)
        timer = PhaseTimer()
        frames = task.video.frames.clone()
        frames[0, 0, 0, 0] = float("nan")
        return timer.result(frames)


def test_nan_output_is_a_failed_cell_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(EDITORS._entries, "nan", _NaNEditor)
    cfg = cfg_for(tmp_path, "method=identity")
    cfg.method.name = "nan"
    summary = run(cfg)
    assert summary.failed == summary.computed == 2
    assert all("NaN" in r["error"] and r["status"] == "failed" for r in summary.records)
    # failed cells are kept, not retried unless asked
    assert run(cfg).computed == 0
    cfg.retry_failed = True
    assert run(cfg).computed == 2


def test_clamped_timer_result_does_not_hide_nan():
    frames = torch.full((2, 3, 8, 8), float("nan"))
    assert torch.isnan(PhaseTimer().result(frames).frames).all()


def test_pix2video_inversion_is_cached_on_disk_and_shared_between_target_prompts(tmp_path):
    summary = run(cfg_for(tmp_path, "method=pix2video", "method.params.steps=2", "prompts_per_video=2",
                          "data.num_videos=1"))
    assert summary.failed == 0, [r.get("error") for r in summary.records]
    first, second = summary.records
    assert first["target_prompt"] != second["target_prompt"]
    assert first["editor_info"]["inversion_cached"] is False
    assert second["editor_info"]["inversion_cached"] is True  # same video, backbone, source prompt, steps
    assert len(list((tmp_path / "cache" / "inversion").glob("*.pt"))) == 1


def test_bad_videos_in_a_sweep_are_failed_cells_naming_the_input(tmp_path):
    from vedit.video import write_video

    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "good.mp4", torch.rand(6, 3, 64, 64))
    write_video(root / "single.mp4", torch.rand(1, 3, 64, 64))
    write_video(root / "odd.mp4", torch.rand(6, 3, 60, 60))
    write_video(root / "noprompt.mp4", torch.rand(6, 3, 64, 64))
    (root / "broken.mp4").write_bytes(b"not a video at all")
    prompts = {v: {"source_prompt": "a scene", "edit_prompts": ["a painted scene"]}
               for v in ("good", "single", "odd", "broken")}
    import yaml

    (root / "prompts.yaml").write_text(yaml.safe_dump({"videos": prompts}))
    summary = run(cfg_for(tmp_path, "method=identity", "data=folder", f"data.root={root}",
                          "data.transform.size=null", "metrics.names=[clip_image]",
                          base=("backbone=tiny", "metrics=tiny")))
    by_video = {r["video"]: r for r in summary.records}
    assert set(by_video) == {"good", "single", "odd", "noprompt", "broken"}
    assert by_video["good"]["status"] == "ok"
    assert by_video["noprompt"]["status"] == "ok"  # identity needs no prompt (tests/test_new_user.py)
    failed = {v: r["error"] for v, r in by_video.items() if r["status"] == "failed"}
    assert set(failed) == {"single", "odd", "broken"}
    assert "'single'" in failed["single"] and "1 frame" in failed["single"]
    assert "'odd'" in failed["odd"] and "divisible by 8" in failed["odd"]
    assert "'broken'" in failed["broken"]


def test_estimator_settings_key_the_edits_of_the_editors_that_use_them(tmp_path):
    from baselines.identity import IdentityEditor
    from vedit.editors.pix2video import Pix2VideoEditor
    from vedit.editors.rerender import RerenderEditor
    from vedit.run import describe_method

    dpt, gt = cfg_for(tmp_path, "estimators.depth=dpt"), cfg_for(tmp_path, "estimators.depth=gt")
    assert describe_method(dpt, Pix2VideoEditor) != describe_method(gt, Pix2VideoEditor)
    assert describe_method(dpt, Pix2VideoEditor)["estimators"]["depth"] == "dpt"
    assert describe_method(dpt, RerenderEditor) == describe_method(gt, RerenderEditor)  # rerender uses no depth
    assert "estimators" not in describe_method(dpt, IdentityEditor)


def test_warmup_runs_once_per_process_before_the_first_cell_and_changes_no_frame(tmp_path, monkeypatch):
    from vedit.backbones import Backbone
    from vedit.store import read_edited_frames

    sizes = []
    real = Backbone.warmup
    monkeypatch.setattr(Backbone, "warmup", lambda self, size, **kw: (sizes.append(size), real(self, size, **kw))[1])
    args = ("method=pix2video", "method.params.steps=2", "prompts_per_video=2", "data.num_videos=1")
    warm = run(cfg_for(tmp_path / "warm", *args, "warmup=true"))
    cold = run(cfg_for(tmp_path / "cold", *args, "warmup=false"))
    assert warm.failed == cold.failed == 0
    assert sizes == [(64, 64)]  # once, at the first video's size, and not at all with warmup=false
    assert all(r["warmup_seconds"] > 0 for r in warm.records)
    assert all("warmup_seconds" not in r for r in cold.records)
    for w, c in zip(warm.records, cold.records):
        assert w["key"] == c["key"]  # not part of what a cell is
        frames = [read_edited_frames(p / "store" / "cells" / w["key"]) for p in (tmp_path / "warm", tmp_path / "cold")]
        assert torch.equal(*frames)


def test_bad_warmup_setting_is_named_before_any_model_is_built(tmp_path):
    with pytest.raises(SetupError, match="warmup='sometimes'"):
        run(cfg_for(tmp_path, "method=pix2video", "warmup=sometimes"))
