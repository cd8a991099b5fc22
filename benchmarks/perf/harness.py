"""What the component benchmarks share: their backbone arguments, the backbone built and timed, the report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vedit.backbones import Backbone, build_backbone


def backbone_arguments(description: str, frames: int) -> argparse.ArgumentParser:
    """A parser with --backbone (random: full size, random weights), --device, --dtype, --frames and --size."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=("random", "tiny"), default="random")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="bfloat16")
    p.add_argument("--frames", type=int, default=frames)
    p.add_argument("--size", type=int, default=512)
    return p


def build_timed(args: argparse.Namespace, family: str) -> tuple[Backbone, float]:
    """The backbone of `family` on args.device (TF32 matmuls on CUDA) and the seconds building it took."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    start = time.perf_counter()
    backbone = build_backbone(args.backbone, family, device=device, dtype=args.dtype)
    return backbone, time.perf_counter() - start


def report(res: dict, out: Path | None) -> None:
    """Print the result's targets as PASS / FAIL and write it to `out` as JSON."""
    print("targets: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in res["targets"].items()))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print(f"wrote {out}")
