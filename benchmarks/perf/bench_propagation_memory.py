"""Peak memory and seconds of key-frame propagation against the video's length, per `chain_batch`.

    python benchmarks/perf/bench_propagation_memory.py --device cpu --size 256 --frames 21 61 \
        --chain-batch 0 2 --out prop_mem.json                 # 0 = all chains at once (the default)

Each (frames, chain_batch) runs in its own process on a smooth random video with still flows and key
frames every `--key-interval` frames (2 chains per interval), with Rerender's propagation defaults.
Peak memory: `torch.cuda.max_memory_allocated` on CUDA, and the child's peak RSS (`ru_maxrss`, which on
the CPU holds the propagation's tensors, on top of ~0.3-0.5 GB of torch itself).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]


def still_clip(device: str, size: int, frames: int, key_interval: int) -> list:
    """`propagate_keyframes`' positional arguments for a smooth random video with still flows, its key frames
    every `key_interval` frames (and the last) stylised as the inverted frames."""
    from vedit.editors.rerender import key_frame_indices
    from vedit.ops.warp import occlusion_masks

    g = torch.Generator().manual_seed(0)
    video = F.interpolate(torch.rand(frames, 3, 16, 16, generator=g), size=(size, size), mode="bicubic").clamp(0, 1)
    still = torch.zeros(frames - 1, 2, size, size)
    occ_fwd, occ_bwd = occlusion_masks(still, still)
    keys = key_frame_indices(frames, key_interval)
    return [video.to(device), keys, (1 - video[keys]).to(device), still.to(device), still.to(device),
            occ_fwd.to(device), occ_bwd.to(device)]


def measure(device: str, size: int, frames: int, key_interval: int, chain_batch: int | None) -> dict:
    from vedit.ops.propagation import key_chains, propagate_keyframes

    args = still_clip(device, size, frames, key_interval)
    keys = args[1]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    propagate_keyframes(*args, chain_batch=chain_batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return {"frames": frames, "size": size, "chains": len(key_chains(keys, frames)), "chain_batch": chain_batch,
            "seconds": seconds, "peak_gpu_gb": peak and peak / 2 ** 30}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", nargs="+", type=int, default=[21, 61])
    ap.add_argument("--key-interval", type=int, default=10)
    ap.add_argument("--chain-batch", nargs="+", type=int, default=[0, 4], help="0 = all chains at once")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.one:
        result = measure(args.device, args.size, args.frames[0], args.key_interval, args.chain_batch[0] or None)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux
        print(json.dumps(result))
        return
    results = []
    for frames in args.frames:
        for chain_batch in args.chain_batch:
            cmd = [sys.executable, __file__, "--one", "--device", args.device, "--size", str(args.size),
                   "--frames", str(frames), "--key-interval", str(args.key_interval), "--chain-batch", str(chain_batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            results.append(result)
            print(result, flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
