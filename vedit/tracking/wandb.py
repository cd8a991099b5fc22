"""Weights & Biases tracker: one wandb run per Hydra job (a method x seed), grouped by sweep.

Logs the resolved config, each cell's metrics and cost as a row of a table, the side-by-side videos,
and the job's leaderboard table. At the sweep's end one more run (`sweep`) logs the table `grid`: a
row per video, prompts and seed, the source and a video column per method, as the report site's video
pages. Works offline with WANDB_MODE=offline (files under ./wandb).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


class WandbTracker:
    def __init__(self, project: str = "vedit", group: str | None = None, mode: str | None = None,
                 log_videos: bool = True, dir: str | None = None) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ImportError("tracker=wandb needs the wandb package: pip install 'vedit[wandb]'") from e
        self.wandb = wandb
        self.project, self.group, self.mode, self.dir = project, group, mode, dir
        self.log_videos = log_videos
        self.run = None
        self.rows: list[list] = []

    def _start(self, record: dict) -> None:
        cfg = record.get("config", {})
        name = f"{record.get('method')}-seed{record.get('seed')}"
        self.run = self.wandb.init(project=self.project, group=self.group, name=name, config=cfg,
                                   mode=self.mode, dir=self.dir, reinit="finish_previous")

    def log_cell(self, record: dict, cell_dir: Path) -> None:
        if self.run is None:
            self._start(record)
        data = {f"metrics/{k}": v for k, v in (record.get("metrics") or {}).items()}
        data.update({f"cost/{k}": v for k, v in (record.get("cost") or {}).items()})
        data["failed"] = int(record.get("status") != "ok")
        video = Path(cell_dir) / "side_by_side.mp4"
        if self.log_videos and video.exists():
            data["side_by_side"] = self.wandb.Video(str(video), format="mp4")
        self.run.log(data)
        self.rows.append([record.get("key"), record.get("video"), record.get("target_prompt"),
                          record.get("status"), *[(record.get("metrics") or {}).get(k) for k in sorted(data)
                                                  if k.startswith("metrics/")]])

    def finish(self, records: list[dict]) -> None:
        if self.run is None:
            return
        from vedit.leaderboard import leaderboard

        table = leaderboard([r for r in records if r])
        if not table.empty:
            self.run.log({"leaderboard": self.wandb.Table(dataframe=table.reset_index())})
        self.run.finish()
        self.run = None

    def log_sweep(self, records: list[dict]) -> Any:
        """A run named `sweep` with the table `grid`: a row per (benchmark, video, prompts, seed), the
        source (left half of a side_by_side.mp4) and a video column per method (its edited.mp4; empty
        where the cell failed or was not run)."""
        from vedit.report import grid, source_video
        from vedit.video import read_video, write_video

        layout = grid([r for r in records if r])
        methods = sorted({c for columns, _ in layout.values() for c in columns})
        table = self.wandb.Table(columns=["benchmark", "video", "source_prompt", "target_prompt", "seed", "category",
                                          "source", *methods])
        with tempfile.TemporaryDirectory() as tmp:
            run = self.wandb.init(project=self.project, group=self.group, name="sweep", job_type="sweep",
                                  mode=self.mode, dir=self.dir, reinit="finish_previous")
            for n, ((benchmark, video), (_, rows)) in enumerate(layout.items()):
                found = source_video([r for row in rows for r in row.cells.values()]) if self.log_videos else None
                source = Path(tmp) / f"source-{n}.mp4"
                if found is not None:
                    clip = read_video(found)
                    write_video(source, clip.pixels[..., : clip.pixels.shape[-1] // 2], fps=clip.fps or 10.0)
                for row in rows:
                    table.add_data(benchmark, video, row.source_prompt, row.target_prompt, row.seed, row.category,
                                   self._video(source), *[self._video(_edited(row.cells.get(m))) for m in methods])
            run.log({"grid": table})  # wandb copies the videos into the run's table artifact here
            run.finish()
        return table

    def _video(self, path: Path | None) -> Any:
        return self.wandb.Video(str(path), format="mp4") if self.log_videos and path and path.is_file() else None


def _edited(record: dict | None) -> Path | None:
    return Path(record["_dir"]) / "edited.mp4" if record and record.get("status") == "ok" else None


def log_sweep_grids(config: Any, records: list[dict]) -> list:
    """At a sweep's end: each wandb tracker of the config logs the sweep's grid (`WandbTracker.log_sweep`),
    in the sweep's group."""
    from hydra.utils import instantiate

    return [instantiate(tracker, group=str(config.hydra.sweep.dir)).log_sweep(records)
            for tracker in (config.get("tracker") or {}).get("trackers") or []
            if str(tracker.get("_target_", "")).endswith("WandbTracker")]


def read_offline_run(path: str | Path) -> dict:
    """Group, config, history rows and whether the run exited, read from an offline `run-*.wandb` file.

    The file is a LevelDB-style log (7-byte file header, 32 KiB blocks, records split into chunks with
    a 7-byte header: crc32, length, type) of `wandb_internal_pb2.Record` protobufs.
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    block, pos, pending = 32768, 7, b""
    out = {"group": None, "config": {}, "history": [], "finished": False}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: one whole record
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            which = record.WhichOneof("record_type")
            if which == "run":
                out["group"] = record.run.run_group
                out["config"] = {i.key: json.loads(i.value_json) for i in record.run.config.update}
            elif which == "exit":
                out["finished"] = True
            elif which == "history":
                out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})
    return out
