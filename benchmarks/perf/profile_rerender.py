"""Where a Rerender edit's time goes on the GPU, phase by phase: wall seconds against kernel seconds.

    python benchmarks/perf/profile_rerender.py --frames 16 --size 512 --out rerender_profile.json

Backbone `random` (full size, random weights), the sliding video of bench_rerender.py (exact flow as side
data), the editor's defaults. The process warms up as `vedit.run` does, runs one edit (the first cell: its
phase seconds), then a profiled edit. Per phase (preprocessing, sampling, propagation): its wall seconds, the
seconds the GPU was busy with traced kernels (union of their intervals; kernels replayed from a CUDA graph may
not be traced one by one), kernel and graph launches, and host-device copies; inside sampling, per part (UNet
calls, VAE, pixel-fusion set-up, cross-frame K/V copies) its calls, host seconds and GPU span. A phase whose
GPU spans add up to far less than its wall seconds waits on the host.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench_rerender import sliding_video
from harness import backbone_arguments, build_timed

PARTS = ("unet_calls", "vae_decode", "vae_encode", "pixel_fusion_setup", "kv_fill", "kv_record")
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch")
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaEventSynchronize")


def mark(owner, method: str, label: str) -> None:
    """Wrap owner.method in a profiler range named `label`."""
    inner = getattr(owner, method)

    def wrapped(*args, **kwargs):
        with record_function(label):
            return inner(*args, **kwargs)

    setattr(owner, method, wrapped)


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of (start, end) intervals in microseconds."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total / 1e6


def phase_summary(label: str, kernels: list, cpu: list) -> dict:
    """A phase begins and ends with a device synchronisation, so its kernels run inside its wall range."""
    ranges = [(e.time_range.start, e.time_range.end) for e in cpu if e.name == label]

    def inside(t: float) -> bool:
        return any(a <= t <= b for a, b in ranges)

    return {"wall_s": sum(b - a for a, b in ranges) / 1e6,
            "kernel_busy_s": busy_seconds([(k.time_range.start, k.time_range.end) for k in kernels
                                           if inside(k.time_range.start)]),
            "launches": sum(1 for e in cpu if e.name in LAUNCHES and inside(e.time_range.start)),
            "copies_or_waits": sum(1 for e in cpu if e.name in WAITS and inside(e.time_range.start))}


def main() -> None:
    from vedit.editors import base
    from vedit.editors import rerender as rr
    from vedit.estimators import Estimators

    p = backbone_arguments(__doc__, frames=16)
    p.add_argument("--key-interval", type=int, default=10)
    p.add_argument("--rows", type=int, default=30, help="operators shown from the profile")
    p.add_argument("--trace", type=Path, default=None, help="also write the profiled edit's Chrome trace here")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    bb, load_s = build_timed(args, "sd15-controlnet")
    task = sliding_video(args.frames, args.size)
    editor = rr.RerenderEditor(bb, Estimators(), key_interval=args.key_interval)
    start = time.perf_counter()
    editor.warmup((args.size, args.size), args.frames)
    if bb.device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - start
    first = editor.edit(task).timings

    phase = base.PhaseTimer.phase

    @contextmanager
    def labelled(self, name: str):
        with record_function(f"phase:{name}"), phase(self, name):
            yield

    base.PhaseTimer.phase = labelled
    mark(bb, "decode_latents", "vae_decode")
    mark(bb, "encode_images", "vae_encode")
    for cls, method, label in ((rr._Sampler, "wavefront_call", "unet_calls"), (rr._Sampler, "pixel_fusion", "pixel_fusion_setup"),
                               (rr.WavefrontAttention, "fill", "kv_fill"), (rr.WavefrontAttention, "record", "kv_record")):
        mark(cls, method, label)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        profiled = editor.edit(task).timings
    events = prof.events()
    labels = {f"phase:{n}" for n in ("preprocessing", "sampling", "propagation")} | set(PARTS)
    # device events, less the ranges the labels themselves draw on the GPU timeline
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and e.name not in labels]
    cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    phases = {n: phase_summary(f"phase:{n}", kernels, cpu) for n in ("preprocessing", "sampling", "propagation")}
    # per part of sampling: its calls and host seconds (its CPU ranges), and the seconds from the first to the
    # last GPU work it launched, summed over its calls (its ranges on the GPU timeline)
    parts = {}
    for e in events:
        if e.name in PARTS:
            part = parts.setdefault(e.name, {"calls": 0, "host_s": 0.0, "gpu_span_s": 0.0})
            if e.device_type == torch.autograd.DeviceType.CPU:
                part["calls"] += 1
                part["host_s"] += (e.time_range.end - e.time_range.start) / 1e6
            else:
                part["gpu_span_s"] += (e.time_range.end - e.time_range.start) / 1e6
    record = {"device": torch.cuda.get_device_name() if bb.device.type == "cuda" else "cpu", "backbone": bb.describe(), "frames": args.frames,
              "size": args.size, "key_interval": args.key_interval, "load_s": load_s, "warmup_s": warmup_s,
              "first_cell_timings": first, "profiled_cell_timings": profiled, "phases": phases,
              "sampling_parts": parts}
    print(json.dumps(record, indent=1), flush=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
