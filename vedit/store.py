"""Result records in a content-addressed store with atomic writes.

Layout: `<root>/cells/<key>/` holds `record.json` (the edit), `edited.mkv` (the edited frames,
lossless FFV1: what metrics are computed on), `edited.mp4` and `side_by_side.mp4` (H.264, for
viewing), and `metrics/<metric key>.json`: one file per metric configuration (the metric's name,
parameters, models and the flow estimator that ran, hashed by `metric_key`) and `metrics/sets/`:
which entries were asked for together (one row per metric configuration in tables). The edit is stored
once; a changed metric setting has another key, so its values are computed from `edited.mkv` when
missing, without re-editing, and stale values are never read back.

A cell directory is written under `<root>/tmp/` and renamed into place in one step, so a
kill at any moment leaves either the finished cell or nothing; a rerun skips finished cells.

Concurrent sweeps on one store: before computing a cell a process creates `<root>/claims/<key>`
with O_CREAT|O_EXCL (atomic on local filesystems and NFSv3+), holding its host, pid and start time.
Others skip a claimed cell and come back to it later. A claim whose process is gone (same host:
the pid is dead; other hosts: older than `stale_after` seconds) is broken by renaming it aside, so
of several processes breaking the same stale claim exactly one wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 2
RECORD = "record.json"
EDITED = "edited.mkv"  # lossless edited frames
METRICS_DIR = "metrics"


def cell_key(parts: dict[str, Any]) -> str:
    """Stable hash of the parts that define a cell (method+params, backbone, data, video, prompts, seed)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def metric_key(config: dict[str, Any]) -> str:
    """Stable hash of one metric's configuration (see `Metric.config`)."""
    return cell_key(config)


def write_metric_entry(cell_dir: Path, entry: dict) -> None:
    """Store one metric configuration's values in a cell (atomic; concurrent writers agree)."""
    folder = Path(cell_dir) / METRICS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{entry['metric_key']}.json", json.dumps(entry, indent=1, sort_keys=True, default=str))


def write_metric_set(cell_dir: Path, keys: list[str], models: dict[str, Any]) -> None:
    """Record that these metric entries were asked for together (one metric configuration of a run)."""
    folder = Path(cell_dir) / METRICS_DIR / "sets"
    folder.mkdir(parents=True, exist_ok=True)
    set_key = cell_key(sorted(keys))
    if not (folder / f"{set_key}.json").exists():
        atomic_write_text(folder / f"{set_key}.json", json.dumps(
            {"metric_keys": sorted(keys), "models": models, "computed_at": time.time()}, sort_keys=True, default=str))


def split_tiny(models: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A metric entry's models without their `*_tiny` flags, and whether any of those flags is set."""
    return ({k: v for k, v in models.items() if not str(k).endswith("_tiny")},
            any(v for k, v in models.items() if str(k).endswith("_tiny")))


def read_metric_sets(cell_dir: Path, entries: list[dict] | None = None) -> list[dict]:
    """The metric configurations a cell was scored under, each with its entries' merged values
    (`entries`: the cell's metric entries when the caller has read them already)."""
    entries = {e["metric_key"]: e for e in (read_metric_entries(cell_dir) if entries is None else entries)}
    out = []
    for path in sorted((Path(cell_dir) / METRICS_DIR / "sets").glob("*.json")):
        s = read_record(path)
        if s is None:
            continue
        found = [entries[k] for k in s.get("metric_keys", []) if k in entries]
        out.append({"models": s.get("models") or {}, "computed_at": s.get("computed_at", 0),
                    "tiny": any(split_tiny(e.get("models") or {})[1] for e in found),
                    "values": {k: v for e in found for k, v in e.get("values", {}).items()}})
    return sorted(out, key=lambda s: s["computed_at"])


def read_metric_entries(cell_dir: Path) -> list[dict]:
    """All metric entries stored for a cell, oldest first."""
    entries = [e for p in sorted((Path(cell_dir) / METRICS_DIR).glob("*.json")) if (e := read_record(p))]
    return sorted(entries, key=lambda e: e.get("computed_at", 0))


def save_frames_lossless(path: Path, frames: Any, fps: float = 10.0) -> None:
    """(T, 3, H, W) uint8 frames -> FFV1 (lossless RGB) in Matroska; any size."""
    from vedit.video import write_video

    write_video(path, frames, fps=fps, lossless=True)


def load_frames_uint8(path: Path) -> Any:
    """A video file (any container PyAV reads) -> (T, 3, H, W) uint8 tensor."""
    from vedit.video import read_video

    return read_video(path).pixels


def read_edited_frames(folder: Path, lossy: str = "edited.mp4") -> Any:
    """A cell folder's edited frames as uint8 (T, 3, H, W), from the lossless file (older cells:
    frames.pt, else the lossy `lossy` video, whose values differ slightly)."""
    if (folder / EDITED).exists():
        return load_frames_uint8(folder / EDITED)
    if (folder / "frames.pt").exists():
        import torch

        from vedit.video import to_uint8

        return to_uint8(torch.load(folder / "frames.pt", map_location="cpu", weights_only=True))
    return load_frames_uint8(folder / lossy)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ResultStore:
    def __init__(self, root: str | Path, stale_after: float = 6 * 3600.0) -> None:
        self.root = Path(root)
        self.cells = self.root / "cells"
        self.tmp = self.root / "tmp"
        self.claims = self.root / "claims"
        self.stale_after = stale_after
        for folder in (self.cells, self.tmp, self.claims):
            folder.mkdir(parents=True, exist_ok=True)

    def cell_dir(self, key: str) -> Path:
        return self.cells / key

    def record(self, key: str) -> dict | None:
        return read_record(self.cell_dir(key) / RECORD)

    def status(self, key: str) -> str | None:
        rec = self.record(key)
        return rec.get("status") if rec else None

    def edited_frames(self, key: str) -> Any:
        return read_edited_frames(self.cell_dir(key))

    def new_workdir(self, key: str) -> Path:
        """`tmp/<key>.<host>.<pid>.<random>`: the host and pid say whose work it is (see clean_tmp)."""
        work = self.tmp / f"{key}.{_host_tag()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True)
        return work

    def commit(self, key: str, workdir: Path, record: dict) -> Path:
        """Write the record into `workdir` and move it into place atomically.

        A finished (`ok`) cell already in place is kept: concurrent sweeps never overwrite each other's
        results. A `failed` cell is replaced by a new attempt.
        """
        record = {"schema": SCHEMA_VERSION, "key": key, **record}
        atomic_write_text(workdir / RECORD, json.dumps(record, indent=1, sort_keys=True, default=str))
        final = self.cell_dir(key)
        existing = self.status(key)
        if existing == "ok":
            shutil.rmtree(workdir, ignore_errors=True)
            return final
        if existing is not None:  # a failed attempt: move it aside, then put the new one in place
            trash = self.tmp / f"{key}.old.{uuid.uuid4().hex[:8]}"
            try:
                os.rename(final, trash)
            except FileNotFoundError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(workdir, final)
        except OSError:  # another process put the cell in place first
            shutil.rmtree(workdir, ignore_errors=True)
        return final

    def claim(self, key: str) -> bool:
        """Take the cell for this process; False while another live process holds it."""
        path = self.claims / key
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_claim(path)
                if holder is None and _age(path) < 30:  # just created, its content not written yet
                    return False
                if holder is not None and not self._stale(holder, path):
                    return False
                self._break(path, holder)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, f)
            return True
        return False

    def release(self, key: str) -> None:
        """Drop this process's claim on the cell (a claim held by someone else is left alone)."""
        path = self.claims / key
        holder = _read_claim(path)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            path.unlink(missing_ok=True)

    def claimed(self) -> list[str]:
        """Keys currently claimed by live processes."""
        return sorted(p.name for p in self.claims.iterdir()
                      if "." not in p.name and (h := _read_claim(p)) is not None and not self._stale(h, p))

    def _stale(self, holder: dict, path: Path) -> bool:
        """Dead holder on this host, or any holder older than `stale_after` (other hosts, reused pids)."""
        if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
            return True
        return _age(path) > self.stale_after

    def _break(self, path: Path, holder: dict | None) -> None:
        """Move a stale (or unreadable) claim aside; put it back if it changed owner meanwhile."""
        aside = path.with_name(f"{path.name}.stale.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        if _read_claim(aside) != holder:  # a fresh claim was taken in between: give it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def counts(self) -> dict[str, int]:
        """Cells by status (ok, failed) plus cells being computed now (running)."""
        out = {"ok": 0, "failed": 0}
        for rec in self.records(with_metrics=False):
            out[rec.get("status", "failed")] = out.get(rec.get("status", "failed"), 0) + 1
        out["running"] = len(self.claimed())
        return out

    def records(self, with_metrics: bool = True) -> Iterator[dict]:
        """Each cell's record with its metric entries (`metric_entries`, all configurations) and, for a
        quick look, `metrics`: the newest value of each metric over those entries (not read when
        `with_metrics` is false)."""
        for path in sorted(self.cells.glob(f"*/{RECORD}")):
            rec = read_record(path)
            if rec is not None and not with_metrics:
                yield {**rec, "_dir": str(path.parent)}
            elif rec is not None:
                entries = read_metric_entries(path.parent)
                latest = {k: v for e in entries for k, v in e.get("values", {}).items()}
                yield {**rec, "_dir": str(path.parent), "metric_entries": entries,
                       **({"metrics": latest} if entries else {})}

    def clean_tmp(self) -> None:
        """Remove work directories left by killed runs: this host's whose process is gone, and any
        older than `stale_after` (other hosts' pids cannot be checked from here: a store shared by
        several machines keeps their work in progress)."""
        for work in self.tmp.iterdir():
            parts = work.name.split(".")
            mine = len(parts) == 4 and parts[1] == _host_tag() and parts[2].isdigit()
            trash = len(parts) == 3 and parts[1] == "old"  # a replaced failed cell (see commit)
            if trash or (mine and not _alive(int(parts[2]))) or _age(work) > self.stale_after:
                shutil.rmtree(work, ignore_errors=True)


def read_record(path: Path) -> dict | None:
    """A record file's contents; None when it is missing or (never, with atomic writes) unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_claim(path: Path) -> dict | None:
    """The claim's holder, or None when the file is gone or not yet (fully) written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _host_tag() -> str:
    """This host's name as it can appear in a file name (no dots or separators)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname()) or "host"


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
