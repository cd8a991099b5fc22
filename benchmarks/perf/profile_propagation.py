"""Where key-frame propagation's time goes on the GPU: warmed seconds, then one torch.profiler run.

    python benchmarks/perf/profile_propagation.py --frames 16 50 --size 512 --out prop_profile.json

Per length: a smooth random video with still flows, key frames every `--key-interval` frames and
Rerender's propagation defaults (`bench_propagation_memory.still_clip`); one untimed run, then the best of
`--repeats` timed runs, then a profiled run: host (CPU) time against the summed time of the CUDA
kernels, the number of kernel launches and of host-device synchronisations, and the top operators.
When the kernels' sum is far below the wall time, propagation is launch-bound (host side).
`--cuda-graphs both` measures eager and graph-replayed PatchMatch (`cuda_graphs`) in the same process and
checks that their frames are identical.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench_propagation_memory import still_clip


def main() -> None:
    from vedit.ops.propagation import key_chains, propagate_keyframes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", nargs="+", type=int, default=[16, 50])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--key-interval", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chain-batch", type=int, default=0, help="0 = all chains at once (the default)")
    ap.add_argument("--cuda-graphs", choices=("on", "off", "both"), default="both")
    ap.add_argument("--rows", type=int, default=25, help="operators shown from the profile")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.cuda_graphs]
    results = []
    for frames in args.frames:
        prop_args = still_clip(device, args.size, frames, args.key_interval)
        keys = prop_args[1]
        chains = key_chains(keys, frames)
        outputs = []
        for graphs in modes:
            def run() -> torch.Tensor:
                out = propagate_keyframes(*prop_args, chain_batch=args.chain_batch or None, cuda_graphs=graphs)
                sync()
                return out

            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            outputs.append(run())
            first = time.perf_counter() - start
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run()
                seconds.append(time.perf_counter() - start)
            peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda") else None
            with profile(activities=activities) as prof:
                run()
            events = prof.key_averages()
            kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
            kernel_seconds = sum(e.self_device_time_total for e in kernels) / 1e6
            launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                "cudaLaunchKernelExC", "cudaGraphLaunch"))
            syncs = sum(e.count for e in events if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                             "cudaMemcpyAsync"))
            result = {"frames": frames, "size": args.size, "keys": keys, "chains": len(chains),
                      "steps": max(len(c.targets) for c in chains), "chain_batch": args.chain_batch or None,
                      "cuda_graphs": graphs, "first_run_s": first, "warm_s": min(seconds),
                      "warm_s_per_propagated_frame": min(seconds) / (frames - len(keys)), "peak_gb": peak,
                      "kernel_s": kernel_seconds, "kernel_and_graph_launches": launches,
                      "memcpy_or_sync_calls": syncs}
            if len(outputs) > 1:
                result["frames_identical_to_eager"] = torch.equal(outputs[0], outputs[-1])
            results.append(result)
            print(json.dumps(result), flush=True)
            print(events.table(sort_by="cpu_time_total", row_limit=args.rows, max_name_column_width=60), flush=True)
            if args.out:
                name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
                args.out.write_text(json.dumps({"device": name, "results": results}, indent=1))


if __name__ == "__main__":
    main()
