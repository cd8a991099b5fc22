"""Where an eager UNet call spends its time, and what cheap switches change it (warmed, fixed shape).

    python benchmarks/perf/diag_unet_eager.py --family sd2-depth --rows 52 100 --out diag.json

For each batch (rows): the median seconds of 5 calls under each variant (`base` = flash / efficient /
math attention, as the editors run; `cudnn_sdp` = cuDNN attention allowed; `fused_qkv` = diffusers'
`fuse_qkv_projections`; `channels_last`; `cudnn_benchmark`), then a profile of the base call with GPU
time grouped by kernel kind.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from vedit.backbones import build_backbone
from vedit.ops.attention import sdpa_kernels

KINDS = [("attention", r"flash|fmha|attention|softmax"), ("conv", r"conv|implicit|winograd|dgrad|fprop|cudnn"),
         ("gemm", r"gemm|nvjet|cutlass|xmma|sm90_|ampere_|cublas"), ("norm", r"norm"),
         ("copy", r"copy|cat|transpose|contiguous|permute"), ("elementwise", r"elementwise|vectorized|reduce|silu|gelu|mul|add")]


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="sd2-depth")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rows", nargs="+", type=int, default=[52, 100])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    bb = build_backbone(kind="random", family=args.family, device="cuda", dtype=args.dtype, seed=0)
    unet = bb.unet
    emb = bb.encode_prompt([""])
    results = {}

    @contextmanager
    def variant(name):
        if name == "cudnn_sdp":
            with sdpa_kernels(["cudnn", "flash", "efficient", "math"]):
                yield
            return
        if name == "fused_qkv":
            unet.fuse_qkv_projections()
            try:
                with sdpa_kernels(["flash", "efficient", "math"]):
                    yield
            finally:
                unet.unfuse_qkv_projections()
            return
        if name == "channels_last":
            unet.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = name == "cudnn_benchmark"
        try:
            with sdpa_kernels(["flash", "efficient", "math"]):
                yield
        finally:
            torch.backends.cudnn.benchmark = False
            unet.to(memory_format=torch.contiguous_format)

    with torch.no_grad():
        for rows in args.rows:
            x = torch.randn(rows, unet.config.in_channels, 64, 64, device="cuda", dtype=bb.dtype)
            e, t = emb.expand(rows, -1, -1), torch.full((rows,), 500, device="cuda")
            if bb.controlnet is not None:
                hint = torch.rand(rows, 3, 512, 512, device="cuda", dtype=bb.dtype)

                def call(x):
                    down, mid = bb.controlnet(x, t, encoder_hidden_states=e, controlnet_cond=hint, return_dict=False)
                    unet(x, t, encoder_hidden_states=e, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid)
            else:
                def call(x):
                    unet(x, t, encoder_hidden_states=e)
            for name in ("base", "cudnn_sdp", "fused_qkv", "channels_last", "cudnn_benchmark"):
                try:
                    with variant(name):
                        xin = x.to(memory_format=torch.channels_last) if name == "channels_last" else x
                        for _ in range(2):
                            timed(lambda: call(xin))
                        s = statistics.median(timed(lambda: call(xin)) for _ in range(5))
                except Exception as exc:  # a variant this diffusers / torch lacks
                    print(f"rows {rows} {name}: failed: {exc!r}", flush=True)
                    continue
                del xin
                results.setdefault(str(rows), {})[name] = s
                print(f"rows {rows:4d} {name:16s} {s * 1000:8.1f} ms  {s * 1000 / rows:.2f} ms/row", flush=True)
        from torch.profiler import ProfilerActivity, profile

        rows = args.rows[-1]
        x = torch.randn(rows, unet.config.in_channels, 64, 64, device="cuda", dtype=bb.dtype)
        e, t = emb.expand(rows, -1, -1), torch.full((rows,), 500, device="cuda")
        with sdpa_kernels(["flash", "efficient", "math"]):
            unet(x, t, encoder_hidden_states=e)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                unet(x, t, encoder_hidden_states=e)
                torch.cuda.synchronize()
    by_kind, total = defaultdict(float), 0.0
    for ev in prof.key_averages():
        us = ev.self_device_time_total
        if us <= 0:
            continue
        total += us
        kind = next((k for k, pat in KINDS if re.search(pat, ev.key, re.I)), "other")
        by_kind[kind] += us
    print(f"profile, rows {rows}: total GPU {total / 1000:.1f} ms")
    for k, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {k:12s} {us / 1000:8.1f} ms  {100 * us / total:5.1f}%")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=90))
    if args.out:
        args.out.write_text(json.dumps({"family": args.family, "dtype": args.dtype, "seconds": results,
                                        "profile_ms": {k: v / 1000 for k, v in by_kind.items()},
                                        "device": torch.cuda.get_device_name()}, indent=1))


if __name__ == "__main__":
    main()
