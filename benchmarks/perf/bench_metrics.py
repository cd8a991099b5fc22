"""Time and memory of the metrics on a long video: CLIP ViT-L/14 (QuickGELU, as load_clip builds it)
and RAFT flow, frames held as uint8 and processed in chunks.

    python benchmarks/perf/bench_metrics.py --device cuda --frames 200 --size 512 --out outputs/bench_metrics.json
    python benchmarks/perf/bench_metrics.py --device cpu --frames 12 --size 64 --tiny --out /tmp/m.json   # smoke test

Weights do not change compute: CLIP is built with random weights (`load_clip(..., load_weights=False)`)
and RAFT uses the torch hub weights when cached, else random weights. Reports seconds per frame of
each metric (the first call includes flow estimation; flow is cached for the later ones), peak GPU
memory per metric and the process's peak resident memory, against the size of the video as float32.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tiny", action="store_true", help="tiny CLIP and raft_small (smoke test)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from torchvision.models import optical_flow

    from vedit.estimators import Estimators
    from vedit.metrics.clip_models import load_clip, tiny_clip
    from vedit.registry import METRICS
    from vedit.task import EditTask
    from vedit.video import Video

    device = torch.device(args.device)
    clip = tiny_clip(device=device) if args.tiny else load_clip("ViT-L-14", "openai", device=device, load_weights=False)
    raft_name = "raft_small" if args.tiny else "raft_large"
    try:
        from vedit.estimators.flow import load_raft

        raft, raft_weights = load_raft(raft_name, device), "pretrained"
    except Exception:  # noqa: BLE001 - no cached weights: same compute with random weights
        raft, raft_weights = getattr(optical_flow, raft_name)().eval().to(device), "random"
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, args.size + 2 * args.frames, args.size + 2 * args.frames, generator=g)
    base = torch.nn.functional.avg_pool2d(base, 9, 1, 4)  # smooth, so flow has something to track
    frames = torch.cat([base[..., t:t + args.size, 2 * t:2 * t + args.size] for t in range(args.frames)])
    source = Video(frames, fps=8, id="bench")
    edited = (frames.flip(1) * 255).round().to(torch.uint8)  # a colour edit, stored as uint8
    task = EditTask(video=source, source_prompt="a textured wall", target_prompt="a painted wall")
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "frames": args.frames, "size": args.size, "clip": clip.describe(), "raft": raft_name,
                     "raft_weights": raft_weights, "video_float32_gb": frames.numel() * 4 / 2**30, "metrics": {}}
    with tempfile.TemporaryDirectory() as cache:
        estimators = Estimators(flow="raft", flow_model=raft, raft_name=raft_name, cache_dir=cache, device=str(device))
        for name in ["warp_error", "warp_error_l1", "motion_alignment", "clip_text", "clip_image",
                     "clip_image_allpairs", "frame_acc"]:
            cls = METRICS.get(name)
            metric = cls(clip=clip) if "clip" in name or name == "frame_acc" else cls(estimators=estimators)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            try:
                values = metric(edited, task)
            except Exception as e:  # noqa: BLE001 - e.g. random RAFT weights: every pixel occluded
                values = {"error": f"{type(e).__name__}: {e}"}
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            results["metrics"][name] = {
                "seconds": seconds, "seconds_per_frame": seconds / args.frames, "values": values,
                "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0}
            print(f"{name:22s} {seconds:8.2f} s  {values}")
    results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"peak RSS {results['peak_rss_gb']:.2f} GB (video as float32: {results['video_float32_gb']:.2f} GB); "
          f"written to {args.out}")


if __name__ == "__main__":
    main()
