"""Leaderboard from constructed records: intervals, paired differences, backbone separation, html."""

from __future__ import annotations

import math

import pytest

from vedit.leaderboard import html_page, leaderboard, load_records, main, paired, pretty
from vedit.store import ResultStore

INFO = {"m": {"higher_is_better": True, "convention": "test"}}


def rec(method, video, seed, m, backbone="paper", status="ok"):
    return {"key": f"{method}-{video}-{seed}-{backbone}", "method": method, "backbone_kind": backbone,
            "video": video, "source_prompt": "src", "target_prompt": "tgt", "seed": seed, "data": {"name": "d"},
            "status": status, "metrics": {"m": m}, "metric_info": INFO,
            "cost": {"seconds_per_frame": 2.0, "peak_gpu_memory_gb": 1.0}}


def test_means_intervals_and_failures():
    records = [rec("a", "v1", 0, 1.0), rec("a", "v2", 0, 2.0), rec("a", "v3", 0, 3.0),
               rec("a", "v4", 0, None, status="failed")]
    row = leaderboard(records).loc[("d", "paper", "a", "-")]
    assert row["cells"] == 3 and row["failed"] == 1
    assert row["m"] == pytest.approx(2.0)
    assert row["m ±"] == pytest.approx(4.303 * 1.0 / math.sqrt(3))  # t(2 dof) * sd / sqrt(n)


def test_paired_differences_match_cells_and_never_mix_backbones():
    records = [rec("a", f"v{i}", 0, x) for i, x in enumerate([5.0, 7.0, 9.0])]
    records += [rec("b", f"v{i}", 0, x) for i, x in enumerate([4.0, 5.0, 6.0])]
    records += [rec("b", "v9", 0, 100.0)]  # no partner: not paired
    records += [rec("a", "v0", 0, 50.0, backbone="tiny"), rec("b", "v0", 0, 0.0, backbone="tiny")]
    table = paired(records).set_index(["backbone", "a", "b", "metric"])
    paper = table.loc[("paper", "a", "b", "m")]
    assert paper["pairs"] == 3 and paper["mean_diff"] == pytest.approx(2.0)  # diffs 1, 2, 3
    assert paper["ci95"] == pytest.approx(4.303 / math.sqrt(3))
    tiny = table.loc[("tiny", "a", "b", "m")]
    assert tiny["pairs"] == 1 and tiny["mean_diff"] == pytest.approx(50.0) and math.isnan(tiny["ci95"])
    names = list(pretty(leaderboard(records)).index)
    assert "a" in names and "a [tiny]" in names and "b [tiny]" in names


def test_cli_merges_stores_and_writes_html_with_relative_video_links(tmp_path, capsys):
    for name, method, value in [("s1", "a", 1.0), ("s2", "b", 3.0)]:
        store = ResultStore(tmp_path / name)
        work = store.new_workdir(method)
        (work / "side_by_side.mp4").write_bytes(b"\x00")
        store.commit(method, work, {**rec(method, "v", 0, value), "outputs": {"side_by_side": "side_by_side.mp4"}})
    out = tmp_path / "board"
    main([str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| a " in printed and "| b " in printed and "-2" in printed  # a - b = 1 - 3
    page = (out / "index.html").read_text()
    assert "src='../s1/cells/a/side_by_side.mp4'" in page and "src='../s2/cells/b/side_by_side.mp4'" in page
    assert len(load_records([tmp_path])) == 2
    assert "<video" in html_page(load_records([tmp_path / "s1"]), out)


def test_progress_total_grows_with_videos_and_eta_ignores_skipped_cells():
    from vedit.tracking.progress import SweepProgress

    progress = SweepProgress(num_videos=4)
    progress.add_video(3, "swan")
    assert progress.bar.total == 12  # 3 seen + 3 unseen videos x 3
    assert progress.bar.desc.startswith("cells [video 1/4: swan]")
    progress.update("ok")  # skipped: no cost
    assert progress.eta_seconds() is None
    progress.update("failed", seconds=2.0)
    progress.add_video(1, "car")
    assert progress.bar.total == 3 + 1 + 2 * 2
    assert progress.failed == 1 and progress.skipped == 1 and progress.done == 2
    assert progress.eta_seconds() >= (8 - 2) * 2.0
    progress.close()


def configured(method, params, value, data=None, backbone="paper", models=None, tiny=False, mask_source=None, video="v"):
    r = rec(method, video, 0, value, backbone=backbone)
    r.update(key=f"{method}-{params}-{data}-{backbone}-{models}-{video}", config={"method": {"name": method, "params": params}},
             data=data or {"name": "davis", "root": "x"}, metric_models=models or {"clip": "ViT-L-14/openai"},
             metric_tiny=tiny, editor_info={"mask_source": mask_source} if mask_source else {})
    return r


def test_rows_never_mix_hyperparameters_benchmarks_backbones_or_metric_models():
    from vedit.leaderboard import format_table, method_defaults

    defaults = {"key_interval": 10, "steps": 20}
    assert method_defaults("rerender")["key_interval"] == 10 and method_defaults("rerender")["pixel_fusion.period"] == [0.5, 0.8]
    records = [configured("rerender", defaults, 1.0, video="v1"), configured("rerender", defaults, 3.0, video="v2"),
               configured("rerender", {**defaults, "key_interval": 5}, 10.0),
               configured("rerender", defaults, 20.0, data={"name": "davis", "root": "y"}),
               configured("rerender", defaults, 30.0, backbone="tiny"),
               configured("rerender", defaults, 40.0, models={"clip": "tiny-clip-0"}, tiny=True),
               configured("vidmp3", {}, 50.0, mask_source="none"),
               configured("vidmp3", {}, 60.0, data={"name": "videoswap"}, mask_source="dataset")]
    table = leaderboard(records)
    assert len(table) == 7 and table["m"].to_dict()[("davis (root=x)", "paper", "rerender", "clip ViT-L-14/openai")] == 2.0
    assert ("davis (root=x)", "paper", "rerender (key_interval=5)", "clip ViT-L-14/openai") in table.index
    assert ("davis (root=y)", "paper", "rerender", "clip ViT-L-14/openai") in table.index
    names = list(pretty(table).index)
    assert "rerender [tiny]" in names and "rerender [tiny metrics]" in names
    assert "vidmp3 [whole-frame masks]" in names and "vidmp3" in names
    text = format_table(records)
    assert "rerender (key_interval=5)" in text and "benchmark" in text and "metric models" in text


def test_category_is_an_extra_grouping_key():
    records = [{**configured("a", {}, 1.0, video="v1"), "category": "style"},
               {**configured("a", {}, 3.0, video="v2"), "category": "object"}]
    table = leaderboard(records, by=["category"])
    assert table.index.names[-1] == "category" and sorted(table["m"]) == [1.0, 3.0]


def test_cli_exits_non_zero_on_a_missing_or_empty_store(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no results"):
        main([str(tmp_path / "empty")])
