"""Where a fresh process's first cell loses time: the cost of the first UNet call at each new batch size.

    python benchmarks/perf/diag_first_call.py --family sd2-depth --device cuda --dtype float16 \
        --batches 2 4 6 8 10 12 16 24 32 48 64 100 --out diag.json

For each batch size, in a fresh process (models built once): the first call's seconds, then the median
of three repeats. A first call much slower than the repeats is per-shape set-up (cuDNN/cuBLAS
heuristics, lazy kernel loading, allocator growth) that a wavefront with a new batch size every call
pays again and again; fixed batch sizes pay it once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vedit.backbones import build_backbone


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="sd2-depth")
    ap.add_argument("--backbone", default="random")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", nargs="+", type=int, default=[2, 4, 6, 8, 10, 12, 16, 24, 32, 48, 64, 100])
    ap.add_argument("--no-cudnn-sdp", action="store_true", help="disable cuDNN's scaled-dot-product attention")
    ap.add_argument("--no-cudnn-conv", action="store_true", help="disable cuDNN (convolutions fall back)")
    ap.add_argument("--profile-batch", type=int, default=None, help="print a profile of this batch's first call")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.no_cudnn_sdp:
        torch.backends.cuda.enable_cudnn_sdp(False)
    if args.no_cudnn_conv:
        torch.backends.cudnn.enabled = False
    print("cudnn sdp", torch.backends.cuda.cudnn_sdp_enabled(), "flash", torch.backends.cuda.flash_sdp_enabled(),
          "mem-efficient", torch.backends.cuda.mem_efficient_sdp_enabled(), "cudnn", torch.backends.cudnn.enabled,
          "benchmark", torch.backends.cudnn.benchmark, flush=True)
    bb = build_backbone(kind=args.backbone, family=args.family, device=device, dtype=args.dtype, seed=0)
    unet, side = bb.unet, args.size // bb.vae_scale
    emb = bb.encode_prompt([""])
    cond = {}
    rows = []
    with torch.no_grad():
        for batch in args.batches:
            x = torch.randn(batch, unet.config.in_channels, side, side, device=device, dtype=bb.dtype)
            e = emb.expand(batch, -1, -1)
            t = torch.full((batch,), 500, device=device)
            if bb.controlnet is not None:
                hint = torch.rand(batch, 3, args.size, args.size, device=device, dtype=bb.dtype)

                def call():
                    down, mid = bb.controlnet(x, t, encoder_hidden_states=e, controlnet_cond=hint,
                                              return_dict=False)
                    unet(x, t, encoder_hidden_states=e, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid)
            else:
                def call():
                    unet(x, t, encoder_hidden_states=e, **cond)
            if batch == args.profile_batch:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    first = timed(call, device)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
            else:
                first = timed(call, device)
            repeat = statistics.median(timed(call, device) for _ in range(3))
            rows.append({"batch": batch, "first_s": first, "repeat_s": repeat, "overhead_s": first - repeat})
            print(f"batch {batch:4d}: first {first:.3f} s, repeat {repeat:.3f} s, set-up {first - repeat:.3f} s",
                  flush=True)
    if args.out:
        args.out.write_text(json.dumps({"family": args.family, "dtype": args.dtype, "rows": rows,
                                        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
                                       indent=1))


if __name__ == "__main__":
    main()
