"""Metric values per metric configuration, apart from the edit; `vedit.evaluate` on a store and a folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from vedit.data.synthetic import SyntheticDataset
from vedit.evaluate import EvaluateError, evaluate
from vedit.leaderboard import leaderboard, load_records
from vedit.run import CONF_DIR, run
from vedit.store import save_frames_lossless

TINY = ["backbone=tiny", "data=synthetic", "metrics=tiny", "data.num_videos=2", "data.num_frames=4",
        "data.size=[32,32]", "prompts_per_video=1", "method=identity"]
CLIP_METRICS = 4  # clip_text, clip_image, clip_image_allpairs, frame_acc


def run_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*TINY, f"store_dir={tmp_path / 'store'}",
                                            f"cache_dir={tmp_path / 'cache'}", *overrides])


def eval_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("evaluate", overrides=["metrics=tiny", f"cache_dir={tmp_path / 'cache'}", *overrides])


def by_cell(records):
    return {(r["video"], r["target_prompt"]): r for r in records}


def snapshot(store: Path) -> dict[str, bytes]:
    """The stored edits: record.json and the edited frames of every cell."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.glob("cells/*/*")) if p.is_file()}


def metric_files(store: Path) -> list[Path]:
    return sorted(store.glob("cells/*/metrics/*.json"))


def test_changed_metric_setting_recomputes_metrics_not_edits(tmp_path):
    store = tmp_path / "store"
    first = run(run_cfg(tmp_path))
    assert first.computed == 2
    edits, files = snapshot(store), metric_files(store)
    assert len(files) == 2 * 9

    other_clip = run(run_cfg(tmp_path, "metrics.clip.seed=1"))  # another CLIP model: CLIP metrics only
    assert other_clip.computed == 0 and other_clip.skipped == 2
    assert snapshot(store) == edits  # no edit was redone or rewritten
    assert len(metric_files(store)) == len(files) + 2 * CLIP_METRICS
    a, b = by_cell(first.records), by_cell(other_clip.records)
    for cell in a:
        assert a[cell]["metrics"]["clip_text"] != b[cell]["metrics"]["clip_text"]  # never the stale value
        assert a[cell]["metrics"]["warp_error"] == b[cell]["metrics"]["warp_error"]
        assert b[cell]["metric_models"]["clip"] == "tiny-clip-1"

    other_flow = run(run_cfg(tmp_path, "estimators.flow=dis"))  # another flow estimator: flow metrics only
    c = by_cell(other_flow.records)
    assert other_flow.computed == 0 and snapshot(store) == edits
    for cell in a:
        assert c[cell]["metric_info"]["warp_error"]["config"]["flow"] == {"method": "dis"}
        assert c[cell]["metrics"]["warp_error"] != a[cell]["metrics"]["warp_error"]
        assert c[cell]["metrics"]["clip_text"] == a[cell]["metrics"]["clip_text"]

    again = run(run_cfg(tmp_path))  # the first setting again: its stored values, nothing computed
    count = len(metric_files(store))
    assert {k: r["metrics"] for k, r in by_cell(again.records).items()} == {k: r["metrics"] for k, r in a.items()}
    assert len(metric_files(store)) == count

    # the leaderboard keeps the three metric configurations apart
    table = leaderboard(load_records([store]))
    assert sorted(table.index.get_level_values("metric_models")) == [
        "clip tiny-clip-0, flow dis", "clip tiny-clip-0, flow gt", "clip tiny-clip-1, flow gt"]
    assert set(table["cells"]) == {2}


def test_evaluate_store_computes_missing_metrics_and_reuses_stored_ones(tmp_path):
    store = tmp_path / "store"
    ref = by_cell(run(run_cfg(tmp_path)).records)
    cell = next(iter(store.glob("cells/*")))
    shutil.rmtree(cell / "metrics")
    edits = snapshot(store)
    records = evaluate(eval_cfg(tmp_path, f"store_dir={store}"))
    assert snapshot(store) == edits and len(metric_files(store)) == 2 * 9
    for key, rec in by_cell(records).items():
        assert rec["metrics"] == pytest.approx(ref[key]["metrics"], rel=1e-6, abs=1e-9)
    tgve = by_cell(evaluate(eval_cfg(tmp_path, f"store_dir={store}", "metrics.names=[clip_image_allpairs]")))
    assert all(set(r["metrics"]) == {"clip_image_allpairs", "clip_image_allpairs_x100"} for r in tgve.values())
    with pytest.raises(EvaluateError, match="not a result store"):
        evaluate(eval_cfg(tmp_path, f"store_dir={tmp_path / 'nothing'}"))


def test_evaluate_on_a_folder_gives_the_numbers_of_the_same_edits_in_the_store(tmp_path):
    # flow by DIS on both sides (a folder has no ground truth); sources exported losslessly
    ref = run(run_cfg(tmp_path, "estimators.flow=dis"))
    folder = tmp_path / "edits"
    (folder / "sources").mkdir(parents=True)
    ds = SyntheticDataset(num_videos=2, num_frames=4, size=(32, 32))
    edits = {}
    for rec in ref.records:
        video = ds.load(rec["video"]).video
        save_frames_lossless(folder / "sources" / f"{rec['video']}.mkv",
                             (video.frames * 255).round().byte(), fps=video.fps)
        shutil.copy(tmp_path / "store" / "cells" / rec["key"] / "edited.mkv", folder / f"{rec['video']}_edit.mkv")
        edits[f"{rec['video']}_edit"] = {"source": f"sources/{rec['video']}.mkv", "source_prompt": rec["source_prompt"],
                                         "target_prompt": rec["target_prompt"]}
    (folder / "edits.yaml").write_text(yaml.safe_dump({"edits": edits}))
    out = evaluate(eval_cfg(tmp_path, f"store_dir={tmp_path / 'external'}", f"folder={folder}", "method_name=outside",
                            "estimators.flow=dis"))
    assert len(out) == 2 and all(r["backbone_kind"] == "external" and r["method"] == "outside" for r in out)
    theirs = {r["video"]: r["metrics"] for r in out}
    for rec in ref.records:
        assert theirs[f"{rec['video']}_edit"] == pytest.approx(rec["metrics"], rel=1e-6, abs=1e-9)
    # scoring again imports nothing new and reuses every stored value
    files = metric_files(tmp_path / "external")
    assert len(evaluate(eval_cfg(tmp_path, f"store_dir={tmp_path / 'external'}", f"folder={folder}",
                                 "method_name=outside", "estimators.flow=dis"))) == 2
    assert metric_files(tmp_path / "external") == files


def test_evaluate_folder_bad_input_names_the_file(tmp_path):
    (tmp_path / "edits").mkdir()
    with pytest.raises(EvaluateError, match="edits.yaml"):
        evaluate(eval_cfg(tmp_path, f"store_dir={tmp_path / 's'}", f"folder={tmp_path / 'edits'}"))
    (tmp_path / "edits" / "edits.yaml").write_text("edits:\n  a: {source: x.mp4}\n")
    with pytest.raises(EvaluateError, match="target_prompt"):
        evaluate(eval_cfg(tmp_path, f"store_dir={tmp_path / 's'}", f"folder={tmp_path / 'edits'}"))
