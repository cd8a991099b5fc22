"""Hydra entry point: compose -> build cells -> run editor -> metrics -> store.

    python -m vedit.run experiment=demo
    python -m vedit.run method=pix2video data=davis data.root=/path/to/DAVIS
    python -m vedit.run -m method=pix2video,rerender,vidmp3 seed=0,1,2
"""

from __future__ import annotations

import inspect
import logging
import re
import shutil
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vedit.backbones import BackboneUnavailable, build_backbone
from vedit.cli import exit_on_bad_overrides
from vedit.editors.base import PhaseTimer
from vedit.editors.params import ParamError
from vedit.errors import EditorError
from vedit.memory import return_large_frees_to_os
from vedit.metrics.base import MetricError
from vedit.metrics.cost import COST_CONVENTIONS, cost_fields
from vedit.metrics.scoring import applicable, attach_metrics, metric_entry
from vedit.provenance import device_name, git_commit, package_versions, resolve_device
from vedit.registry import EDITORS, METRICS, UnknownNameError
from vedit.store import (
    EDITED,
    METRICS_DIR,
    ResultStore,
    cell_key,
    save_frames_lossless,
    write_metric_entry,
)
from vedit.task import EditTask
from vedit.tracking.progress import SweepProgress
from vedit.video import CHUNK, VideoError, side_by_side, to_uint8, write_video

log = logging.getLogger("vedit.run")
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


class SetupError(ValueError):
    """The run cannot start (bad config, unwritable store); the message says what to change."""


@dataclass
class Cell:
    key: str
    parts: dict
    task: EditTask | None = None
    error: str | None = None  # set when the video could not even be loaded


@dataclass
class RunSummary:
    records: list[dict] = field(default_factory=list)
    computed: int = 0
    skipped: int = 0

    @property
    def failed(self) -> int:
        """Failed cells of this run, computed now or recorded by an earlier run."""
        return sum(r.get("status") != "ok" for r in self.records if r)


def build_metrics(cfg: DictConfig, estimators, device: torch.device) -> list:
    """Metric objects by name, with the CLIP model / estimators injected where a metric takes them."""
    clip = None
    metrics = []
    for name in cfg.metrics.names:
        cls = METRICS.get(name)
        params = inspect.signature(cls).parameters
        kwargs: dict[str, Any] = dict(cfg.metrics.get("options", {}).get(name, {}) or {})
        if "clip" in params:
            if clip is None:
                try:
                    clip = instantiate(cfg.metrics.clip, device=str(device))
                except InstantiationException as e:
                    if isinstance(e.__cause__, MetricError):
                        raise SetupError(str(e.__cause__)) from None
                    raise
            kwargs["clip"] = clip
        if "estimators" in params:
            kwargs["estimators"] = estimators
        if "device" in params:  # metrics that load their own models (PickScore, DINOv2)
            kwargs.setdefault("device", str(device))
        metrics.append(cls(**kwargs))
    return metrics


def build_estimators(cfg: DictConfig, device: torch.device):
    """The run's estimators (`cfg.estimators`), caching under `cfg.cache_dir`."""
    from vedit.estimators import Estimators

    return Estimators(**OmegaConf.to_container(cfg.estimators, resolve=True), cache_dir=cfg.cache_dir,
                      device=str(device))


def iter_cells(cfg: DictConfig, dataset, method_part: dict, backbone_part: dict) -> Any:
    """Yield (video id, [Cell]) per video: one cell per (source prompt, target prompt).

    A target prompt with a category (an `EditPrompt` from a suite that gives one) adds `prompt_category`
    to the cell's parts, so to its key and record; plain prompts keep the keys they had.
    """
    data_part = dataset.describe()
    for vid in dataset.video_ids():
        base = {"method": method_part, "backbone": backbone_part, "data": data_part, "seed": int(cfg.seed)}
        try:
            item = dataset.load(vid)
        except Exception as e:  # noqa: BLE001 - an unreadable video is a failed cell, not a dead sweep
            parts = {**base, "video": vid}
            yield vid, [Cell(cell_key(parts), parts, error=f"{type(e).__name__}: {e}")]
            continue
        prompts = list(item.edit_prompts) or [None]
        if cfg.prompts_per_video:
            prompts = prompts[: int(cfg.prompts_per_video)]
        cells = []
        for target in prompts:
            category = getattr(target, "category", None)
            target = None if target is None else str(target)
            parts = {**base, "video": vid, "video_hash": item.video.content_hash(),
                     "source_prompt": item.source_prompt, "target_prompt": target}
            if category is not None:
                parts["prompt_category"] = category
            task = EditTask(video=item.video, source_prompt=item.source_prompt, target_prompt=target,
                            seed=int(cfg.seed), side=item.side, dataset=data_part.get("name", ""),
                            prompt_category=category)
            cells.append(Cell(cell_key(parts), parts, task=task))
        yield vid, cells


def run_cell(cell: Cell, editor, metrics: list, store: ResultStore, common: dict, save_frames: bool) -> dict:
    """Edit, measure and store one cell. Any exception becomes a failed record; nothing is lost.

    The edit (record.json, the lossless edited frames, the mp4s) and each metric's entry
    (metrics/<metric key>.json) are moved into place together; the returned record carries the
    metric values (see `vedit.metrics.scoring`).
    """
    work = store.new_workdir(cell.key)
    record: dict[str, Any] = {**common, **{k: v for k, v in cell.parts.items() if k != "method"},
                              "method": common["method"], "started_at": time.time()}
    if cell.task is not None:  # where the frames came from: size, crop box, frame counts, warnings
        record["source"] = cell.task.video.meta
        record["warnings"] = list(cell.task.video.meta.get("warnings", []))
    try:
        if cell.error:
            raise EditorError(cell.error)
        task = cell.task
        result = editor.edit(task)
        frames = result.frames  # uint8, or float in [0, 1]
        if frames.is_floating_point() and not all(torch.isfinite(c).all() for c in frames.split(CHUNK)):
            raise EditorError(f"{editor.name} produced NaN/inf frames for video {task.video.id!r} "
                              f"(prompt {task.target_prompt!r}); try float32 (backbone.dtype=float32)")
        stored = to_uint8(frames)
        metric_start = time.perf_counter()
        for metric in applicable(metrics, task)[0]:  # on the stored (lossless uint8) frames, as a re-scoring is
            write_metric_entry(work, metric_entry(metric, stored, task))
        record["metric_seconds"] = time.perf_counter() - metric_start
        fps = task.video.fps or 10.0
        save_frames_lossless(work / EDITED, stored, fps=fps)
        write_video(work / "edited.mp4", frames, fps=fps)
        write_video(work / "side_by_side.mp4", side_by_side(task.video.pixels, frames), fps=fps)
        if save_frames:
            torch.save(frames if frames.dtype == torch.uint8 else frames.half(), work / "frames.pt")
        record.update(
            status="ok", timings=result.timings, num_frames=frames.shape[0],
            fps={"source": task.video.fps or None, "output": fps,
                 "from": task.video.meta.get("fps", {}).get("from", "dataset") if task.video.fps else "default"},
            cost=cost_fields(result, frames.shape[0], editor.device), cost_info=COST_CONVENTIONS,
            editor_info=result.info,
            outputs={"edited": "edited.mp4", "side_by_side": "side_by_side.mp4", "frames": EDITED,
                     "side_by_side_shows": "left: the source as the method saw it (after data.transform, "
                                           "see source.transform for the crop); right: the edit"},
        )
    except Exception as e:  # noqa: BLE001 - recorded as a failed cell; the sweep goes on
        log.warning("cell %s failed: %s: %s", cell.key, type(e).__name__, e)
        shutil.rmtree(work / METRICS_DIR, ignore_errors=True)
        record.update(status="failed", error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc(limit=8))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    record["finished_at"] = time.time()
    store.commit(cell.key, work, record)
    return attach_metrics(store, cell.key, cell.task, store.record(cell.key) or record, metrics)


def describe_method(cfg: DictConfig, editor_cls: type) -> dict:
    """The method's part of a cell key: name, parameters but the editor's speed-only ones, and the
    estimator settings the editor uses (another depth model or mask source is another edit;
    metric-only settings are not)."""
    params = OmegaConf.to_container(cfg.method.params, resolve=True)
    speed = getattr(editor_cls, "SPEED_PARAMS", ())
    part = {"name": cfg.method.name, "params": {k: v for k, v in params.items() if k not in speed}}
    estimators = OmegaConf.to_container(cfg.estimators, resolve=True)
    if used := {k: estimators[k] for k in editor_cls.estimators_used if k in estimators}:
        part["estimators"] = used
    return part


def build_method_backbone(cfg: DictConfig, device: torch.device):
    """The backbone of the method's family (None for methods without one), compiled if asked."""
    if not cfg.method.get("family"):
        return None
    bcfg = cfg.backbone
    dtype = bcfg.dtype if bcfg.dtype != "auto" else ("float16" if device.type == "cuda" else "float32")
    backbone = build_backbone(kind=bcfg.kind, family=cfg.method.family, device=device, dtype=dtype,
                              seed=int(bcfg.seed), paths=dict(bcfg.get("paths") or {}),
                              controlnet=cfg.method.params.get("control", "canny"))
    if bcfg.get("compile"):
        from vedit.backbones.compile import compile_blocks, use_compile_cache

        if bcfg.get("compile_cache"):
            use_compile_cache(bcfg.compile_cache)
        for model in (backbone.unet, backbone.controlnet):
            if model is not None:
                compile_blocks(model)
    return backbone


def _warmup_wanted(setting: Any, device: torch.device) -> bool:
    if setting not in ("auto", True, False):
        raise SetupError(f"warmup={setting!r}: use auto (on CUDA), true or false")
    return device.type == "cuda" if setting == "auto" else bool(setting)


def warm_up(editor, video, device: torch.device) -> float | None:
    """`editor.warmup` at the video's size and length; its seconds (once per process, like model loading:
    not a cell's cost), None when it failed (the first cell then pays the set-up; its own errors are its
    record's)."""
    size = video.size
    timer = PhaseTimer(device)
    try:
        with timer.phase("warmup"):
            editor.warmup(size, video.num_frames)
        return timer.seconds["warmup"]
    except Exception as e:  # noqa: BLE001 - an optimisation; the cells go on
        log.warning("warm-up at size %s failed (%s: %s); the first cell pays the set-up", size, type(e).__name__, e)
        return None


def open_store(store_dir: str) -> ResultStore:
    """The result store, checked writable (a probe file in its tmp folder) before any work."""
    try:
        store = ResultStore(store_dir)
        probe = store.tmp / f".probe.{uuid.uuid4().hex[:8]}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SetupError(f"store_dir={store_dir} is not writable ({type(e).__name__}: {e.strerror or e}); "
                         "choose a folder you can write to with store_dir=/path/to/results") from None
    store.clean_tmp()
    return store


def check_config(cfg: DictConfig) -> type:
    """The editor class, with every method parameter checked; raises before any model is built."""
    editor_cls = EDITORS.get(cfg.method.name)
    editor_cls.check_params(OmegaConf.to_container(cfg.method.params, resolve=True) or {})
    return editor_cls


def _note_resolution(method: DictConfig, dataset) -> None:
    """Say so when the data transform differs from the resolution the method's released code uses."""
    wanted, transform = method.get("resolution"), getattr(dataset, "transform", None)
    if not wanted or transform is None:
        return
    if transform.crop != wanted.crop or list(transform.size or []) != list(wanted.size):
        log.info("%s's released code runs at crop=%s size=%s; this run uses data.transform.crop=%s size=%s",
                 method.name, wanted.crop, list(wanted.size), transform.crop, transform.size)


def run(cfg: DictConfig) -> RunSummary:
    return_large_frees_to_os()  # long videos: bounded host memory (vedit/memory.py)
    method = cfg.method
    editor_cls = check_config(cfg)
    device = resolve_device(cfg.device)
    warmup = _warmup_wanted(cfg.get("warmup", "auto"), device)
    store = open_store(cfg.store_dir)
    dataset = instantiate(cfg.data)
    _note_resolution(method, dataset)
    from vedit.estimators import KeyedDiskCache

    estimators = build_estimators(cfg, device)
    metrics = build_metrics(cfg, estimators, device)  # before the backbone: a missing metric model stops at once
    load_start = time.perf_counter()
    backbone = build_method_backbone(cfg, device)
    load_seconds = time.perf_counter() - load_start
    # methods without a backbone (identity) are keyed and labelled with the configured kind
    backbone_part = {k: v for k, v in backbone.describe().items() if k != "device"} if backbone else \
        {"kind": cfg.backbone.kind}
    method_part = describe_method(cfg, editor_cls)
    params = OmegaConf.to_container(cfg.method.params, resolve=True)
    if "latent_cache" in inspect.signature(editor_cls).parameters and cfg.cache_dir:
        params["latent_cache"] = KeyedDiskCache(Path(cfg.cache_dir) / "inversion")
    editor = editor_cls(backbone, estimators, **params)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    common = {
        "method": method.name, "backbone_kind": backbone_part["kind"], "config": resolved,
        "method_speed_params": sorted(getattr(editor_cls, "SPEED_PARAMS", ())),
        "git_commit": git_commit(), "versions": package_versions(), "device": device_name(device),
        "backbone_load_seconds": load_seconds,  # once per process, not part of the cell's cost
    }
    trackers = [instantiate(t) for t in (cfg.tracker.get("trackers") or [])]
    summary = RunSummary()
    videos = dataset.video_ids()
    if cfg.limit_videos:
        videos = videos[: int(cfg.limit_videos)]
    progress = SweepProgress(len(videos))

    def finished(key: str) -> dict | None:
        status = store.status(key)
        if status == "ok" and not cfg.force or status == "failed" and not (cfg.retry_failed or cfg.force):
            return store.record(key)
        return None

    def process(cell: Cell) -> bool:
        """Skip or compute the cell; False when another process holds its claim (come back later)."""
        rec = finished(cell.key)
        if rec is None:
            if not store.claim(cell.key):
                return False
            try:
                rec = finished(cell.key)  # finished by another process since the first look
                if rec is None:
                    if warmup and cell.task is not None and "warmup_seconds" not in common:
                        common["warmup_seconds"] = warm_up(editor, cell.task.video, device)
                    start = time.perf_counter()
                    common["cell_index_in_process"] = summary.computed  # 0: the process's first (after warmup)
                    rec = run_cell(cell, editor, metrics, store, common, bool(cfg.save_frames))
                    summary.computed += 1
                    summary.records.append(rec)
                    progress.update(rec.get("status"), time.perf_counter() - start)
                    for tracker in trackers:
                        tracker.log_cell(rec, store.cell_dir(cell.key))
                    return True
            finally:
                store.release(cell.key)
        rec = attach_metrics(store, cell.key, cell.task, rec, metrics)  # metrics missing for this config
        summary.skipped += 1
        summary.records.append(rec)
        progress.update(rec.get("status"))
        return True

    deferred: list[Cell] = []
    for vid, cells in iter_cells(cfg, _Limited(dataset, videos), method_part, backbone_part):
        progress.add_video(len(cells), vid)
        deferred += [cell for cell in cells if not process(cell)]
    for cell in deferred:  # cells another sweep was computing: take its result, or take over if it died
        while not process(cell):
            time.sleep(0.5)
    progress.close()
    for tracker in trackers:
        tracker.finish(summary.records)
    _write_job_index(summary)
    return summary


class _Limited:
    """A dataset view restricted to some video ids."""

    def __init__(self, dataset, ids: list[str]) -> None:
        self._dataset, self._ids = dataset, ids

    def video_ids(self) -> list[str]:
        return self._ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)


def _write_job_index(summary: RunSummary) -> None:
    """List this job's cells in Hydra's output dir, so the end-of-sweep table can find them."""
    try:
        out = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not running under Hydra
        return
    keys = "\n".join(r["key"] for r in summary.records if r)
    (out / "cells.txt").write_text(keys + "\n")


def failure_groups(records: list[dict]) -> list[tuple[int, str]]:
    """(count, example error) per kind of failure, most frequent first. Errors that differ only in
    quoted names and numbers (the video id, a frame count) are one kind."""
    examples: dict[str, str] = {}
    counts: Counter = Counter()
    for rec in records:
        if rec and rec.get("status") != "ok":
            error = str(rec.get("error") or "unknown error")
            kind = re.sub(r"\d+(\.\d+)?", "#", re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", error))
            counts[kind] += 1
            examples.setdefault(kind, error)
    return [(n, examples[kind]) for kind, n in counts.most_common()]


def failure_report(records: list[dict]) -> str:
    groups = failure_groups(records)
    if not groups:
        return ""
    lines = [f"{sum(n for n, _ in groups)} of {len(records)} cells failed:"]
    lines += [f"  {n} x {error}" for n, error in groups]
    return "\n".join(lines)


SETUP_ERRORS = (BackboneUnavailable, UnknownNameError, ParamError, SetupError, VideoError)


def _setup_error(e: BaseException) -> BaseException | None:
    """The setup error behind `e` (Hydra wraps errors raised while instantiating data), or None."""
    while e is not None:
        if isinstance(e, SETUP_ERRORS):
            return e
        e = e.__cause__ if isinstance(e, InstantiationException) else None
    return None


def _multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under Hydra
        return False


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Exits 1 when any cell failed (allow_failures=true: 0); in a multirun sweep the end-of-sweep
    callback decides, so that one job's failures never stop the other jobs."""
    from vedit.leaderboard import format_table

    try:
        summary = run(cfg)
    except Exception as e:  # a setup problem, not a bug: the message says what to do
        if (cause := _setup_error(e)) is None:
            raise
        raise SystemExit(f"error: {cause}") from None
    print(f"\n{cfg.method.name}: {summary.computed} computed, {summary.skipped} already done, "
          f"{summary.failed} failed; results in {cfg.store_dir}")
    print(format_table(summary.records))
    if summary.failed:
        print(failure_report(summary.records))
        if not cfg.get("allow_failures") and not _multirun():
            raise SystemExit(f"error: {summary.failed} cell(s) failed (see above); "
                             "allow_failures=true makes failed cells exit 0")


if __name__ == "__main__":
    exit_on_bad_overrides()
    main()
