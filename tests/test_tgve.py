"""LOVEU-TGVE-2023: the suite file, the loader on the challenge's layout, categories in records, the export."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import execute_leaderboard_notebook
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from vedit.data.prompts import EditPrompt, load_prompts
from vedit.data.tgve import CATEGORIES, TGVEDataset
from vedit.export_tgve import edited_frames, export, main as export_main, select
from vedit.leaderboard import category_table, t95
from vedit.registry import DATASETS
from vedit.run import CONF_DIR, iter_cells, run
from vedit.video import VideoError

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "suites" / "loveu-tgve-2023.yaml"
PROMPTS = {c: f"a {c} edit of a red square" for c in CATEGORIES}
TREE = {"DAVIS_480p/square": 32, "youtube_480p/long": 128}


def frame_value(i: int) -> int:
    return 20 + (i * 7) % 200  # a distinct grey level for each of up to 200 frames


def make_tree(root: Path, videos: dict[str, int] = TREE, size: int = 32) -> Path:
    """The challenge's layout with flat grey jpg frames, and a suite file for it."""
    entries = {}
    for vid, frames in videos.items():
        subset, name = vid.split("/")
        folder = root / subset / "480p_frames" / name
        folder.mkdir(parents=True)
        for i in range(frames):
            Image.new("RGB", (size, size), (frame_value(i),) * 3).save(folder / f"{i:05d}.jpg", quality=95)
        entries[name] = {"subset": subset, "frames": frames, "source_prompt": "a red square",
                         "edit_prompts": dict(PROMPTS)}
    (root / "suite.yaml").write_text(yaml.safe_dump({"suite": "test", "videos": entries}, sort_keys=False))
    return root / "suite.yaml"


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_suite_file_is_the_challenges_76_videos_and_304_prompts():
    text = SUITE.read_text()
    assert "Apache License, Version 2.0" in text and "github.com/showlab/loveu-tgve-2023" in text
    videos = yaml.safe_load(text)["videos"]
    subsets = [v["subset"] for v in videos.values()]
    assert (len(videos), subsets.count("DAVIS_480p"), subsets.count("youtube_480p"), subsets.count("videvo_480p")) \
        == (76, 16, 23, 37)
    assert {v["frames"] for v in videos.values()} == {32, 128}
    prompts = load_prompts(SUITE)
    assert sum(len(e.edit_prompts) for e in prompts.values()) == 304
    assert all([p.category for p in e.edit_prompts] == list(CATEGORIES) for e in prompts.values())
    assert prompts["gold-fish"].edit_prompts[1] == "Several sharks swim in a tank."


def test_edit_prompts_as_a_list_stay_plain_strings():
    entry = load_prompts({"videos": {"v": {"source_prompt": "s", "edit_prompts": ["a", "b"]}}})["v"]
    assert entry.edit_prompts == ["a", "b"] and all(type(p) is str for p in entry.edit_prompts)
    tagged = EditPrompt("a cat", "object")
    assert tagged == "a cat" and tagged.category == "object" and EditPrompt("x").category is None


def test_loader_reads_the_challenge_layout_in_full(tmp_path):
    suite = make_tree(tmp_path)
    data = TGVEDataset(tmp_path, prompts=suite)
    assert DATASETS.get("tgve") is TGVEDataset
    assert data.video_ids() == ["DAVIS_480p/square", "youtube_480p/long"]
    for vid, frames in TREE.items():
        item = data.load(vid)
        assert item.video.num_frames == frames and item.video.size == (32, 32)
        means = (item.video.frames.mean((1, 2, 3)) * 255).numpy()
        assert np.allclose(means, [frame_value(i) for i in range(frames)], atol=2)  # all frames, in order
        assert item.source_prompt == "a red square"
        assert [(p, p.category) for p in item.edit_prompts] == [(PROMPTS[c], c) for c in CATEGORIES]
    assert TGVEDataset(tmp_path).video_ids() == data.video_ids()  # no prompts file: the folders are scanned
    assert TGVEDataset(tmp_path, suite, subsets=["youtube_480p"]).video_ids() == ["youtube_480p/long"]
    assert TGVEDataset(tmp_path, suite, videos=["square"]).video_ids() == ["DAVIS_480p/square"]


def test_loader_errors_name_the_video_and_what_to_do(tmp_path):
    suite = make_tree(tmp_path, {"DAVIS_480p/short": 4})
    spec = yaml.safe_load(suite.read_text())
    spec["videos"]["short"]["frames"] = 32
    spec["videos"]["gone"] = {"subset": "videvo_480p", "frames": 32, "source_prompt": "s", "edit_prompts": {}}
    suite.write_text(yaml.safe_dump(spec))
    data = TGVEDataset(tmp_path, prompts=suite)
    with pytest.raises(VideoError, match=r"DAVIS_480p/short.*4 frames.*suite says 32"):
        data.load("DAVIS_480p/short")
    with pytest.raises(VideoError, match=r"videvo_480p/gone.*does not exist"):
        data.load("videvo_480p/gone")
    with pytest.raises(VideoError, match="subsets"):
        TGVEDataset(tmp_path, suite, subsets=["DAVIS"])
    with pytest.raises(VideoError, match="not a folder"):
        TGVEDataset(tmp_path / "nowhere")


@pytest.mark.parametrize("method", sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml")))
def test_suite_composes_with_every_method_at_the_challenges_protocol(method):
    cfg = composed("suite=tgve2023", f"method={method}")
    assert method.startswith(cfg.method.name) and cfg.data._target_ == "vedit.data.tgve.TGVEDataset"
    assert list(cfg.data.transform.size) == [480, 480] and cfg.data.transform.max_frames is None
    assert (REPO / cfg.data.prompts).resolve() == SUITE


def test_suite_instantiates_all_304_cells_on_the_real_suite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    data = instantiate(composed("suite=tgve2023", f"data.root={tmp_path}").data)
    assert len(data) == 76 and data.video_ids()[0] == "DAVIS_480p/bmx-rider"
    assert sum(len(e.edit_prompts) for e in data.prompts.values()) == 304


def tiny_run(tmp_path: Path, suite: Path, *overrides: str):
    cfg = composed("suite=tgve2023", "method=identity", "backbone=tiny", "metrics=tiny",
                   "metrics.names=[]", f"data.root={tmp_path}", f"data.prompts={suite}",
                   "data.videos=[square]", "data.transform.size=[32,32]", f"store_dir={tmp_path / 'store'}",
                   f"cache_dir={tmp_path / 'cache'}", "tracker.trackers=[]", *overrides)
    return run(cfg)


def test_prompt_categories_reach_the_records_and_the_export_layout(tmp_path):
    suite = make_tree(tmp_path)
    summary = tiny_run(tmp_path, suite)
    assert summary.computed == 4 and summary.failed == 0
    records = sorted(summary.records, key=lambda r: CATEGORIES.index(r["prompt_category"]))
    assert [(r["prompt_category"], r["target_prompt"]) for r in records] == [(c, PROMPTS[c]) for c in CATEGORIES]
    assert all(r["video"] == "DAVIS_480p/square" and r["num_frames"] == 32 for r in records)
    assert len({r["key"] for r in records}) == 4

    out = tmp_path / "submission"
    problems = export([tmp_path / "store"], out, suite=suite)
    assert problems == [f"youtube_480p/long {c}: no finished cell" for c in sorted(CATEGORIES)]  # not run
    assert sorted(p.name for p in (out / "DAVIS_480p" / "square").iterdir()) == sorted(CATEGORIES)
    for category in CATEGORIES:
        files = sorted((out / "DAVIS_480p" / "square" / category).iterdir())
        assert [f.name for f in files] == [f"{i:05d}.jpg" for i in range(32)]
        for i in (0, 31):  # identity: the source frame, upscaled to the challenge's 480x480
            image = np.asarray(Image.open(files[i]))
            assert image.shape == (480, 480, 3) and abs(image.mean() - frame_value(i)) < 3
    again = tmp_path / "again"
    assert export_main([str(tmp_path / "store"), str(again), "--suite", str(suite), "--ext", "png", "--size", "16"]) == 1
    assert Image.open(again / "DAVIS_480p" / "square" / "style" / "00031.png").size == (16, 16)


def test_plain_prompts_keep_their_cell_keys_without_a_category(tmp_path):
    cfg = composed("data=synthetic", "backbone=tiny", "data.num_videos=1", "data.num_frames=2")
    _, cells = next(iter_cells(cfg, instantiate(cfg.data), {"name": "identity"}, {"kind": "tiny"}))
    assert cells and all("prompt_category" not in c.parts and c.task.prompt_category is None for c in cells)


def test_export_wants_one_configuration(tmp_path):
    base = {"status": "ok", "data": {"name": "tgve"}, "video": "DAVIS_480p/v", "prompt_category": "style",
            "backbone_kind": "tiny", "seed": 0}
    records = [{**base, "key": "a", "method": "identity"}, {**base, "key": "b", "method": "framewise"}]
    with pytest.raises(SystemExit, match="method=framewise.*method=identity.*--method"):
        select(records)
    assert select(records, method="framewise")[("DAVIS_480p/v", "style")]["key"] == "b"
    with pytest.raises(SystemExit, match="several finished cells"):
        select([*records, {**base, "key": "c", "method": "identity"}], method="identity")


def test_category_table_means_and_intervals():
    info = {"clip_text": {"higher_is_better": True}}
    values = {"style": [1.0, 2.0, 3.0], "object": [4.0, 5.0, 6.0]}
    records = [{"method": "m", "backbone_kind": "paper", "status": "ok", "prompt_category": c,
                "metrics": {"clip_text": v}, "metric_info": info} for c, vs in values.items() for v in vs]
    records += [{"method": "m", "backbone_kind": "paper", "status": "failed", "prompt_category": "style"},
                {"method": "m", "backbone_kind": "paper", "status": "ok", "metrics": {"clip_text": 100.0},
                 "metric_info": info}]  # no category: not in this table
    table = category_table(records, "clip_text")
    half = t95(3) / math.sqrt(3)  # std of (1, 2, 3) is 1
    overall = t95(6) * np.std([1, 2, 3, 4, 5, 6], ddof=1) / math.sqrt(6)
    assert list(table.columns) == ["cells", "failed", "style ↑", "object ↑", "overall ↑"]
    assert table.loc["m"].tolist() == [6, 1, f"2 ± {half:.2g}", f"5 ± {half:.2g}", f"3.5 ± {overall:.2g}"]
    assert category_table(records, "warp_mse").empty


def test_leaderboard_cli_writes_the_category_tables(tmp_path, capsys):
    from vedit.leaderboard import main as leaderboard_main
    from vedit.store import ResultStore

    store = ResultStore(tmp_path / "store")
    for i, category in enumerate(CATEGORIES):
        store.commit(f"k{i}", store.new_workdir(f"k{i}"), {
            "method": "m", "backbone_kind": "tiny", "status": "ok", "prompt_category": category,
            "metrics": {"clip_text": float(i)}, "metric_info": {"clip_text": {"higher_is_better": True}}})
    leaderboard_main([str(tmp_path / "store"), "--out", str(tmp_path / "lb"), "--categories", "clip_text"])
    assert "clip_text by prompt category" in capsys.readouterr().out
    for suffix in ("md", "csv", "html", "tex"):
        text = (tmp_path / "lb" / f"categories_clip_text.{suffix}").read_text()
        assert "m [tiny]" in text and "multiple" in text and "1.5" in text  # overall mean of 0..3


def test_notebook_shows_the_tgve_table(tmp_path, monkeypatch):
    from vedit.store import ResultStore

    store = ResultStore(tmp_path / "store")
    for i, category in enumerate(CATEGORIES * 2):
        key = f"k{i}"
        store.commit(key, store.new_workdir(key), {
            "method": "m", "backbone_kind": "paper", "video": f"DAVIS_480p/v{i // 4}", "source_prompt": "s",
            "target_prompt": category, "prompt_category": category, "seed": 0, "data": {"name": "tgve"},
            "status": "ok", "metrics": {"clip_text": float(i)}, "metric_info": {"clip_text": {"higher_is_better": True}},
            "cost": {"seconds_per_frame": 1.0, "peak_gpu_memory_gb": 0.0}})
    outputs = execute_leaderboard_notebook(tmp_path / "store", monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "clip_text by prompt category" in "".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "background ↑" in text and "overall ↑" in text and "3.5 ±" in text  # mean of 0..7


def test_export_reads_the_lossless_frames_first(tmp_path):
    """edited.mkv gives the edit's exact uint8 frames; without it frames.pt, else the lossy mp4."""
    import torch

    from vedit.video import to_uint8, write_video

    g = torch.Generator().manual_seed(0)
    frames = torch.rand(3, 3, 16, 16, generator=g)
    write_video(tmp_path / "edited.mp4", frames)
    decoded = edited_frames({"_dir": str(tmp_path), "outputs": {"edited": "edited.mp4"}})
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 3, 16, 16)
    assert not torch.equal(decoded, to_uint8(frames))  # noise does not survive the lossy codec
    torch.save(frames.half(), tmp_path / "frames.pt")
    assert torch.equal(edited_frames({"_dir": str(tmp_path)}), to_uint8(frames.half().float()))
    torch.save(to_uint8(frames), tmp_path / "frames.pt")  # what save_frames keeps of a uint8 edit
    assert torch.equal(edited_frames({"_dir": str(tmp_path)}), to_uint8(frames))
    (tmp_path / "frames.pt").unlink()
    write_video(tmp_path / "edited.mkv", frames, lossless=True)
    assert torch.equal(edited_frames({"_dir": str(tmp_path)}), to_uint8(frames))


def test_category_table_gives_each_metric_model_set_its_own_row():
    def scored(clip: str, value: float) -> dict:
        return {"models": {"clip": clip}, "tiny": False, "values": {"clip_text": value}}

    records = [{"method": "m", "backbone_kind": "paper", "status": "ok", "prompt_category": c,
                "metric_info": {"clip_text": {"higher_is_better": True}},
                "metric_sets": [scored("ViT-L-14", v), scored("ViT-B-32", 10 * v)]}
               for c, v in (("style", 1.0), ("object", 2.0))]
    table = category_table(records, "clip_text")
    assert table.loc["m (clip ViT-L-14)", "style ↑"] == "1" and table.loc["m (clip ViT-B-32)", "object ↑"] == "20"
    assert table["cells"].tolist() == [2, 2]  # each cell once per row
