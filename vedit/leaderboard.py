"""Tables from stored results: grouped means with 95% intervals, metric arrows, cost columns.

    python -m vedit.leaderboard outputs/results [more stores...] --out outputs/leaderboard

Rows are grouped by backbone kind and method; `tiny` and `random` rows are labelled and never
pooled with `paper` rows. Intervals are Student-t 95% over the cells (videos x prompts x seeds).
Paired comparisons match two methods' cells on (backbone kind, dataset, video, source prompt,
target prompt, seed) and give the mean difference per metric with its 95% interval.
`--out` also writes `index.html`: the tables plus every cell's side-by-side video (relative links).
"""

from __future__ import annotations

import argparse
import html
import itertools
import math
import os
from pathlib import Path

import pandas as pd

from vedit.store import read_record

# two-sided 95% Student t quantiles by degrees of freedom (1..30); 1.96 beyond
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]
COST_COLUMNS = {"seconds_per_frame": "s/frame", "peak_gpu_memory_gb": "peak GB"}


def t95(n: int) -> float:
    return _T95[n - 2] if 2 <= n <= 31 else 1.96


def load_records(paths: list[str | Path]) -> list[dict]:
    """All records under the given stores or folders (any depth), deduplicated by cell key."""
    seen: dict[str, dict] = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(root.rglob("record.json"))
        for f in files:
            rec = read_record(f)
            if rec is not None:
                seen.setdefault(rec.get("key", str(f)), {**rec, "_dir": str(f.parent)})
    return list(seen.values())


def records_frame(records: list[dict]) -> tuple[pd.DataFrame, dict[str, bool]]:
    """One row per record (method, backbone, video, prompt, seed, status, metrics, cost) and each
    metric's direction (True: higher is better)."""
    rows, directions = [], {}
    for r in records:
        row = {"method": r.get("method"), "backbone": r.get("backbone_kind", "?"), "video": r.get("video"),
               "dataset": (r.get("data") or {}).get("name"), "source_prompt": r.get("source_prompt"),
               "target_prompt": r.get("target_prompt"), "seed": r.get("seed"), "status": r.get("status")}
        row.update(r.get("metrics") or {})
        for k in COST_COLUMNS:
            row[k] = (r.get("cost") or {}).get(k)
        for name, info in (r.get("metric_info") or {}).items():
            directions[name] = bool(info.get("higher_is_better"))
        rows.append(row)
    return pd.DataFrame(rows), directions


def _direction(column: str, directions: dict[str, bool]) -> bool | None:
    """Whether higher is better for a metric column (columns like clip_text_x100 follow their metric)."""
    for name in sorted(directions, key=len, reverse=True):
        if column == name or column.startswith(name + "_"):
            return directions[name]
    return None


def leaderboard(records: list[dict]) -> pd.DataFrame:
    """One row per (backbone kind, method): n cells, failures, mean and 95% half-width per metric, cost."""
    df, directions = records_frame(records)
    if df.empty:
        return pd.DataFrame()
    metric_cols = [c for c in df.columns if _direction(c, directions) is not None]
    out = []
    for (backbone, method), g in df.groupby(["backbone", "method"], sort=True):
        ok = g[g["status"] == "ok"]
        row = {"backbone": backbone, "method": method, "cells": len(ok), "failed": int((g["status"] != "ok").sum())}
        for c in metric_cols:
            vals = pd.to_numeric(ok[c], errors="coerce").dropna()
            row[c] = vals.mean() if len(vals) else math.nan
            row[f"{c} ±"] = t95(len(vals)) * vals.std(ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else math.nan
        for c in COST_COLUMNS:
            vals = pd.to_numeric(ok[c], errors="coerce").dropna()
            row[c] = (vals.max() if c == "peak_gpu_memory_gb" else vals.mean()) if len(vals) else math.nan
        out.append(row)
    table = pd.DataFrame(out).set_index(["backbone", "method"])
    table.attrs["directions"] = {c: _direction(c, directions) for c in metric_cols}
    return table


PAIR_KEYS = ["backbone", "dataset", "video", "source_prompt", "target_prompt", "seed"]


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, 95% half-width (Student t; NaN below 2 values) and count of the non-missing values."""
    vals = pd.to_numeric(values, errors="coerce").dropna()
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    half = t95(n) * vals.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    return float(vals.mean()), float(half), n


def paired(records: list[dict]) -> pd.DataFrame:
    """Method A minus method B on the cells both finished (same backbone kind, data, video, prompts, seed)."""
    df, directions = records_frame([r for r in records if r])
    if df.empty:
        return pd.DataFrame()
    df = df[df["status"] == "ok"].copy()
    metrics = [c for c in df.columns if _direction(c, directions) is not None]
    df[PAIR_KEYS] = df[PAIR_KEYS].astype(str)
    rows = []
    for backbone, g in df.groupby("backbone", sort=True):
        for a, b in itertools.combinations(sorted(g["method"].unique()), 2):
            both = g[g["method"] == a].merge(g[g["method"] == b], on=PAIR_KEYS, suffixes=("_a", "_b"))
            for m in metrics:
                mean, half, n = mean_ci(pd.to_numeric(both[f"{m}_a"], errors="coerce")
                                        - pd.to_numeric(both[f"{m}_b"], errors="coerce"))
                if n:
                    rows.append({"backbone": backbone, "a": a, "b": b, "metric": m, "pairs": n,
                                 "mean_diff": mean, "ci95": half, "higher_is_better": _direction(m, directions)})
    return pd.DataFrame(rows)


def format_paired(records: list[dict], fmt: str = "markdown") -> str:
    table = paired(records)
    if table.empty:
        return "(no paired cells)"
    table = table.assign(**{"a - b": [f"{m:+.4g}" + ("" if math.isnan(e) else f" ± {e:.2g}")
                                      for m, e in zip(table["mean_diff"], table["ci95"])]})
    table = table[["backbone", "a", "b", "metric", "pairs", "a - b"]]
    return table.to_markdown(index=False) if fmt == "markdown" else table.to_csv(index=False)


def html_page(records: list[dict], out_dir: Path) -> str:
    """Tables and every cell's side-by-side video, linked relative to `out_dir`."""
    records = [r for r in records if r]
    parts = ["<!doctype html><meta charset='utf-8'><title>vedit leaderboard</title>",
             "<style>body{font-family:sans-serif} td,th{padding:2px 8px} video{max-width:420px}</style>",
             "<h1>Leaderboard</h1>", format_table(records, "html"),
             "<p>tiny / random rows are marked [tiny] / [random]: their values say nothing about quality.</p>",
             "<h2>Paired differences (a - b, 95% interval)</h2>",
             paired(records).to_html(index=False) if records else "", "<h2>Cells (source | edited)</h2>", "<table>"]
    key = lambda r: (str(r.get("backbone_kind")), str(r.get("video")), str(r.get("target_prompt")),  # noqa: E731
                     str(r.get("seed")), str(r.get("method")))
    for r in sorted(records, key=key):
        video = Path(r.get("_dir", "")) / (r.get("outputs") or {}).get("side_by_side", "side_by_side.mp4")
        cell = (f"<video src='{html.escape(os.path.relpath(video, out_dir))}' controls loop muted></video>"
                if r.get("status") == "ok" and video.exists() else html.escape(str(r.get("error", "no video"))))
        parts.append(f"<tr><td>{html.escape(str(r.get('method')))} [{html.escape(str(r.get('backbone_kind')))}]"
                     f"</td><td>{html.escape(str(r.get('video')))}</td><td>{html.escape(str(r.get('target_prompt')))}"
                     f"</td><td>seed {r.get('seed')}</td><td>{cell}</td></tr>")
    parts.append("</table>")
    return "\n".join(parts)


def pretty(table: pd.DataFrame) -> pd.DataFrame:
    """Human table: 'mean ± ci' cells, arrows on metric names, backbone labels on non-paper rows."""
    if table.empty:
        return table
    directions = table.attrs.get("directions", {})
    out = pd.DataFrame(index=[m if b == "paper" else f"{m} [{b}]" for b, m in table.index])
    out.index.name = "method"
    out["cells"] = table["cells"].values
    out["failed"] = table["failed"].values
    for c, higher in directions.items():
        mean, ci = table[c].values, table[f"{c} ±"].values
        out[f"{c} {'↑' if higher else '↓'}"] = [
            "–" if math.isnan(m) else (f"{m:.4g}" if math.isnan(e) else f"{m:.4g} ± {e:.2g}") for m, e in zip(mean, ci)
        ]
    for c, label in COST_COLUMNS.items():
        out[f"{label} ↓"] = ["–" if math.isnan(v) else f"{v:.3g}" for v in table[c].values]
    return out


def format_table(records: list[dict], fmt: str = "markdown") -> str:
    table = pretty(leaderboard([r for r in records if r]))
    if table.empty:
        return "(no results)"
    if fmt == "markdown":
        return table.to_markdown()
    if fmt == "csv":
        return table.to_csv()
    if fmt == "html":
        return table.to_html()
    if fmt == "latex":
        return table.to_latex()
    raise ValueError(f"format={fmt!r}: choose markdown, csv, html or latex")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vedit.leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", help="result stores or folders holding record.json files")
    parser.add_argument("--out", default=None, help="folder for leaderboard.{md,csv,html,tex}")
    parser.add_argument("--formats", default="markdown,csv,html,latex")
    parser.add_argument("--categories", default=None, metavar="METRIC[,METRIC]",
                        help="also a table per metric with a column per prompt category (TGVE), categories_<metric>.*")
    args = parser.parse_args(argv)
    records = load_records(args.stores)
    print(format_table(records))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        suffix = {"markdown": "md", "csv": "csv", "html": "html", "latex": "tex"}
        for fmt in args.formats.split(","):
            (out / f"leaderboard.{suffix[fmt]}").write_text(format_table(records, fmt))
        (out / "paired.md").write_text(format_paired(records))
        (out / "paired.csv").write_text(format_paired(records, "csv"))
        (out / "index.html").write_text(html_page(records, out.resolve()))
        print(f"\npaired comparisons:\n{format_paired(records)}\nwritten to {out} (open {out / 'index.html'})")
    for metric in (args.categories.split(",") if args.categories else []):
        table = category_table(records, metric)
        print(f"\n{metric} by prompt category:\n{table.to_markdown() if not table.empty else '(no categories)'}")
        if args.out and not table.empty:
            for fmt, suffix in {"markdown": "md", "csv": "csv", "html": "html", "latex": "tex"}.items():
                (Path(args.out) / f"categories_{metric}.{suffix}").write_text(getattr(table, f"to_{fmt}")())


CATEGORY_ORDER = ("style", "object", "background", "multiple")  # LOVEU-TGVE-2023's; others follow by name


def category_table(records: list[dict], metric: str) -> pd.DataFrame:
    """Rows (method [backbone]); a column per prompt category and `overall`: mean ± 95% interval of `metric`
    over the finished cells with a category (overall: all of them), plus the cell and failure counts."""
    records = [r for r in records if r and r.get("prompt_category")]
    df, directions = records_frame(records)
    if df.empty or metric not in df:
        return pd.DataFrame()
    df["category"] = [r["prompt_category"] for r in records]
    found = set(df["category"])
    categories = [c for c in CATEGORY_ORDER if c in found] + sorted(found - set(CATEGORY_ORDER))
    higher = _direction(metric, directions)
    arrow = "" if higher is None else (" ↑" if higher else " ↓")
    rows = {}
    for (backbone, method), g in df.groupby(["backbone", "method"], sort=True):
        ok = g[g["status"] == "ok"]
        row = {"cells": len(ok), "failed": int((g["status"] != "ok").sum())}
        for label, values in [*((c, ok.loc[ok["category"] == c, metric]) for c in categories), ("overall", ok[metric])]:
            mean, half, _ = mean_ci(values)
            row[f"{label}{arrow}"] = "–" if math.isnan(mean) else (f"{mean:.4g}" if math.isnan(half)
                                                                    else f"{mean:.4g} ± {half:.2g}")
        rows[method if backbone == "paper" else f"{method} [{backbone}]"] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = metric
    return table


if __name__ == "__main__":
    main()
