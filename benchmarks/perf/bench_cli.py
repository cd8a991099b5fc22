"""What users get: `python -m vedit.run` in a fresh process, first cell and steady state, per method.

    python benchmarks/perf/bench_cli.py --source <folder of jpg frames> --methods pix2video rerender \
        --frames 16 50 128 --out cli.json [--override backbone.dtype=bfloat16 ...]

For each method and frame count, one fresh process runs two cells on two different videos of that
length (so the second cell reuses nothing of the first but the process: no inversion cache hit):
cell 0 is the first (it pays whatever first-call set-up the run's warm-up, `warmup_seconds`, leaves:
new batch shapes, allocator growth), cell 1 is the steady state. Videos are the source frames played forward and back
to the length asked (the second video starts half-way). Everything is read back from the records
the run wrote: the editor's own phase timings, peak GPU memory, metric seconds, the backbone's
load time and the warm-up's seconds (both once per process, reported apart, not part of a cell's cost). The process's wall time is
measured around the subprocess.

First cells vary between fresh processes on one machine (16-frame Rerender key-frame sampling: 2.3-3.6 s),
so small effects need several processes per setting: `--variant NAME OVERRIDE...` (repeatable) runs each
setting with its own overrides, `--repeats N` runs every variant N times, interleaved (A B A B ...), and the
summary gives each setting's median and range per phase (`<out>.summary.json`).

Defaults: `backbone=random` (full-size architectures, random weights), default metrics with a
randomly initialised ViT-L/14 CLIP (no weights offline; same compute) and the run's default
estimators. Extra Hydra overrides apply to every run (`--override method.params.key_interval=5`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE_PROMPT = "a black swan with a red beak swimming in a river near a wall and bushes"
TARGET_PROMPTS = ("a white duck with a yellow beak swimming in a river near a wall and bushes",
                  "a pink flamingo swimming in a river near a wall and bushes")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def ping_pong(frames: list[Path], length: int, offset: int = 0) -> list[Path]:
    """`length` frames walking forward and back over `frames`, starting at `offset`."""
    cycle = frames + frames[-2:0:-1] if len(frames) > 1 else frames
    return [cycle[(offset + i) % len(cycle)] for i in range(length)]


def make_dataset(source: Path, length: int, root: Path, videos: int = 2, prompts: int = 1) -> Path:
    """`videos` (1 or 2) frame-folder videos of `length` frames, each with `prompts` (1 or 2) edit prompts, and their
    prompts file (the folder dataset layout)."""
    frames = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        raise SystemExit(f"--source {source} holds no {IMAGE_SUFFIXES} frames")
    entries = {}
    for name, offset in (("a_first", 0), ("b_second", len(frames) // 2))[:videos]:
        folder = root / f"{name}_{length}"
        folder.mkdir(parents=True)
        for i, src in enumerate(ping_pong(frames, length, offset)):
            shutil.copyfile(src, folder / f"{i:05d}{src.suffix.lower()}")
        entries[folder.name] = {"source_prompt": SOURCE_PROMPT, "edit_prompts": list(TARGET_PROMPTS[:prompts])}
    (root / "prompts.yaml").write_text(json.dumps({"videos": entries}, indent=1))  # JSON is YAML
    return root


# Loads torch's CUDA libraries (cuDNN, cuBLAS, SDPA kernels) once, so that the page cache holds them: on a
# freshly started machine the first process otherwise reads them from disk (seen: +1.1 s in a 16-frame
# first cell), which would favour whichever run comes second.
PRIME = ("import torch\n"
         "if torch.cuda.is_available():\n"
         "    x = torch.randn(8, 64, 64, 64, device='cuda', dtype=torch.bfloat16)\n"
         "    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to('cuda', torch.bfloat16)\n"
         "    (conv(x).sum() + (x.flatten(1) @ x.flatten(1).T).sum()\n"
         "     + torch.nn.functional.scaled_dot_product_attention(x, x, x).sum()).item()\n")


def run_method(method: str, data_root: Path, work: Path, overrides: list[str], timeout: float) -> dict:
    store, cache = work / "store", work / "cache"
    cmd = [sys.executable, "-m", "vedit.run", f"method={method}", "data=folder", f"data.root={data_root}",
           "data.prompts=prompts.yaml", f"store_dir={store}", f"cache_dir={cache}",
           f"hydra.run.dir={work / 'hydra'}", *overrides]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        returncode, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:  # keep the cells it finished
        returncode, stderr = "timeout", e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
    wall = time.perf_counter() - start
    records = [json.loads(p.read_text()) for p in sorted(store.glob("cells/*/record.json"))]
    records.sort(key=lambda r: r.get("cell_index_in_process", 0))
    cells = []
    for rec in records:
        cost = rec.get("cost", {})
        cells.append({
            "video": rec.get("video"), "status": rec.get("status"), "error": rec.get("error"),
            "cell_index_in_process": rec.get("cell_index_in_process"), "frames": rec.get("num_frames"),
            "timings": rec.get("timings"), "seconds_per_frame": cost.get("seconds_per_frame"),
            "seconds_total": cost.get("seconds_total"), "peak_gpu_memory_gb": cost.get("peak_gpu_memory_gb"),
            "metric_seconds": rec.get("metric_seconds"), "device": cost.get("device"),
            "editor_info": rec.get("editor_info"),
        })
    first = records[0] if records else {}
    return {"method": method, "command": " ".join(cmd), "returncode": returncode, "process_wall_s": wall,
            "backbone_load_seconds": first.get("backbone_load_seconds"), "warmup_seconds": first.get("warmup_seconds"),
            "cells": cells, "stderr_tail": stderr[-3000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=True, help="folder of jpg/png frames (e.g. DAVIS blackswan)")
    ap.add_argument("--methods", nargs="+", default=["pix2video", "rerender", "vidmp3"])
    ap.add_argument("--frames", nargs="+", type=int, default=[50])
    ap.add_argument("--override", nargs="*", default=["backbone=random", "+metrics.clip.load_weights=false"],
                    help="Hydra overrides for every run (default: random backbone, random-weight ViT-L/14 CLIP (same compute); "
                         "CPU smoke test: backbone=tiny metrics=tiny)")
    ap.add_argument("--method-override", action="append", default=[],
                    help="METHOD:override, e.g. vidmp3:+protocol=vidmp3_clip (repeatable)")
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "OVERRIDE"),
                    help="a setting to compare: its name, then Hydra overrides (repeatable; default: one, no overrides)")
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per method, length and variant")
    ap.add_argument("--videos", type=int, default=2, choices=(1, 2), help="1: the first cell only")
    ap.add_argument("--prompts", type=int, default=1, choices=(1, 2),
                    help="edit prompts per video: 2 shows what a second prompt on the same video costs (cached inversion)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--keep", type=Path, default=None, help="keep the stores here (default: a temp dir)")
    ap.add_argument("--no-prime", action="store_true",
                    help="skip the throwaway process that loads the CUDA libraries before the first measured one")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    per_method: dict[str, list[str]] = {}
    for item in args.method_override:
        name, _, override = item.partition(":")
        per_method.setdefault(name, []).append(override)
    base = args.keep or Path(tempfile.mkdtemp(prefix="vedit-cli-"))
    if not args.no_prime:
        subprocess.run([sys.executable, "-c", PRIME], cwd=REPO, check=False, timeout=300)
    variants = [(v[0], v[1:]) for v in args.variant] or [("default", [])]
    results = []
    for length in args.frames:
        data_root = make_dataset(args.source, length, base / f"data_{length}", args.videos, args.prompts)
        for method, repeat, (variant, extra) in itertools.product(args.methods, range(args.repeats), variants):
            work = base / f"{method}_{length}_{variant}_{repeat}"
            res = run_method(method, data_root, work, args.override + per_method.get(method, []) + extra, args.timeout)
            res.update(frames_requested=length, variant=variant, repeat=repeat)
            results.append(res)
            print(f"\n=== {method}, {length} frames, {variant} #{repeat}: exit {res['returncode']}, process "
                  f"{res.get('process_wall_s', float('nan')):.1f} s, backbone load {res.get('backbone_load_seconds')}, "
                  f"warm-up {res.get('warmup_seconds')}")
            for cell in res["cells"]:
                timings = {k: round(v, 2) for k, v in (cell["timings"] or {}).items()}
                spf, mem = cell["seconds_per_frame"], cell["peak_gpu_memory_gb"]
                print(f"  cell {cell['cell_index_in_process']} ({cell['video']}, {cell['frames']} frames): "
                      f"{cell['status']} {cell.get('error') or ''} s/frame {spf and round(spf, 3)} "
                      f"phases {timings} metrics {cell['metric_seconds'] and round(cell['metric_seconds'], 1)} s "
                      f"peak {mem and round(mem, 1)} GB")
            if res["returncode"] not in (0,) and not res["cells"]:
                print(res.get("stderr_tail", "")[-1500:])
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    summary = summarise(results)
    for row in summary:
        print(json.dumps(row))
    if args.out:
        args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))


def summarise(results: list[dict]) -> list[dict]:
    """Per method, length, variant and cell of the process: the median, min and max over its processes of
    the cell's s/frame, of each phase's seconds and of its peak memory (finished cells only)."""
    groups: dict[tuple, list[dict]] = {}
    for res in results:
        for cell in res["cells"]:
            if cell["status"] == "ok":
                key = (res["method"], res["frames_requested"], res.get("variant", "default"), cell["cell_index_in_process"])
                groups.setdefault(key, []).append(cell)
    rows = []
    for (method, frames, variant, index), cells in groups.items():
        values = {"s_per_frame": [c["seconds_per_frame"] for c in cells],
                  "peak_gpu_memory_gb": [c["peak_gpu_memory_gb"] for c in cells if c["peak_gpu_memory_gb"] is not None]}
        for phase in sorted({p for c in cells for p in (c["timings"] or {})}):
            values[phase] = [c["timings"][phase] for c in cells if phase in (c["timings"] or {})]
        rows.append({"method": method, "frames": frames, "variant": variant, "cell": index, "processes": len(cells),
                     **{name: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                        for name, v in values.items() if v}})
    return rows


if __name__ == "__main__":
    main()
