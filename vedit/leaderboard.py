"""Tables from stored results: grouped means with 95% intervals, metric arrows, cost columns.

    python -m vedit.leaderboard outputs/results [more stores...] --out outputs/leaderboard

Rows never mix what is not comparable: they are grouped by benchmark (dataset name, plus the
settings that differ between the stored runs of that dataset), backbone kind, method with its
hyperparameters (labelled by the short diff from `conf/method/<name>.yaml`, e.g.
`rerender (key_interval=5)`), and the metric models (CLIP model, flow estimator that ran). Rows from
`tiny`/`random` backbones, from tiny metric models and from runs with whole-frame subject masks
are labelled. Intervals are Student-t 95% over the cells (videos x prompts x seeds). Paired
comparisons match two methods' cells on the same benchmark, backbone kind, metric models, video,
prompts and seed. `--out` also writes `index.html`: the tables plus every cell's side-by-side video.
"""

from __future__ import annotations

import argparse
import functools
import html
import itertools
import math
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

from vedit.store import read_metric_entries, read_metric_sets, read_record, split_tiny

# two-sided 95% Student t quantiles by degrees of freedom (1..30); 1.96 beyond
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]
COST_COLUMNS = {"seconds_per_frame": "s/frame", "peak_gpu_memory_gb": "peak GB"}
RESCALED_SUFFIXES = ("_x100", "_255")  # clip_text_x100 = 100 x clip_text: one convention, shown with --all-columns
FORMATS = {"markdown": "md", "md": "md", "csv": "csv", "html": "html", "latex": "tex", "tex": "tex"}
GROUP_KEYS = ["benchmark", "backbone", "method", "metric_models"]  # a table row; never pooled across
METHOD_CONF = Path(__file__).resolve().parents[1] / "conf" / "method"


def t95(n: int) -> float:
    return _T95[n - 2] if 2 <= n <= 31 else 1.96


class EmptyStoreError(ValueError):
    """No store at the path, or a store without records."""


def load_records(paths: list[str | Path], strict: bool = False) -> list[dict]:
    """All records under the given stores or folders (any depth), deduplicated by cell key, each with
    its stored metric entries (`metric_entries`) and the metric configurations it was scored under
    (`metric_sets`: models and merged values). `strict`: a missing path or no record at all raises
    EmptyStoreError naming the paths."""
    seen: dict[str, dict] = {}
    for root in paths:
        root = Path(root)
        if strict and not root.exists():
            raise EmptyStoreError(f"result store {root} does not exist; give the store_dir of a run "
                                  "(default outputs/results; the demo writes outputs/demo)")
        files = [root] if root.is_file() else sorted(root.rglob("record.json"))
        for f in files:
            rec = read_record(f)
            if rec is not None:
                entries = read_metric_entries(f.parent)
                seen.setdefault(rec.get("key", str(f)), {**rec, "_dir": str(f.parent), "metric_entries": entries,
                                                         "metric_sets": read_metric_sets(f.parent, entries)})
    if strict and not seen:
        raise EmptyStoreError(f"no results (record.json files) under {', '.join(map(str, paths))}; run "
                              "python -m vedit.run ... store_dir=<that folder> first, or check the path")
    return list(seen.values())


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)) if isinstance(v, dict) else {
            f"{prefix}.{k}" if prefix else str(k): v})
    return out


def _short(value: Any) -> str:
    return str(value).replace(" ", "") if isinstance(value, (list, tuple)) else str(value)


@functools.lru_cache(maxsize=None)
def method_defaults(name: str) -> dict[str, Any]:
    """The method's default hyperparameters from conf/method/<name>.yaml, flattened ({} if none)."""
    path = METHOD_CONF / f"{name}.yaml"
    if not path.exists():
        return {}
    return _flatten((yaml.safe_load(path.read_text()) or {}).get("params") or {})


def method_label(name: str, params: dict | None, speed_params: Iterable[str] = ()) -> str:
    """`name (k=v, ...)`: the hyperparameters that differ from the method's defaults, but those that
    change speed and memory only (the editor's SPEED_PARAMS, which records list)."""
    if not params:
        return str(name)
    defaults = method_defaults(str(name))
    params = {k: v for k, v in params.items() if k not in set(speed_params)}
    diff = [f"{k}={_short(v)}" for k, v in sorted(_flatten(params).items()) if k not in defaults or defaults[k] != v]
    return f"{name} ({', '.join(diff)})" if diff else str(name)


def _benchmarks(records: list[dict]) -> list[str]:
    """Dataset name, plus the dataset settings that differ between the records sharing that name."""
    datas = [_flatten(r.get("data") or {}) for r in records]
    by_name: dict[str, list[dict]] = {}
    for d in datas:
        by_name.setdefault(str(d.get("name")), []).append(d)
    varying = {name: sorted({k for d in ds for k in d if len({_short(x.get(k)) for x in ds}) > 1} - {"name"})
               for name, ds in by_name.items()}
    labels = []
    for d in datas:
        keys = varying[str(d.get("name"))]
        labels.append(f"{d.get('name')} ({', '.join(f'{k}={_short(d.get(k))}' for k in keys)})" if keys
                      else str(d.get("name")))
    return labels


def _models_label(models: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(split_tiny(models)[0].items())) or "-"


def _metric_rows(r: dict) -> list[tuple[dict, dict, bool]]:
    """(values, models, tiny) per metric configuration a record was scored under. Configurations with
    the same models merge into one row (different metric names are different columns; the newer
    value of a metric wins), so a cell is never counted twice in a table row."""
    sets = r.get("metric_sets")
    if not sets:  # a record carrying its values (a run's summary, or an old store)
        return [(r.get("metrics") or {}, r.get("metric_models") or {}, bool(r.get("metric_tiny")))]
    groups: dict[str, tuple[dict, dict, bool]] = {}
    for s in sets:  # oldest first
        label = _models_label(s["models"])
        values, _, tiny = groups.get(label, ({}, {}, False))
        groups[label] = ({**values, **s["values"]}, s["models"], tiny or s["tiny"])
    return list(groups.values())


def records_frame(records: list[dict]) -> tuple[pd.DataFrame, dict[str, bool]]:
    """One row per record and metric-model configuration: benchmark, backbone, method (label with its
    hyperparameters), metric_models, flags (metric_tiny, mask_source), video, prompts, seed, status,
    metric values and cost; plus each metric's direction (True: higher is better). Columns a record
    carries at top level (e.g. `category`) are kept, so any of them can be a grouping key."""
    rows, directions = [], {}
    for r, benchmark in zip(records, _benchmarks(records)):
        params = ((r.get("config") or {}).get("method") or {}).get("params")
        base = {"benchmark": benchmark, "backbone": r.get("backbone_kind", "?"),
                "method": method_label(r.get("method"), params, r.get("method_speed_params") or ()),
                "method_name": r.get("method"),
                "video": r.get("video"), "dataset": (r.get("data") or {}).get("name"),
                "source_prompt": r.get("source_prompt"), "target_prompt": r.get("target_prompt"),
                "seed": r.get("seed"), "status": r.get("status"),
                "mask_source": (r.get("editor_info") or {}).get("mask_source")}
        if (category := r.get("category", r.get("prompt_category"))) is not None:  # TGVE: the prompt's
            base["category"] = category
        for k in COST_COLUMNS:
            base[k] = (r.get("cost") or {}).get(k)
        for name, info in (r.get("metric_info") or {}).items():
            directions[name] = bool(info.get("higher_is_better"))
        for e in r.get("metric_entries") or []:
            directions[e["metric"]] = bool(e.get("higher_is_better"))
        for values, models, tiny in _metric_rows(r):
            rows.append({**base, "metric_models": _models_label(models), "metric_tiny": tiny, **values})
    return pd.DataFrame(rows), directions


def _direction(column: str, directions: dict[str, bool]) -> bool | None:
    """Whether higher is better for a metric column (columns like clip_text_x100 follow their metric)."""
    for name in sorted(directions, key=len, reverse=True):
        if column == name or column.startswith(name + "_"):
            return directions[name]
    return None


def group_table(df: pd.DataFrame, directions: dict[str, bool], keys: list[str]) -> pd.DataFrame:
    """Per group of `keys`: cells, failures, flags, mean and 95% half-width per metric, cost."""
    metric_cols = sorted(c for c in df.columns if _direction(c, directions) is not None)  # stable across stores
    out = []
    for group, g in df.groupby(keys, sort=True, dropna=False):
        ok = g[g["status"] == "ok"]
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,)))
        row.update(cells=len(ok), failed=int((g["status"] != "ok").sum()),
                   metric_tiny=bool(ok["metric_tiny"].fillna(False).astype(bool).any()) if len(ok) else False,
                   whole_frame_masks=int((ok["mask_source"] == "none").sum()) if "mask_source" in ok else 0)
        for c in metric_cols:
            mean, half, _ = mean_ci(ok[c])
            row[c], row[f"{c} ±"] = mean, half
        for c in COST_COLUMNS:
            vals = pd.to_numeric(ok[c], errors="coerce").dropna()
            row[c] = (vals.max() if c == "peak_gpu_memory_gb" else vals.mean()) if len(vals) else math.nan
        out.append(row)
    table = pd.DataFrame(out).set_index(keys)
    table.attrs["directions"] = {c: _direction(c, directions) for c in metric_cols}
    return table


def failures_in_their_rows(df: pd.DataFrame) -> pd.DataFrame:
    """A failed cell has no metric values, so no metric models: count it in every row of its benchmark,
    backbone and method (each metric configuration of that method), not in a row of its own."""
    failed = (df["status"] != "ok") & (df["metric_models"] == "-")
    keys = ["benchmark", "backbone", "method"]
    models = df[~failed].groupby(keys)["metric_models"].unique()
    rows = []
    for _, row in df[failed].iterrows():
        for label in models.get(tuple(row[k] for k in keys), ["-"]):
            rows.append({**row.to_dict(), "metric_models": label})
    return pd.concat([df[~failed], pd.DataFrame(rows, columns=df.columns)], ignore_index=True) if rows else df


def leaderboard(records: list[dict], by: Iterable[str] = ()) -> pd.DataFrame:
    """One row per (benchmark, backbone kind, method with hyperparameters, metric models[, *by]):
    n cells, failures, flags, mean and 95% half-width per metric, cost. Metrics absent from a row's
    cells are NaN (e.g. a row scored with another metric set)."""
    df, directions = records_frame([r for r in records if r])
    if df.empty:
        return pd.DataFrame()
    return group_table(failures_in_their_rows(df), directions, GROUP_KEYS + list(by))


PAIR_KEYS = ["benchmark", "backbone", "metric_models", "video", "source_prompt", "target_prompt", "seed"]


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, 95% half-width (Student t; NaN below 2 values) and count of the non-missing values."""
    vals = pd.to_numeric(values, errors="coerce").dropna()
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    half = t95(n) * vals.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    return float(vals.mean()), float(half), n


def paired(records: list[dict]) -> pd.DataFrame:
    """Method A minus method B on the cells both finished (same benchmark, backbone kind, metric models,
    video, prompts, seed); methods are compared with their hyperparameter labels."""
    df, directions = records_frame([r for r in records if r])
    if df.empty:
        return pd.DataFrame()
    df = df[df["status"] == "ok"].copy()
    metrics = [c for c in df.columns if _direction(c, directions) is not None]
    metrics = [c for c in metrics if not is_rescaled(c, metrics)]  # a x100 copy's difference says nothing new
    df[PAIR_KEYS] = df[PAIR_KEYS].astype(str)
    rows = []
    for backbone, g in df.groupby("backbone", sort=True):
        for a, b in itertools.combinations(sorted(g["method"].unique()), 2):
            both = g[g["method"] == a][PAIR_KEYS + metrics].merge(g[g["method"] == b][PAIR_KEYS + metrics],
                                                                   on=PAIR_KEYS, suffixes=("_a", "_b"))
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
             "<p>tiny / random rows are marked [tiny] / [random], tiny metric models [tiny metrics]: their values "
             "say nothing about quality.</p>",
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


def row_label(method: str, backbone: str, metric_tiny: bool = False, whole_frame_masks: int = 0,
              cells: int = 0) -> str:
    """The method label with tags: [tiny] / [random] / [external] backbones, [tiny metrics], masks."""
    tags = [] if backbone == "paper" else [str(backbone)]
    if metric_tiny:
        tags.append("tiny metrics")
    if whole_frame_masks:
        tags.append("whole-frame masks" + (f" {whole_frame_masks}/{cells}" if whole_frame_masks < cells else ""))
    return f"{method} [{'; '.join(tags)}]" if tags else str(method)


def is_rescaled(column: str, columns: Iterable[str]) -> bool:
    """Whether `column` is a rescaled copy of another column present (clip_text_x100 of clip_text)."""
    return any(column.endswith(s) and column[: -len(s)] in set(columns) for s in RESCALED_SUFFIXES)


def pretty(table: pd.DataFrame, all_columns: bool = False) -> pd.DataFrame:
    """Human table: 'mean ± ci' cells, arrows on metric names, labelled rows, benchmark and metric models;
    one column per convention (rescaled copies such as clip_text_x100 only with `all_columns`)."""
    if table.empty:
        return table
    directions = table.attrs.get("directions", {})
    if not all_columns:
        directions = {c: h for c, h in directions.items() if not is_rescaled(c, directions)}
    keys = list(table.index.names)
    idx = table.index.to_frame(index=False)
    out = pd.DataFrame(index=[row_label(m, b, t, w, c) for m, b, t, w, c in zip(
        idx["method"], idx["backbone"], table["metric_tiny"], table["whole_frame_masks"], table["cells"])])
    out.index.name = "method"
    for k in [k for k in keys if k not in ("method", "backbone")]:
        out[k.replace("_", " ")] = idx[k].values
    out["cells"] = table["cells"].values
    out["failed"] = table["failed"].values
    for c, higher in directions.items():
        mean, ci = table[c].values, table[f"{c} ±"].values
        if all(math.isnan(m) for m in mean):
            continue
        out[f"{c} {'↑' if higher else '↓'}"] = [_mean_ci_text(m, e) for m, e in zip(mean, ci)]
    for c, label in COST_COLUMNS.items():
        out[f"{label} ↓"] = ["–" if math.isnan(v) else f"{v:.3g}" for v in table[c].values]
    return out


def _mean_ci_text(mean: float, half: float) -> str:
    return "–" if math.isnan(mean) else (f"{mean:.4g}" if math.isnan(half) else f"{mean:.4g} ± {half:.2g}")


def format_table(records: list[dict], fmt: str = "markdown", all_columns: bool = False) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose from {', '.join(FORMATS)}")
    table = pretty(leaderboard([r for r in records if r]), all_columns)
    if table.empty:
        return "(no results)"
    return {"md": table.to_markdown, "csv": table.to_csv, "html": table.to_html, "tex": table.to_latex}[FORMATS[fmt]]()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vedit.leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", help="result stores or folders holding record.json files")
    parser.add_argument("--out", default=None, help="folder for leaderboard.{md,csv,html,tex}")
    parser.add_argument("--formats", default="markdown,csv,html,latex", help=f"comma-separated: {', '.join(FORMATS)}")
    parser.add_argument("--all-columns", action="store_true",
                        help="also the rescaled copies of metrics (clip_text_x100, warp_error_255)")
    parser.add_argument("--categories", default=None, metavar="METRIC[,METRIC]",
                        help="also a table per metric with a column per prompt category (TGVE), categories_<metric>.*")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if unknown := [f for f in formats if f not in FORMATS]:
        raise SystemExit(f"error: --formats {unknown[0]!r} unknown; choose from {', '.join(FORMATS)}")
    try:
        records = load_records(args.stores, strict=True)
    except EmptyStoreError as e:
        raise SystemExit(f"error: {e}") from None
    print(format_table(records, all_columns=args.all_columns))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            (out / f"leaderboard.{FORMATS[fmt]}").write_text(format_table(records, fmt, args.all_columns))
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
    found = set(df["category"])
    categories = [c for c in CATEGORY_ORDER if c in found] + sorted(found - set(CATEGORY_ORDER))
    higher = _direction(metric, directions)
    arrow = "" if higher is None else (" ↑" if higher else " ↓")
    rows = {}
    df = failures_in_their_rows(df)
    several_models = df["metric_models"].nunique() > 1  # a cell scored with two CLIPs is a row per CLIP
    for (backbone, method, models), g in df.groupby(["backbone", "method", "metric_models"], sort=True):
        ok = g[g["status"] == "ok"]
        row = {"cells": len(ok), "failed": int((g["status"] != "ok").sum())}
        for label, values in [*((c, ok.loc[ok["category"] == c, metric]) for c in categories), ("overall", ok[metric])]:
            mean, half, _ = mean_ci(values)
            row[f"{label}{arrow}"] = _mean_ci_text(mean, half)
        rows[row_label(method, backbone) + (f" ({models})" if several_models else "")] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = metric
    return table


if __name__ == "__main__":
    main()
