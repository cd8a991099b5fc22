"""Seconds per LOVEU-TGVE-2023 cell per method through `python -m vedit.run`, and the whole suite's projected time.

    python benchmarks/perf/bench_tgve.py --device cuda --backbone random --out outputs/bench_tgve.json
    python benchmarks/perf/bench_tgve.py --device cpu --backbone tiny --size 32 --frames 12 --videos 2 --prompts 2 \
        --override framewise:method.params.steps=2 --override pix2video:method.params.steps=2 \
        --override rerender:method.params.steps=2 --override vidmp3:method.params.steps=2 \
        --override vidmp3:method.params.tune_steps=2 --out /tmp/t.json   # CPU smoke test

Generates a TGVE-like tree (<root>/DAVIS_480p/480p_frames/<video>/*.jpg, moving textured squares, `--size`
square frames) with a suite file of `--prompts` categorised edit prompts per video, then runs each method
as the user would (`python -m vedit.run suite=tgve2023 data.root=... method=M`), one fresh process and store
per method, metrics off (editing cost only). Per method it reports the process's wall time, its start-up
(wall time minus the cells: imports, model build), and seconds per cell. Cells of the first video count as
warm-up when there are several videos; the rest give the steady s/cell. A suite video's prompts share
cached preprocessing (Pix2Video's inversion, estimators), so measure all 4 prompts per video for the
suite's mix.

Projection for the real suite (benchmarks/suites/loveu-tgve-2023.yaml: 304 cells, 53 videos x 32 frames and
23 x 128): time per cell scales linearly with its frame count (s/frame from the steady cells; measured
per frame count when --frames lists several), plus one start-up per process.
1 GPU: start-up + sum over the suite's cells. 8 GPUs: 8 processes share one store through the joblib
launcher (`hydra/launcher=joblib_gpus hydra.launcher.n_jobs=8 +worker=range(8)`: the claims give each cell
to one process), perfectly balanced at cell granularity: start-up + max(sum / 8, longest cell).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "benchmarks" / "suites" / "loveu-tgve-2023.yaml"
CATEGORIES = ("style", "object", "background", "multiple")


def make_tree(root: Path, videos: int, frame_counts: list[int], size: int, prompts: int) -> Path:
    """A textured background with a square moving across it, as jpg frames; returns the suite file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    entries = {}
    for frames in frame_counts:
        for v in range(videos):
            name = f"clip{v}-{frames}f"
            folder = root / "DAVIS_480p" / "480p_frames" / name
            folder.mkdir(parents=True)
            background = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            side = max(size // 4, 2)
            for i in range(frames):
                image = background.copy()
                x = int((size - side) * i / max(frames - 1, 1))
                image[size // 3: size // 3 + side, x: x + side] = (220, 40, 40)
                Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=95)
            entries[name] = {"subset": "DAVIS_480p", "frames": frames, "source_prompt": "a red square moves",
                             "edit_prompts": {c: f"a {c} edit of a red square" for c in CATEGORIES[:prompts]}}
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump({"suite": "bench", "videos": entries}, sort_keys=False))
    return suite


def run_method(method: str, root: Path, suite: Path, args: argparse.Namespace) -> dict:
    store = root / f"store-{method}"
    cmd = [sys.executable, "-m", "vedit.run", "suite=tgve2023", f"method={method}", f"backbone={args.backbone}",
           f"device={args.device}", f"data.root={root}", f"data.prompts={suite}",
           f"data.transform.size=[{args.size},{args.size}]", "metrics=tiny", "metrics.names=[]",
           "tracker.trackers=[]", f"store_dir={store}", f"cache_dir={root / f'cache-{method}'}",
           f"hydra.run.dir={root / f'run-{method}'}"]
    for override in args.override:  # "key=value" for every method, "method:key=value" for one
        name, _, rest = override.partition(":") if ":" in override.split("=", 1)[0] else ("", "", override)
        if name in ("", method):
            cmd.append(rest)
    if args.dtype:
        cmd.append(f"backbone.dtype={args.dtype}")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    records = [json.loads(p.read_text()) for p in sorted((store / "cells").glob("*/record.json"))]
    records.sort(key=lambda r: r["started_at"])
    if proc.returncode or not records:
        return {"method": method, "error": (proc.stderr or proc.stdout)[-2000:], "returncode": proc.returncode}
    cells = [{"video": r["video"], "category": r.get("prompt_category"), "status": r["status"],
              "frames": int(r.get("num_frames") or 0), "seconds": r["finished_at"] - r["started_at"],
              "edit_seconds": (r.get("cost") or {}).get("seconds_total"),
              "peak_gpu_memory_gb": (r.get("cost") or {}).get("peak_gpu_memory_gb"),
              "error": r.get("error")} for r in records]
    first = cells[0]["video"]
    steady = [c for c in cells if c["video"] != first and c["status"] == "ok"] or \
        [c for c in cells if c["status"] == "ok"]
    per_frame: dict[int, float] = {}
    for frames in sorted({c["frames"] for c in steady}):
        same = [c for c in steady if c["frames"] == frames]
        per_frame[frames] = float(np.mean([c["seconds"] / frames for c in same]))
    return {"method": method, "wall_s": wall, "startup_s": wall - sum(c["seconds"] for c in cells),
            "cells": cells, "failed": sum(c["status"] != "ok" for c in cells),
            "s_per_cell": float(np.mean([c["seconds"] for c in steady])) if steady else None,
            "s_per_frame": per_frame}


def project(result: dict, gpus: list[int]) -> dict:
    """Projected hours for the suite on each GPU count (see the module docstring for the assumptions)."""
    per_frame = result.get("s_per_frame") or {}
    if not per_frame:
        return {}
    videos = yaml.safe_load(SUITE.read_text())["videos"]
    lengths = [int(v["frames"]) for v in videos.values() for _ in v["edit_prompts"]]

    def cell_seconds(frames: int) -> float:  # the measured length nearest to it, scaled linearly
        nearest = min(per_frame, key=lambda n: abs(n - frames))
        return per_frame[nearest] * frames

    total = sum(cell_seconds(n) for n in lengths)
    longest = max(cell_seconds(n) for n in lengths)
    return {f"{g}_gpu_hours": (result["startup_s"] + max(total / g, longest)) / 3600 for g in gpus} | \
        {"suite_cells": len(lengths), "suite_frames": sum(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="identity,framewise,pix2video,rerender,vidmp3")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backbone", default="random", help="random (GPU timing) | tiny (CPU smoke test)")
    parser.add_argument("--dtype", default=None, help="backbone.dtype override (default: the config's auto)")
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--frames", default="32", help="frame counts of the generated videos, e.g. 32,128")
    parser.add_argument("--videos", type=int, default=2, help="videos per frame count (the first is warm-up)")
    parser.add_argument("--prompts", type=int, default=4, choices=range(1, 5), help="categorised prompts per video")
    parser.add_argument("--gpus", default="1,8", help="GPU counts to project to")
    parser.add_argument("--override", action="append", default=[],
                        help="extra vedit.run override, key=value or method:key=value (repeatable)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per method")
    parser.add_argument("--out", default="outputs/bench_tgve.json")
    args = parser.parse_args()
    gpus = [int(g) for g in args.gpus.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        suite = make_tree(root, args.videos, [int(f) for f in args.frames.split(",")], args.size, args.prompts)
        for method in args.methods.split(","):
            result = run_method(method, root, suite, args)
            result["projection"] = project(result, gpus)
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "cells"}), flush=True)
    out = {"args": vars(args), "assumption": __doc__.split("Projection")[1].strip(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    head = "| method | cells ok/failed | start-up s | s/cell (steady) | s/frame by length | " + \
        " | ".join(f"suite on {g} GPU(s), h" for g in gpus) + " |"
    print("\n" + head + "\n" + "|---" * (5 + len(gpus)) + "|")
    for r in results:
        if "error" in r:
            lines = [line for line in r["error"].splitlines() if "Error" in line] or r["error"].splitlines() or [""]
            print(f"| {r['method']} | error (exit {r['returncode']}): {lines[-1][:200]} |")
            continue
        proj = r["projection"]
        ok = len(r["cells"]) - r["failed"]
        rate = ", ".join(f"{n}f: {s:.3g}" for n, s in r["s_per_frame"].items())
        hours = " | ".join(f"{proj[f'{g}_gpu_hours']:.2f}" if proj else "–" for g in gpus)
        s_cell = f"{r['s_per_cell']:.3g}" if r["s_per_cell"] is not None else "–"
        print(f"| {r['method']} | {ok}/{r['failed']} | {r['startup_s']:.1f} | {s_cell} | {rate} | {hours} |")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
