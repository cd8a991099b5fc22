"""One sweep on several process layouts: wall time, cells per hour, each cell computed once, results equal.

    python benchmarks/perf/bench_sweep.py --layouts 1x1 1x2 2x1 4x1 --method rerender --out sweep.json

A layout GxP runs `python -m vedit.run -m hydra/launcher=joblib_gpus` with G*P job processes (P per GPU,
`hydra.callbacks.gpu_per_job.processes_per_gpu`), one method over the same cells (`+worker=range(G*P)`:
the store's claims give each cell to one process), in a fresh store. The first layout is the reference:
every other layout's metric values are compared with it cell by cell. Model loading is in every layout
(each process loads once), as a user's sweep pays it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sweep(layout: str, args: argparse.Namespace, work: Path) -> dict:
    gpus, per_gpu = (int(x) for x in layout.split("x"))
    n = gpus * per_gpu
    store, sweep_dir = work / f"store_{layout}", work / f"sweep_{layout}"
    cmd = [sys.executable, "-m", "vedit.run", "-m", "hydra/launcher=joblib_gpus", f"hydra.launcher.n_jobs={n}",
           f"hydra.callbacks.gpu_per_job.processes_per_gpu={per_gpu}", f"+worker=range({n})",
           f"method={args.method}", "backbone=random", f"backbone.dtype={args.dtype}", "data=synthetic",
           f"data.size=[{args.size},{args.size}]", f"data.num_frames={args.frames}", f"data.num_videos={args.videos}",
           f"prompts_per_video={args.prompts}", "metrics=tiny", f"store_dir={store}", f"cache_dir={work / 'cache'}",
           f"hydra.sweep.dir={sweep_dir}", *args.override]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    logs = "\n".join(p.read_text() for p in sweep_dir.rglob("*.log")) + proc.stdout
    computed = sum(int(m) for m in re.findall(rf"{args.method}: (\d+) computed", proc.stdout))
    records = [json.loads(p.read_text()) for p in store.glob("cells/*/record.json")]
    metrics = {}
    for p in store.glob("cells/*/metrics/*.json"):
        entry = json.loads(p.read_text())
        metrics.setdefault(p.parent.parent.name, {}).update(entry["values"])
    ok = sum(r.get("status") == "ok" for r in records)
    return {"layout": layout, "gpus": gpus, "processes_per_gpu": per_gpu, "exit": proc.returncode,
            "wall_s": wall, "cells_ok": ok, "cells_failed": len(records) - ok, "computed_by_jobs": computed,
            "cells_per_hour": 3600 * ok / wall if wall else 0.0,
            "gpus_used": sorted(set(re.findall(r"runs on GPU (\d+)", logs))),
            "seconds_per_cell": sorted(r["cost"]["seconds_total"] for r in records if r.get("status") == "ok"),
            "metrics": metrics, "stderr_tail": proc.stderr[-2000:] if proc.returncode else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["1x1", "1x2"], help="GPUSxPROCESSES_PER_GPU, first = reference")
    parser.add_argument("--method", default="rerender")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per video (cells = videos x prompts)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--work", default="/tmp/vedit-sweep")
    parser.add_argument("--override", nargs="*", default=[], help="more vedit.run overrides")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = []
    for layout in args.layouts:
        r = sweep(layout, args, Path(args.work))
        ref = results[0] if results else r
        diffs = [abs(v - ref["metrics"][k][m]) for k, vals in r["metrics"].items() for m, v in vals.items()
                 if k in ref["metrics"] and m in ref["metrics"][k]]
        r["max_metric_diff_vs_reference"] = max(diffs) if diffs else None
        r["cells_compared"] = len(set(r["metrics"]) & set(ref["metrics"]))
        r["speedup_vs_reference"] = ref["wall_s"] / r["wall_s"]
        results.append(r)
        print(f"{layout}: exit {r['exit']}, {r['cells_ok']} ok / {r['cells_failed']} failed, computed by jobs "
              f"{r['computed_by_jobs']}, wall {r['wall_s']:.1f} s, {r['cells_per_hour']:.0f} cells/h, "
              f"x{r['speedup_vs_reference']:.2f} vs {args.layouts[0]}, GPUs {r['gpus_used']}, max metric diff "
              f"{r['max_metric_diff_vs_reference']} over {r['cells_compared']} cells", flush=True)
        if r["exit"]:
            print(r["stderr_tail"])
        if args.out:  # after every layout: a run cut short keeps what it measured
            Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
