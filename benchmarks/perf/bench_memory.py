"""Peak host memory (RSS) of `python -m vedit.run method=identity` on generated footage of real sizes.

    python benchmarks/perf/bench_memory.py --out mem.json                    # the default clips below
    python benchmarks/perf/bench_memory.py --clips 512x512@29.97:800 --metrics tiny none --out mem.json
    python benchmarks/perf/bench_memory.py --repo /path/to/other/checkout ...  # measure another version

Each clip is written as an mp4 (H.264, PyAV) with moving texture into a temporary folder with a
prompts.yaml, then run as a subprocess through the Hydra entry point (`data=folder`, the default
`data.transform.size=[512,512]`, `backbone=tiny`). `--metrics tiny` runs the default metric list on
the tiny CLIP (the same metric code path as the default ViT-L/14, which needs weights); `none` runs
no metrics (`metrics.names=[]`): reading, transforming, editing and writing only. Peak RSS is the
child's `ru_maxrss`, taken in a wrapper process that has only that child. CPU only; no GPU needed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# The footage: PAL-size 795-frame clip, a 2.35:1 clip, QCIF; 23.976 and 29.97 fps.
DEFAULT_CLIPS = ["512x512@29.97:800", "768x576@29.97:800", "640x272@23.976:240", "176x144@29.97:300"]
WRAPPER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'RC', rc)")
PROMPTS = "videos:\n  clip:\n    source_prompt: a textured wall\n    edit_prompts: [a painted wall]\n"
RATES = {"29.97": Fraction(30000, 1001), "23.976": Fraction(24000, 1001), "59.94": Fraction(60000, 1001)}


def parse_clip(spec: str) -> tuple[int, int, Fraction, int]:
    """'768x576@29.97:800' -> (width, height, fps, frames)."""
    size, rest = spec.split("@")
    rate, frames = rest.split(":")
    w, h = (int(v) for v in size.split("x"))
    return w, h, RATES.get(rate, Fraction(rate).limit_denominator(1001)), int(frames)


def write_clip(path: Path, width: int, height: int, fps: Fraction, frames: int, seed: int = 0) -> None:
    """A texture panning and zooming slowly, encoded frame by frame (nothing held in memory)."""
    import av

    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (height // 8 + 40, width // 8 + 40, 3), dtype=np.uint8)
    texture = np.kron(big, np.ones((8, 8, 1), dtype=np.uint8))  # blocks: structure the flow can track
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for t in range(frames):
            dy, dx = int(40 * (1 + np.sin(t / 50))) % 160, (t * 2) % 160
            img = np.ascontiguousarray(texture[dy:dy + height, dx:dx + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def run_identity(root: Path, work: Path, metrics: str, repo: Path, extra: list[str]) -> dict:
    names = [] if metrics == "tiny" else ["metrics.names=[]"]
    cmd = [sys.executable, "-m", "vedit.run", "method=identity", "data=folder", f"data.root={root}",
           "backbone=tiny", "metrics=tiny", *names, "device=cpu", f"store_dir={work / 'store'}",
           f"cache_dir={work / 'cache'}", f"hydra.run.dir={work / 'hydra'}", *extra]
    env = {**os.environ, "PYTHONPATH": str(repo), "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MAXRSS_KB")][-1].split()
    out = {"peak_rss_gb": round(int(line[1]) / 2**20, 3), "exit_code": int(line[3]), "wall_s": round(wall, 1)}
    if out["exit_code"] != 0:
        out["stderr_tail"] = proc.stderr[-2000:]
    records = list((work / "store" / "cells").glob("*/record.json"))
    if records:
        rec = json.loads(records[0].read_text())
        out.update(status=rec.get("status"), error=rec.get("error"), num_frames=rec.get("num_frames"),
                   source=rec.get("source"))
        edited = records[0].parent / "edited.mp4"
        if edited.exists():
            import av

            with av.open(str(edited)) as c:
                out["edited_fps"] = str(c.streams.video[0].average_rate)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", default=DEFAULT_CLIPS, help="WxH@fps:frames")
    parser.add_argument("--metrics", nargs="+", default=["tiny", "none"], choices=["tiny", "none"])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose vedit is measured")
    parser.add_argument("--limit-gb", type=float, default=3.0, help="the target peak RSS (reported, not enforced)")
    parser.add_argument("--short", type=int, default=8,
                        help="also run an N-frame clip of each size: (peak - its peak) / extra frames = MB per frame; 0: skip")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. data.transform.crop=keep_aspect")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="vedit-mem-") as tmp:
        for i, spec in enumerate(args.clips):
            w, h, fps, frames = parse_clip(spec)
            root = Path(tmp) / f"clip{i}"
            root.mkdir()
            write_clip(root / "clip.mp4", w, h, fps, frames, seed=i)
            (root / "prompts.yaml").write_text(PROMPTS)
            short = None
            if args.short and args.short < frames:
                short = Path(tmp) / f"short{i}"
                short.mkdir()
                write_clip(short / "clip.mp4", w, h, fps, args.short, seed=i)
                (short / "prompts.yaml").write_text(PROMPTS)
            for metrics in args.metrics:
                work = Path(tmp) / f"run{i}_{metrics}"
                res = {"clip": spec, "fps": str(fps), "metrics": metrics,
                       **run_identity(root, work, metrics, args.repo, args.overrides)}
                if short is not None:
                    base = run_identity(short, Path(tmp) / f"run{i}_{metrics}_short", metrics, args.repo,
                                        args.overrides)["peak_rss_gb"]
                    res[f"peak_rss_gb_{args.short}_frames"] = base
                    res["mb_per_frame"] = round((res["peak_rss_gb"] - base) * 1024 / (frames - args.short), 3)
                res["within_limit"] = res["peak_rss_gb"] <= args.limit_gb
                results.append(res)
                print(f"{spec:>20} metrics={metrics:<4} peak RSS {res['peak_rss_gb']:6.2f} GB "
                      f"({res.get('mb_per_frame')} MB/frame above a {args.short}-frame clip) exit {res['exit_code']} {res.get('status')} "
                      f"fps out {res.get('edited_fps')} in {res['wall_s']} s", flush=True)
    summary = {"repo": str(args.repo), "overrides": args.overrides, "limit_gb": args.limit_gb,
               "cpu_count": os.cpu_count(), "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
