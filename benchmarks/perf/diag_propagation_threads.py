"""Is propagation's time stable in a warm process, and does the CPU's thread pool matter?

    python benchmarks/perf/diag_propagation_threads.py --frames 16 --threads 16 1 4 --repeats 6

`propagate_keyframes` on bench_propagation_memory.still_clip (K=10), `--repeats` times per setting in
one process: torch's CPU thread count, then the same with CUDA graphs. Per run: wall seconds, the process's CPU
seconds (far above wall = a thread pool spinning) and the seconds spent in `principal_axes` (the CPU
eigensolver of the PCA features).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import vedit.ops.patchmatch as pm
from bench_propagation_memory import still_clip
from vedit.ops.propagation import propagate_keyframes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    eigh = {"s": 0.0, "calls": 0}
    inner = pm.principal_axes

    def timed(*a, **k):
        start = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            eigh["s"] += time.perf_counter() - start
            eigh["calls"] += 1

    pm.principal_axes = timed
    clip = still_clip(args.device, args.size, args.frames, 10)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for graphs in (False, True) if args.device.startswith("cuda") else (False,):
            for _ in range(args.repeats):
                eigh.update(s=0.0, calls=0)
                sync()
                wall, cpu = time.perf_counter(), time.process_time()
                propagate_keyframes(*clip, cuda_graphs=graphs)
                sync()
                print(json.dumps({"threads": threads, "cuda_graphs": graphs, "wall_s": round(time.perf_counter() - wall, 3),
                                  "cpu_s": round(time.process_time() - cpu, 3), "eigh_s": round(eigh["s"], 3),
                                  "eigh_calls": eigh["calls"]}), flush=True)


if __name__ == "__main__":
    main()
