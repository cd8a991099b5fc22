"""Stores, prompt files and suites are untrusted input: nothing read from them runs code, is unpickled,
or names a path outside the folder it belongs to."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from vedit.data.folder import FolderDataset
from vedit.data.prompts import load_prompts
from vedit.data.rebuild import dataset_from_config
from vedit.evaluate import evaluate
from vedit.export_tgve import export
from vedit.run import run
from vedit.store import read_edited_frames
from vedit.untrusted import UntrustedInputError, check_written_under, inside, plain_name
from vedit.video import VideoError, write_video

from test_evaluate import eval_cfg, run_cfg


def _tamper(cell: Path, change) -> None:
    rec = json.loads((cell / "record.json").read_text())
    change(rec)
    (cell / "record.json").write_text(json.dumps(rec))


@pytest.mark.parametrize("where", ["data", "transform"])
def test_evaluate_never_instantiates_a_stored_target(tmp_path, where):
    store = tmp_path / "store"
    run(run_cfg(tmp_path))
    victim, written = tmp_path / "victim.txt", tmp_path / "written.txt"
    victim.write_text("attacker's content")
    attack = {"_target_": "shutil.copyfile", "src": str(victim), "dst": str(written)}
    cells = sorted(store.glob("cells/*"))
    for cell in cells:
        def change(rec):
            if where == "data":
                rec["config"]["data"] = attack
            else:
                rec["config"]["data"]["transform"] = attack
        shutil.rmtree(cell / "metrics")  # so evaluate must rebuild the source video
        _tamper(cell, change)
    records = evaluate(eval_cfg(tmp_path, f"store_dir={store}"))
    assert not written.exists()
    assert len(records) == len(cells)
    assert all("shutil.copyfile" in r["metric_errors"]["*"] for r in records)


def test_dataset_from_config_takes_plain_arguments_of_registered_datasets_only():
    ds = dataset_from_config({"_target_": "vedit.data.synthetic.SyntheticDataset", "num_videos": 1, "num_frames": 3,
                              "size": [16, 16], "seed": 0})
    assert ds.video_ids() == ["synthetic_000"] and ds.load("synthetic_000").video.frames.shape == (3, 3, 16, 16)
    with pytest.raises(UntrustedInputError, match="_target_"):
        dataset_from_config({"_target_": "vedit.data.synthetic.SyntheticDataset", "num_videos": 1,
                             "size": {"_target_": "os.system", "command": "true"}})
    with pytest.raises(UntrustedInputError, match="_partial_"):
        dataset_from_config({"_target_": "vedit.data.synthetic.SyntheticDataset", "_partial_": True})
    with pytest.raises(UntrustedInputError, match="takes no argument 'dst'"):
        dataset_from_config({"_target_": "vedit.data.synthetic.SyntheticDataset", "dst": "x"})


def test_evaluate_refuses_a_stored_video_id_outside_its_dataset(tmp_path):
    store = tmp_path / "store"
    run(run_cfg(tmp_path))
    cell = sorted(store.glob("cells/*"))[0]
    shutil.rmtree(cell / "metrics")
    _tamper(cell, lambda rec: rec.update(video="../../etc/passwd"))
    records = {r["key"]: r for r in evaluate(eval_cfg(tmp_path, f"store_dir={store}"))}
    assert "is not one of its dataset's" in records[cell.name]["metric_errors"]["*"]


def test_evaluate_folder_paths_stay_inside_the_folder(tmp_path):
    folder = tmp_path / "edits"
    folder.mkdir()
    outside = tmp_path / "secret.mp4"
    write_video(outside, torch.zeros(2, 3, 16, 16, dtype=torch.uint8), fps=5)
    write_video(folder / "a.mp4", torch.zeros(2, 3, 16, 16, dtype=torch.uint8), fps=5)
    for entry in ({"source": "../secret.mp4"}, {"source": str(outside)}, {"source": "a.mp4", "edited": "../secret.mp4"}):
        (folder / "edits.yaml").write_text(yaml.safe_dump({"edits": {"a": {"target_prompt": "t", **entry}}}))
        with pytest.raises(UntrustedInputError, match="stay inside"):
            evaluate(eval_cfg(tmp_path, f"store_dir={tmp_path / 's'}", f"folder={folder}"))


def test_an_imported_cell_is_scored_from_the_store_alone(tmp_path):
    """The source is stored in the cell: a record's source_path is never read."""
    folder = tmp_path / "edits"
    folder.mkdir()
    frames = torch.randint(0, 255, (3, 3, 16, 16), dtype=torch.uint8)
    write_video(folder / "src.mkv", frames, fps=5, lossless=True)
    write_video(folder / "a.mkv", frames, fps=5, lossless=True)
    (folder / "edits.yaml").write_text(yaml.safe_dump({"edits": {"a": {"source": "src.mkv", "source_prompt": "s", "target_prompt": "t"}}}))
    first = evaluate(eval_cfg(tmp_path, f"store_dir={tmp_path / 's'}", f"folder={folder}", "estimators.flow=dis"))
    shutil.rmtree(folder)
    cell = next((tmp_path / "s").glob("cells/*"))
    shutil.rmtree(cell / "metrics")
    _tamper(cell, lambda rec: rec.update(source_path="/etc/passwd"))
    again = evaluate(eval_cfg(tmp_path, f"store_dir={tmp_path / 's'}", "estimators.flow=dis"))
    assert "metric_errors" not in again[0]
    assert again[0]["metrics"] == pytest.approx(first[0]["metrics"])


def test_frames_pt_is_loaded_without_unpickling_code(tmp_path):
    class Boom:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    torch.save({"frames": Boom()}, tmp_path / "frames.pt")
    with pytest.raises(Exception):  # noqa: B017 - torch's UnpicklingError; what matters is below
        read_edited_frames(tmp_path)
    assert not (tmp_path / "ran").exists()
    frames = torch.rand(2, 3, 8, 8)
    torch.save(frames, tmp_path / "frames.pt")  # an older cell's tensor still loads
    assert read_edited_frames(tmp_path).shape == (2, 3, 8, 8)


def _tgve_record(tmp_path: Path, video: str, category: str = "style") -> Path:
    cell = tmp_path / "store" / "cells" / "k"
    cell.mkdir(parents=True)
    write_video(cell / "edited.mkv", torch.zeros(2, 3, 16, 16, dtype=torch.uint8), fps=5, lossless=True)
    (cell / "record.json").write_text(json.dumps({
        "key": "k", "status": "ok", "method": "m", "backbone_kind": "tiny", "seed": 0, "video": video,
        "prompt_category": category, "data": {"name": "tgve"}, "outputs": {"frames": "edited.mkv"}}))
    return tmp_path / "store"


@pytest.mark.parametrize("video,category", [("DAVIS_480p/../../../x", "style"), ("/tmp/x/y", "style"),
                                            ("DAVIS_480p/ok", "../../x"), ("elsewhere/x", "style")])
def test_export_tgve_writes_only_challenge_paths_under_out(tmp_path, video, category):
    store = _tgve_record(tmp_path, video, category)
    out = tmp_path / "a" / "b" / "submission"
    problems = export([store], out)
    assert any("not a TGVE" in p for p in problems)
    written = [p for p in tmp_path.rglob("*.jpg")]
    assert written == []


def test_export_tgve_writes_a_challenge_id(tmp_path):
    store = _tgve_record(tmp_path, "DAVIS_480p/bmx-rider")
    out = tmp_path / "submission"
    export([store], out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        "DAVIS_480p/bmx-rider/style/00000.jpg", "DAVIS_480p/bmx-rider/style/00001.jpg"]


def test_tgve_suite_video_names_are_plain(tmp_path):
    from vedit.data.tgve import TGVEDataset

    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"videos": {"../../x": {
        "subset": "DAVIS_480p", "frames": 2, "source_prompt": "a", "edit_prompts": {"style": "b"}}}}))
    with pytest.raises(UntrustedInputError, match="not a plain name"):
        TGVEDataset(tmp_path, prompts=tmp_path / "suite.yaml")


def test_prompt_file_paths_stay_under_their_folder(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "other").mkdir()
    write_video(tmp_path / "other" / "x.mp4", torch.zeros(2, 3, 16, 16, dtype=torch.uint8), fps=5)
    for path in ("../other/x.mp4", str(tmp_path / "other" / "x.mp4")):
        (tmp_path / "clips" / "clips.yaml").write_text(yaml.safe_dump({"clips": {"x": {"path": path}}}))
        with pytest.raises(UntrustedInputError, match="stay inside"):
            FolderDataset(tmp_path / "clips", prompts="clips.yaml")
    # the config (trusted) may widen the folder: data.paths_root
    (tmp_path / "clips" / "clips.yaml").write_text(yaml.safe_dump({"clips": {"x": {"path": "../other/x.mp4"}}}))
    ds = FolderDataset(tmp_path / "clips", prompts="clips.yaml", paths_root=tmp_path)
    assert ds.load("x").video.num_frames == 2
    with pytest.raises(UntrustedInputError):  # an absolute path stays refused
        (tmp_path / "clips" / "clips.yaml").write_text(yaml.safe_dump({"clips": {"x": {"path": "/etc"}}}))
        FolderDataset(tmp_path / "clips", prompts="clips.yaml", paths_root="/")


def test_untrusted_helpers_on_constructed_paths(tmp_path):
    assert inside(tmp_path, "a/b/../c.mp4", "t") == tmp_path / "a" / "c.mp4"
    for bad in ("../x", "a/../../x", "/abs", ""):
        with pytest.raises(UntrustedInputError):
            inside(tmp_path, bad, "t")
    assert inside(tmp_path / "a", "../b/x", "t", allowed=tmp_path) == tmp_path / "b" / "x"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(UntrustedInputError, match="outside"):
        check_written_under(tmp_path / "out" / "link" / "x", tmp_path / "out", "t")
    assert check_written_under(tmp_path / "out" / "y" / "z", tmp_path / "out", "t")
    for bad in ("..", ".hidden", "a/b", "a\\b", ""):
        with pytest.raises(UntrustedInputError):
            plain_name(bad, "t")
    assert plain_name("bmx-rider_2.0", "t") == "bmx-rider_2.0"


def test_misspelt_prompt_keys_are_named():
    for wrong, right in (("source_promt", "source_prompt"), ("edit_prompt", "edit_prompts")):
        with pytest.raises(VideoError, match=f"unknown key '{wrong}'; did you mean '{right}'"):
            load_prompts({"videos": {"v": {wrong: "a", **({"source_prompt": "s"} if wrong != "source_promt" else {})}}})
    with pytest.raises(VideoError, match="edit_prompts must be"):
        load_prompts({"videos": {"v": {"edit_prompts": [{"nested": 1}]}}})
    # the shipped files' informational keys are accepted
    entries = load_prompts({"videos": {"v": {"source_prompt": "a", "edit_prompts": ["b"], "origin": "x", "frames": 3}}})
    assert entries["v"].edit_prompts == ["b"]
