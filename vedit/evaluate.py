"""Score what is stored, or any folder of edited videos, under a metric set; never re-edits.

    python -m vedit.evaluate store_dir=outputs/results metrics=tgve
    python -m vedit.evaluate folder=path/to/edits method_name=tokenflow store_dir=outputs/external metrics=v2vbench

Store mode: every finished cell gets the configured metrics; entries already stored for the same
metric configuration are reused, missing ones are computed from the cell's lossless edited frames
and the source video (rebuilt from the record's dataset config and checked against its hash). A store
is untrusted input: the dataset config only names one of vedit's datasets and its plain arguments
(never instantiated), and the video must be one of that dataset's.

Folder mode scores edits made elsewhere (the videos V2VBench, TGVE or FiVE collect) under exactly
the same metrics: each edit is imported into `store_dir` as a cell of method `method_name` and backbone
kind `external` (its frames and its source's stored losslessly as decoded, so the cell needs nothing
outside the store), then scored as in store mode; the leaderboard shows them next to vedit's methods.
Paths in the prompts file are relative to it and stay inside its folder. The prompts file
(`folder/edits.yaml`):

    edits:
      blackswan_duck:                     # edited video <folder>/blackswan_duck.<mp4|mkv|...> or frame folder
        source: sources/blackswan.mp4     # the source video, relative to this file
        source_prompt: a black swan swimming in a river
        target_prompt: a white duck swimming in a river
        edited: other/name.mp4            # optional: the edited video's path instead of <folder>/<id>.*
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig

from vedit.cli import exit_on_bad_overrides
from vedit.data.folder import scan_videos
from vedit.data.rebuild import dataset_from_config
from vedit.memory import return_large_frees_to_os
from vedit.metrics.scoring import attach_metrics
from vedit.provenance import resolve_device
from vedit.store import (
    EDITED,
    ResultStore,
    cell_key,
    load_frames_uint8,
    save_frames_lossless,
)
from vedit.task import EditTask
from vedit.untrusted import inside
from vedit.video import VideoError, read_video

SOURCE = "source.mkv"  # an imported (external) cell's source frames, lossless
log = logging.getLogger("vedit.evaluate")
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


class EvaluateError(ValueError):
    """Bad evaluate input: the message names it and what to do."""


def build_metrics(cfg: DictConfig) -> list:
    from vedit.run import build_estimators
    from vedit.run import build_metrics as build

    device = resolve_device(cfg.device)
    return build(cfg, build_estimators(cfg, device), device)


class TaskBuilder:
    """The EditTask of a stored cell: its source video from the record's dataset (or source path)."""

    def __init__(self) -> None:
        self._datasets: dict[str, Any] = {}

    def __call__(self, rec: dict) -> EditTask:
        if rec.get("backbone_kind") == "external":
            source = Path(rec["_dir"]) / SOURCE
            if not source.exists():
                raise EvaluateError(f"cell {rec.get('key')}: no {SOURCE} in {rec['_dir']} (imported by an older "
                                    "vedit); import the folder again into a new store_dir")
            video, side, dataset = read_video(source, str(rec.get("video"))), {}, "external"
        else:
            data_cfg = (rec.get("config") or {}).get("data")
            if not data_cfg:
                raise EvaluateError(f"cell {rec.get('key')}: its record has no dataset config; rerun it with vedit.run")
            blob = json.dumps(data_cfg, sort_keys=True, default=str)
            if blob not in self._datasets:
                self._datasets[blob] = dataset_from_config(data_cfg, f"cell {rec.get('key')}: config.data")
            data = self._datasets[blob]
            if rec.get("video") not in data.video_ids():
                raise EvaluateError(f"cell {rec.get('key')}: video {rec.get('video')!r} is not one of its dataset's "
                                    f"({(rec.get('data') or {}).get('name')} at {getattr(data, 'root', '?')})")
            item = data.load(rec["video"])
            video, side, dataset = item.video, item.side, (rec.get("data") or {}).get("name", "")
        if rec.get("video_hash") and video.content_hash() != rec["video_hash"]:
            raise EvaluateError(f"cell {rec.get('key')}: the source video {rec.get('video')!r} differs from the one "
                                "edited (content hash); restore the dataset as it was, or re-run the edit")
        return EditTask(video=video, source_prompt=rec.get("source_prompt"), target_prompt=rec.get("target_prompt"),
                        seed=int(rec.get("seed") or 0), side=side, dataset=dataset)


def score_store(store: ResultStore, metrics: list) -> list[dict]:
    """Every finished cell of the store with the metrics' values (stored ones reused, missing computed)."""
    tasks, out = TaskBuilder(), []
    for rec in store.records(with_metrics=False):
        rec = {k: v for k, v in rec.items() if k != "metrics"}  # an old record's own values: only this metric set
        if rec.get("status") != "ok":
            out.append(rec)
            continue
        try:
            task = tasks(rec)
        except Exception as e:  # noqa: BLE001 - one unscorable cell does not stop the others
            log.warning("cell %s: %s", rec.get("key"), e)
            out.append({**rec, "metric_errors": {"*": f"{type(e).__name__}: {e}"}})
            continue
        out.append(attach_metrics(store, rec["key"], task, rec, metrics))
    return out


def read_edits(folder: Path, prompts: str) -> dict[str, dict]:
    """id -> {edited, source, source_prompt, target_prompt} from the folder's prompts file."""
    file = folder / prompts
    if not file.exists():
        raise EvaluateError(f"evaluate folder={folder}: no prompts file {file}; write one (format in "
                            "vedit/evaluate.py) or pass prompts=<file name in the folder>")
    data = yaml.safe_load(file.read_text()) or {}
    edits = data.get("edits") if isinstance(data, dict) else None
    if not isinstance(edits, dict) or not edits:
        raise EvaluateError(f"{file}: expected a mapping 'edits: {{id: {{source, source_prompt, target_prompt}}}}'")
    found = scan_videos(folder)
    out = {}
    for vid, entry in edits.items():
        entry = entry or {}
        missing = [k for k in ("source", "target_prompt") if not entry.get(k)]
        if missing:
            raise EvaluateError(f"{file}: edit {vid!r} lacks {', '.join(missing)}")
        where = f"{file}: edit {vid!r}"
        edited = inside(file.parent, entry["edited"], f"{where}: edited") if entry.get("edited") else found.get(str(vid))
        if edited is None or not Path(edited).exists():
            raise EvaluateError(f"{where}: no edited video {folder}/{vid}.* (or give `edited: path`)")
        out[str(vid)] = {"edited": Path(edited), "source": inside(file.parent, entry["source"], f"{where}: source"),
                         "source_prompt": entry.get("source_prompt"), "target_prompt": entry["target_prompt"]}
    return out


def import_folder(folder: Path, prompts: str, method: str, store: ResultStore) -> list[str]:
    """Import a folder's edits into the store as finished cells (kept if already there) -> their keys."""
    keys = []
    for vid, e in read_edits(folder, prompts).items():
        source = read_video(e["source"], e["source"].stem)
        edited = load_frames_uint8(e["edited"])  # a video file or a folder of frames
        parts = {"method": {"name": method, "params": {"folder": folder.name}}, "backbone": {"kind": "external"},
                 "data": {"name": "folder", "root": folder.name}, "video": vid, "video_hash": source.content_hash(),
                 "source_prompt": e["source_prompt"], "target_prompt": e["target_prompt"], "seed": 0}
        key = cell_key(parts)
        keys.append(key)
        if store.status(key) == "ok":
            continue
        work = store.new_workdir(key)
        fps = source.fps or 10.0
        save_frames_lossless(work / EDITED, edited, fps=fps)
        save_frames_lossless(work / SOURCE, source.pixels, fps=fps)
        store.commit(key, work, {
            **{k: v for k, v in parts.items() if k != "method"}, "method": method, "backbone_kind": "external",
            "status": "ok", "source_path": str(e["source"].resolve()), "edited_path": str(e["edited"].resolve()),
            "source": source.meta, "fps": {"source": source.fps, "output": fps},
            "num_frames": int(edited.shape[0]), "outputs": {"frames": EDITED, "source": SOURCE},
            "config": {"folder": str(folder)}})
    return keys


def evaluate(cfg: DictConfig) -> list[dict]:
    """Score the store (after importing `cfg.folder` when given) -> records with metric values."""
    return_large_frees_to_os()
    store_dir = Path(cfg.store_dir)
    if cfg.folder is None and not (store_dir / "cells").is_dir():
        raise EvaluateError(f"store_dir={store_dir} is not a result store (no cells/ folder); give the store_dir "
                            "of a vedit.run, or folder=<edited videos> to score outside edits")
    store = ResultStore(store_dir)
    metrics = build_metrics(cfg)
    keys = None
    if cfg.folder is not None:
        folder = Path(cfg.folder)
        if not folder.is_dir():
            raise EvaluateError(f"folder={folder} is not a folder")
        keys = set(import_folder(folder, cfg.prompts, cfg.method_name or folder.name, store))
    records = score_store(store, metrics)
    return [r for r in records if keys is None or r.get("key") in keys]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from vedit.leaderboard import format_table
    from vedit.run import SetupError

    try:
        records = evaluate(cfg)
    except (EvaluateError, VideoError, SetupError) as e:
        raise SystemExit(f"error: {e}") from None
    failed = {r["key"]: r["metric_errors"] for r in records if r.get("metric_errors")}
    print(format_table(records))
    print(f"\n{len(records)} cells scored in {cfg.store_dir}" + (f"; metric errors in {len(failed)}" if failed else ""))
    for key, errors in failed.items():
        print(f"  {key}: {errors}")


if __name__ == "__main__":
    exit_on_bad_overrides()
    main()
