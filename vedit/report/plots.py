"""The report site's figures (matplotlib, SVG with text kept as text): quality against cost with the
Pareto front, per-category bars (TGVE) and each cell's per-frame curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"svg.fonttype": "none", "font.size": 8, "axes.spines.top": False, "axes.spines.right": False,
         "svg.hashsalt": "vedit"}  # fixed ids: the same store gives the same files


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (x: cost, lower is better; y: quality,
    higher is better), by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def quality_cost(path: Path, labels: list[str], cost: list[float], quality: list[float], x_label: str,
                 y_label: str, title: str) -> list[int]:
    """Scatter of quality against cost with the Pareto front marked; the front's indices."""
    points = [(c, q) for c, q in zip(cost, quality)]
    front = pareto_front(points)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        ax.scatter(cost, quality, s=22, color="#8a8a8a", zorder=2, label="method")
        fx, fy = [cost[i] for i in front], [quality[i] for i in front]
        ax.plot(fx, fy, "-o", color="#d1495b", ms=6, zorder=3, label="Pareto front")
        for x, y, label in zip(cost, quality, labels):
            ax.annotate(label, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
        if min(cost) > 0 and max(cost) / min(cost) > 20:
            ax.set_xscale("log")
        ax.set(xlabel=x_label, ylabel=y_label, title=title)
        ax.legend(loc="best", fontsize=7, frameon=False)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return front


def category_bars(path: Path, categories: list[str], methods: list[str], means: list[list[float]],
                  halves: list[list[float]], y_label: str, title: str) -> None:
    """Grouped bars: a group per category, a bar per method (`means[m][c]`), 95% intervals as error bars."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(categories) * max(1, len(methods)) / 2), 3.2))
        width = 0.8 / max(1, len(methods))
        for m, method in enumerate(methods):
            xs = [c + (m - (len(methods) - 1) / 2) * width for c in range(len(categories))]
            errs = [0 if math.isnan(h) else h for h in halves[m]]
            ax.bar(xs, means[m], width, yerr=errs, capsize=2, label=method)
        ax.set_xticks(range(len(categories)), categories)
        ax.set(ylabel=y_label, title=title)
        ax.legend(fontsize=7, frameon=False)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def frame_curves(path: Path, clip: list | None, warp: list | None, clip_label: str, warp_label: str) -> dict:
    """Two small rows sharing the frame axis: CLIP text score per frame, warp error per consecutive pair
    (drawn between its two frames). The plot area's horizontal extent in figure fractions and the frame
    range are returned for the page's playhead."""
    frames = max(len(clip or ()), len(warp or ()) + 1, 1)
    rows = [r for r in (("clip", clip, clip_label), ("warp", warp, warp_label)) if r[1]]
    with plt.rc_context({**STYLE, "font.size": 6}):
        fig, axes = plt.subplots(len(rows), 1, figsize=(2.8, 0.75 * len(rows) + 0.25), sharex=True, squeeze=False)
        for ax, (kind, values, label) in zip(axes[:, 0], rows):
            xs = list(range(len(values))) if kind == "clip" else [t + 0.5 for t in range(len(values))]
            ys = [math.nan if v is None else v for v in values]
            ax.plot(xs, ys, "-o", ms=1.8, lw=0.9, color="#2e86ab" if kind == "clip" else "#d1495b")
            ax.set_ylabel(label, fontsize=5.5)
            ax.set_xlim(-0.3, frames - 0.7)
            ax.tick_params(length=2, pad=1)
        axes[-1, 0].set_xlabel("frame", labelpad=1)
        fig.tight_layout(pad=0.3, h_pad=0.2)
        box = axes[0, 0].get_position()
        fig.savefig(path)
        plt.close(fig)
    return {"x0": box.x0 + box.width * 0.3 / (frames - 0.4), "x1": box.x1 - box.width * 0.3 / (frames - 0.4),
            "frames": frames}
