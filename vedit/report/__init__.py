"""A static report site from stored results: opens from disk, no server.

    python -m vedit.report outputs/results [more stores...] --out outputs/report

- `index.html`: the leaderboard (rows as `vedit.leaderboard`: benchmark, backbone kind, method with its
  hyperparameters, metric models; tiny/random/external rows labelled), one column per metric
  convention (rescaled copies such as `clip_text_x100` behind a toggle, a preset selector for the
  columns each benchmark reports), cost columns, sortable columns, filters by benchmark, prompt
  category, method and backbone kind; the plots; the video pages.
- `videos/<video>.html`: a page per video: the source and every method's edit in a grid, played in
  sync (one play/pause/seek for all), the prompts, each cell's per-frame curves (CLIP text score per
  frame, warp error per pair, where the metric entries keep them) and a link to its record.json.
- `plots/*.svg`: quality against cost (CLIP text score against s/frame, the Pareto front marked) per
  benchmark and metric models, and per-category bars where prompts have categories (TGVE).

Videos are linked by relative paths (the site stays next to the store), not copied; the source is the
left half of each cell's `side_by_side.mp4` (the source as the method saw it). Files are found by the
store's layout (`edited.mp4`, `side_by_side.mp4` beside each record.json), never by paths a record
names. A video the browser cannot decode (not H.264/VP9/AV1 in yuv420p) gets a playable H.264 copy
under `media/`.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from vedit.leaderboard import (CATEGORY_ORDER, COST_COLUMNS, GROUP_KEYS, METHOD_CONF, EmptyStoreError, _benchmarks,
                               _direction, _mean_ci_text, _models_label, group_table, load_records, method_label,
                               records_frame, row_label)
from vedit.report import plots

PACKAGE = Path(__file__).resolve().parent
PRESETS_DIR = METHOD_CONF.parent / "metrics"
CURVES = {"clip_text": "CLIP text / frame", "warp_error": "warp error / pair"}  # per-frame series drawn
BROWSER_CODECS = {"h264", "vp9", "av1"}


def presets() -> dict[str, list[str]]:
    """Metric presets of conf/metrics/ that name a subset of the metrics ({} when conf/ is absent)."""
    found = {}
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        names = (yaml.safe_load(path.read_text()) or {}).get("names")
        if names:
            found[path.stem] = [str(n) for n in names]
    every = max((set(n) for n in found.values()), key=len, default=set())
    return {k: v for k, v in found.items() if set(v) != every}


def slug(text: str) -> str:
    """A file name from untrusted text: safe characters only, plus a hash so that distinct texts never meet."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:60] or "video"
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def href(target: Path, page_dir: Path) -> str:
    """A relative URL from a page's folder to a file."""
    return urllib.parse.quote(Path(os.path.relpath(target, page_dir)).as_posix())


def _number(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


@dataclass
class Column:
    key: str
    label: str
    kind: str  # metric | copy | cost | count
    metric: str = ""
    title: str = ""


@dataclass
class Site:
    out: Path
    records: list[dict]
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    directions: dict[str, bool] = field(default_factory=dict)


def build(stores: list[str | Path], out: str | Path) -> Path:
    """Write the site for these stores into `out`; the path of its index.html."""
    records = load_records(stores, strict=True)
    out = Path(out)
    for sub in ("videos", "plots", "media"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name in ("site.css", "site.js"):
        shutil.copyfile(PACKAGE / "static" / name, out / name)
    frame, directions = records_frame(records)
    site = Site(out.resolve(), records, frame, directions)
    env = _templates()
    pages = video_pages(site, env)
    rows, columns, filters = leaderboard_rows(site)
    figures = quality_cost_plots(site) + category_plots(site)
    conventions = {e["metric"]: e.get("convention", "") for r in records for e in r.get("metric_entries") or []}
    (out / "index.html").write_text(env.get_template("index.html").render(
        root="", rows=rows, columns=columns, filters=filters, presets=presets(), pages=pages, figures=figures,
        conventions=conventions, stores=[str(s) for s in stores], failed=sum(r.get("status") != "ok" for r in records),
        cells=len(records)))
    return out / "index.html"


def _templates():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(PACKAGE / "templates"), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def leaderboard_rows(site: Site) -> tuple[list[dict], list[Column], dict[str, list[str]]]:
    """The leaderboard's rows (overall, and per prompt category where records have one), its columns
    and the values each filter offers."""
    df = site.frame
    if df.empty:
        return [], [], {}
    keys = GROUP_KEYS + ["method_name"]
    tables = [group_table(df, site.directions, keys).assign(category="")]
    if "category" in df and df["category"].notna().any():
        tables.append(group_table(df[df["category"].notna()], site.directions, keys + ["category"])
                      .reset_index("category"))
    metric_cols = tables[0].attrs["directions"]
    columns = [Column("cells", "cells", "count", title="finished cells"),
               Column("failed", "failed", "count", title="failed cells")]
    for c, higher in metric_cols.items():
        name = next(n for n in sorted(site.directions, key=len, reverse=True) if c == n or c.startswith(n + "_"))
        columns.append(Column(c, f"{c} {'↑' if higher else '↓'}", "metric" if c == name else "copy", name,
                              "higher is better" if higher else "lower is better"))
    columns += [Column(k, f"{label} ↓", "cost", title=k) for k, label in COST_COLUMNS.items()]
    rows = []
    for table in tables:
        for index, t in table.iterrows():
            ident = dict(zip(keys, index))
            cells = {"cells": (t["cells"], str(t["cells"])), "failed": (t["failed"], str(t["failed"]))}
            for c in metric_cols:
                cells[c] = (t[c], _mean_ci_text(t[c], t[f"{c} ±"]))
            for c in COST_COLUMNS:
                cells[c] = (t[c], "–" if math.isnan(t[c]) else f"{t[c]:.3g}")
            rows.append({"label": row_label(ident["method"], ident["backbone"], t["metric_tiny"],
                                            t["whole_frame_masks"], t["cells"]),
                         "flagged": ident["backbone"] != "paper" or bool(t["metric_tiny"]),
                         "benchmark": ident["benchmark"], "backbone": ident["backbone"],
                         "method": ident["method_name"], "models": ident["metric_models"],
                         "category": t["category"],
                         "cells": {k: ("" if math.isnan(_number(v)) else f"{_number(v):.6g}", text)
                                   for k, (v, text) in cells.items()}})
    found = {c for c in df.get("category", pd.Series(dtype=object)).dropna()}
    filters = {"benchmark": sorted({r["benchmark"] for r in rows}), "method": sorted({r["method"] for r in rows}),
               "backbone": sorted({r["backbone"] for r in rows}),
               "category": [c for c in CATEGORY_ORDER if c in found] + sorted(found - set(CATEGORY_ORDER))}
    return rows, columns, filters


def quality_cost_plots(site: Site) -> list[dict]:
    """Per benchmark and metric models: CLIP text score against s/frame, the Pareto front marked."""
    if site.frame.empty or "clip_text" not in site.frame:
        return []
    table, figures = group_table(site.frame, site.directions, GROUP_KEYS).reset_index(), []
    for (benchmark, models), g in table.groupby(["benchmark", "metric_models"], sort=True):
        g = g[g["clip_text"].notna() & g["seconds_per_frame"].notna()]
        if g.empty:
            continue
        name = f"quality_cost-{slug(f'{benchmark} {models}')}.svg"
        labels = [row_label(m, b) for m, b in zip(g["method"], g["backbone"])]
        front = plots.quality_cost(site.out / "plots" / name, labels, list(g["seconds_per_frame"]),
                                   list(g["clip_text"]), "seconds per frame (log where wide)",
                                   "CLIP text score (raw cosine) ↑", f"{benchmark} — {models}")
        figures.append({"src": f"plots/{name}", "title": f"Quality against cost: {benchmark}",
                        "caption": f"metric models {models}; Pareto front: {', '.join(labels[i] for i in front)}"})
    return figures


def category_plots(site: Site) -> list[dict]:
    """Per benchmark with prompt categories: bars per category and method of the TGVE scores (x100)."""
    df = site.frame
    if df.empty or "category" not in df or not df["category"].notna().any():
        return []
    figures = []
    for metric in ("clip_text_x100", "clip_image_allpairs_x100"):
        if metric not in df:
            continue
        sub = df[df["category"].notna()]
        table = group_table(sub, site.directions, GROUP_KEYS + ["category"]).reset_index()
        for (benchmark, models), g in table.groupby(["benchmark", "metric_models"], sort=True):
            found = set(g["category"])
            categories = [c for c in CATEGORY_ORDER if c in found] + sorted(found - set(CATEGORY_ORDER))
            methods = sorted({(m, b) for m, b in zip(g["method"], g["backbone"])})
            means, halves = [], []
            for m, b in methods:
                rows = g[(g["method"] == m) & (g["backbone"] == b)].set_index("category")
                means.append([float(rows[metric].get(c, math.nan)) for c in categories])
                halves.append([float(rows[f"{metric} ±"].get(c, math.nan)) for c in categories])
            if all(math.isnan(v) for m in means for v in m):  # the metric is another benchmark's
                continue
            name = f"categories-{metric}-{slug(f'{benchmark} {models}')}.svg"
            arrow = "↑" if _direction(metric, site.directions) else "↓"
            plots.category_bars(site.out / "plots" / name, categories, [row_label(m, b) for m, b in methods],
                                means, halves, f"{metric} {arrow}", f"{benchmark} — {models}")
            figures.append({"src": f"plots/{name}", "title": f"{metric} by prompt category: {benchmark}",
                            "caption": f"mean and 95% interval over cells; metric models {models}"})
    return figures


def per_frame(record: dict) -> dict[str, tuple[list, str]]:
    """The newest stored per-frame series of each curve metric, with its models' label."""
    out = {}
    for entry in record.get("metric_entries") or []:  # oldest first: newer ones win
        for name in CURVES:
            series = (entry.get("per_frame") or {}).get(name)
            if entry.get("metric") == name and isinstance(series, list) and series:
                out[name] = ([v if isinstance(v, (int, float)) else None for v in series],
                             _models_label(entry.get("models") or {}))
    return out


def _video_file(site: Site, cell_dir: Path, name: str) -> Path | None:
    """The cell's video, or a browser-playable copy of it under media/ (None when absent or unreadable)."""
    path = cell_dir / name
    if not path.is_file():
        return None
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            ok = stream.codec_context.name in BROWSER_CODECS and stream.codec_context.pix_fmt == "yuv420p"
    except Exception:  # noqa: BLE001 - PyAV raises many types for broken files
        return None
    if ok:
        return path
    from vedit.video import read_video, write_video

    copy = site.out / "media" / f"{slug(str(cell_dir))}-{name}"
    video = read_video(path)
    write_video(copy, video.pixels, fps=video.fps or 10.0)
    return copy


def _cell(site: Site, record: dict, page_dir: Path, plot_dir: Path) -> dict:
    cell_dir = Path(record["_dir"])
    sets = record.get("metric_sets") or []
    values = {k: v for s in sets for k, v in s["values"].items()} or record.get("metrics") or {}
    shown = [(k, values[k]) for k in ("clip_text", "warp_error", "clip_image", "frame_acc") if k in values]
    cost = (record.get("cost") or {}).get("seconds_per_frame")
    cell = {"status": record.get("status"), "error": str(record.get("error", ""))[:400],
            "record": href(cell_dir / "record.json", page_dir),
            "values": [f"{k} {_number(v):.4g}" for k, v in shown] + ([f"{_number(cost):.3g} s/frame"] if cost else []),
            "edited": None, "curves": None}
    edited = _video_file(site, cell_dir, "edited.mp4") if record.get("status") == "ok" else None
    if edited is not None:
        cell["edited"] = href(edited, page_dir)
    series = per_frame(record)
    if series:
        name = f"{slug(cell_dir.name)}.svg"
        clip, warp = series.get("clip_text"), series.get("warp_error")
        extent = plots.frame_curves(plot_dir / name, clip[0] if clip else None, warp[0] if warp else None,
                                    CURVES["clip_text"], CURVES["warp_error"])
        cell["curves"] = {"src": href(plot_dir / name, page_dir), **extent,
                          "models": "; ".join(sorted({s[1] for s in series.values()}))}
    return cell


@dataclass
class GridRow:
    source_prompt: str
    target_prompt: str
    seed: str
    category: str
    cells: dict[str, dict] = field(default_factory=dict)  # column (method [backbone]) -> record


def grid(records: list[dict]) -> dict[tuple[str, str], tuple[list[str], list[GridRow]]]:
    """Per (benchmark, video): the method columns and a row per (prompts, seed) holding each column's
    record; the report's video pages and the wandb sweep table."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record, benchmark in zip(records, _benchmarks(records)):
        groups.setdefault((benchmark, str(record.get("video"))), []).append(record)
    out = {}
    for key, members in sorted(groups.items()):
        rows: dict[tuple, GridRow] = {}
        for r in sorted(members, key=lambda r: (str(r.get("target_prompt")), str(r.get("seed")))):
            prompts = (str(r.get("source_prompt")), str(r.get("target_prompt")), str(r.get("seed")))
            row = rows.setdefault(prompts, GridRow(*prompts, str(r.get("category", r.get("prompt_category")) or "")))
            row.cells.setdefault(_column(r), r)
        out[key] = (sorted({_column(r) for r in members}), list(rows.values()))
    return out


def source_video(records: list[dict]) -> Path | None:
    """The first finished cell's side_by_side.mp4 (its left half is the source as the method saw it)."""
    return next((p for r in records if r.get("status") == "ok"
                 and (p := Path(r["_dir"]) / "side_by_side.mp4").is_file()), None)


def video_pages(site: Site, env) -> list[dict]:
    """A page per (benchmark, video): a row per (prompts, seed), a column per method; the source first."""
    pages = []
    page_dir, plot_dir = site.out / "videos", site.out / "videos" / "curves"
    plot_dir.mkdir(parents=True, exist_ok=True)
    for (benchmark, video), (columns, rows) in grid(site.records).items():
        name = f"{slug(f'{benchmark} {video}')}.html"
        records = [r for row in rows for r in row.cells.values()]
        found = source_video(records)
        source = _video_file(site, found.parent, found.name) if found else None
        cells = [{**vars(row), "cells": {c: _cell(site, r, page_dir, plot_dir) for c, r in row.cells.items()}}
                 for row in rows]
        (page_dir / name).write_text(env.get_template("video.html").render(
            root="../", benchmark=benchmark, video=video, columns=columns, rows=cells,
            source=href(source, page_dir) if source else None))
        pages.append({"href": f"videos/{name}", "benchmark": benchmark, "video": video, "rows": len(rows),
                      "methods": len(columns), "failed": sum(r.get("status") != "ok" for r in records)})
    return pages


def _column(record: dict) -> str:
    params = ((record.get("config") or {}).get("method") or {}).get("params")
    return row_label(method_label(record.get("method"), params, record.get("method_speed_params") or ()),
                     str(record.get("backbone_kind", "?")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vedit.report", description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", help="result stores or folders holding record.json files")
    parser.add_argument("--out", default="outputs/report", help="folder for the site (default outputs/report)")
    args = parser.parse_args(argv)
    try:
        index = build(args.stores, args.out)
    except EmptyStoreError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {index} (open it in a browser; videos are linked from the store, keep the two together)")


