"""Does a channels-last memory format pay for Rerender's sampling? Same process, alternating, same frames?

    python benchmarks/perf/bench_channels_last.py --frames 16 --repeats 3 --out channels_last.json

Two `random` backbones built with the same seed, one left in PyTorch's default layout (NCHW), one with its
UNet, ControlNet and VAE in channels-last (NHWC, cuDNN's native layout on Hopper: no layout conversion
around each convolution). One Rerender editor per backbone (defaults), each warmed up as `vedit.run` does;
then edits alternate between them on bench_rerender.py's sliding video. Reports each edit's phase seconds,
the median per layout, and the largest difference between the two layouts' frames.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from bench_rerender import sliding_video
from harness import backbone_arguments, build_timed


def main() -> None:
    from vedit.editors.rerender import RerenderEditor
    from vedit.estimators import Estimators

    p = backbone_arguments(__doc__, frames=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    task = sliding_video(args.frames, args.size)
    editors = {}
    for layout in ("nchw", "channels_last"):
        bb, _ = build_timed(args, "sd15-controlnet")
        if layout == "channels_last":
            for module in (bb.unet, bb.controlnet, bb.vae):
                module.to(memory_format=torch.channels_last)
        editors[layout] = RerenderEditor(bb, Estimators())
        editors[layout].warmup((args.size, args.size), args.frames)
    runs = {layout: [] for layout in editors}
    frames = {}
    for _ in range(args.repeats):
        for layout, editor in editors.items():
            result = editor.edit(task)
            runs[layout].append(result.timings)
            frames[layout] = result.frames
            print(layout, json.dumps(result.timings), flush=True)
    median = {layout: {k: statistics.median(t[k] for t in ts) for k in ts[0]} for layout, ts in runs.items()}
    record = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "frames": args.frames, "size": args.size, "dtype": args.dtype, "runs": runs, "median": median,
              "max_abs_frame_difference": (frames["nchw"] - frames["channels_last"]).abs().max().item(),
              "mean_abs_frame_difference": (frames["nchw"] - frames["channels_last"]).abs().mean().item()}
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
