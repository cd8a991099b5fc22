"""Metric values per metric configuration, apart from the edit.

A metric entry is one metric's values for one cell under one configuration (`Metric.config`: its
name, parameters, models and the flow estimator that ran). Entries live in the cell's
`metrics/<metric key>.json`; `attach_metrics` reuses the entries of the configured metrics and
computes the missing ones from the stored edited frames, never re-editing.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from vedit.metrics.base import Metric, to_float
from vedit.store import ResultStore, metric_key, read_record, split_tiny, write_metric_entry, write_metric_set
from vedit.task import EditTask

log = logging.getLogger("vedit.metrics")


def metric_config(metric: Metric, task: EditTask) -> dict:
    """`metric.config(task)`; for a plain callable with `name` (not a Metric subclass), its name and class."""
    if isinstance(metric, Metric):
        return metric.config(task)
    return {"metric": metric.name, "class": f"{type(metric).__module__}.{type(metric).__qualname__}"}


def applicable(metrics: list, task: EditTask) -> tuple[list, dict[str, str]]:
    """The metrics that apply to the task, and why the others do not (a prompt they need is missing:
    a video run without prompts still gets its temporal metrics)."""
    out, skipped = [], {}
    for metric in metrics:
        missing = [p for p in getattr(metric, "prompts_needed", ()) if not (getattr(task, p) or "").strip()]
        if missing:
            skipped[metric.name] = f"no {' and no '.join(missing)} for video {task.video.id!r}"
        else:
            out.append(metric)
    return out, skipped


def metric_entry(metric: Metric, frames: torch.Tensor, task: EditTask, frames_source: str = "edit") -> dict:
    """Compute one metric on uint8 frames -> its entry (values, direction, convention, config and key,
    models). A plain callable that is not a Metric subclass gets float frames in [0, 1]."""
    config = metric_config(metric, task)
    if isinstance(metric, Metric):
        (values, series), models = metric.evaluate(frames, task), metric.models(task)
    else:
        values, series, models = metric(to_float(frames), task), {}, {}
    return {"metric": metric.name, "metric_key": metric_key(config), "config": config,
            "models": models, "values": values, "higher_is_better": metric.higher_is_better,
            "convention": metric.convention, "frames": frames_source, "computed_at": time.time(),
            **({"per_frame": series} if series else {})}


def with_metrics(record: dict, entries: list[dict]) -> dict:
    """The record with the entries' values (`metrics`), their conventions (`metric_info`) and the
    models behind them (`metric_models`, `metric_tiny`)."""
    out = {**record, "metrics": {}, "metric_info": {}, "metric_models": {}, "metric_tiny": False}
    for e in entries:
        out["metrics"].update(e["values"])
        out["metric_info"][e["metric"]] = {"higher_is_better": e["higher_is_better"], "convention": e["convention"],
                                           "config": e["config"], "metric_key": e["metric_key"]}
        named, tiny = split_tiny(e.get("models") or {})
        out["metric_models"].update(named)
        out["metric_tiny"] |= tiny
    return out


def attach_metrics(store: ResultStore, key: str, task: EditTask | None, record: dict, metrics: list[Metric],
                   frames: Callable[[], torch.Tensor] | None = None) -> dict:
    """The record with the configured metrics' values: stored entries where present, the missing ones
    computed from the cell's edited frames (`frames()`, default the store's lossless copy) and stored.

    A metric that fails is reported in `metric_errors` (the edit stays finished).
    """
    if record is None or record.get("status") != "ok" or task is None:
        return record
    cell = store.cell_dir(key)
    entries, errors, loaded = [], {}, None
    metrics, skipped = applicable(metrics, task)
    for metric in metrics:
        try:
            mkey = metric_key(metric_config(metric, task))
            entry = read_record(cell / "metrics" / f"{mkey}.json")
            if entry is None:
                if loaded is None:
                    loaded = frames() if frames is not None else store.edited_frames(key)
                entry = metric_entry(metric, loaded, task, frames_source="stored")
                write_metric_entry(cell, entry)
            entries.append(entry)
        except Exception as e:  # noqa: BLE001 - a metric failure must not lose the finished edit
            log.warning("cell %s: metric %s failed: %s: %s", key, metric.name, type(e).__name__, e)
            errors[metric.name] = f"{type(e).__name__}: {e}"
    out = with_metrics(record, entries)
    if entries:
        write_metric_set(cell, [e["metric_key"] for e in entries], out["metric_models"])
    if errors:
        out["metric_errors"] = errors
    if skipped:
        out["metrics_skipped"] = skipped
    return out
