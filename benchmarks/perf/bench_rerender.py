"""Rerender-A-Video speed: seconds per key frame, per propagated frame, per frame overall; peak memory.

    python benchmarks/perf/bench_rerender.py --backbone random --device cuda --dtype bfloat16 \
        --frames 21 --size 512 --key-interval 10 --out rerender.json [--peer] [--compile] [--propagation previous]
    python benchmarks/perf/bench_rerender.py --backbone tiny --device cpu --dtype float32 \
        --frames 8 --size 64 --key-interval 4 --peer --out /tmp/rerender.json      # smoke test

The video is a window sliding over a smooth random canvas, with its exact flow given as side data
(the timed edit does not run a flow network). SD 1.5 + Canny ControlNet, 20 DDIM steps,
x0_strength 0.75, guidance 7.5, all constraints on (paper defaults). With `--frames 21
--key-interval 10` the key frames are 0, 10, 20. `--peer` times diffusers'
StableDiffusionControlNetImg2ImgPipeline, built from the same components, on the same key frames
one by one with the same edge maps, strength 0.75 (the same 15 denoising steps, no constraints).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vedit.backbones import build_backbone
from vedit.backbones.compile import compile_blocks
from vedit.editors.rerender import RerenderEditor, key_frame_indices
from vedit.estimators import Estimators
from vedit.task import EditTask
from vedit.video import Video

from bench_propagation import VARIANTS as PROPAGATION_VARIANTS  # noqa: E402  (this script's folder is on sys.path)
from harness import backbone_arguments

SOURCE, TARGET = "a photo of a street", "a street in the style of Van Gogh"


def sliding_video(frames: int, size: int, step: int = 4, seed: int = 0) -> EditTask:
    """A window moving `step` px right per frame over a smooth random canvas, with exact flow."""
    g = torch.Generator().manual_seed(seed)
    width = size + frames * step
    low = torch.rand(1, 3, max(size // 16, 2), max(width // 16, 2), generator=g)
    canvas = F.interpolate(low, size=(size, width), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    video = torch.stack([canvas[:, :, t * step: t * step + size] for t in range(frames)])
    n = frames - 1
    flow_bwd = torch.zeros(n, 2, size, size)
    flow_bwd[:, 0] = step
    xs = torch.arange(size).view(1, 1, 1, size).expand(n, 1, size, size)
    side = {"flow_fwd": -flow_bwd, "flow_bwd": flow_bwd,
            "occ_fwd": (xs < step).float(), "occ_bwd": (xs > size - 1 - step).float()}
    return EditTask(Video(video, fps=24.0, id=f"slide{size}"), SOURCE, TARGET, seed=0, side=side)


def time_peer(bb, task: EditTask, keys: list[int], edges: torch.Tensor, control_scale: float, steps: int) -> dict:
    """diffusers' ControlNet img2img pipeline on the key frames, one per call, strength 0.75."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer, unet=bb.unet, controlnet=bb.controlnet,
        scheduler=bb.scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    frames = task.video.frames

    def one(k: int):
        return pipe(prompt=TARGET, image=frames[k:k + 1], control_image=edges[k:k + 1].expand(-1, 3, -1, -1),
                    strength=0.75, num_inference_steps=steps, guidance_scale=7.5,
                    controlnet_conditioning_scale=control_scale, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    one(keys[0])  # warm-up
    if bb.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bb.device)
        torch.cuda.synchronize(bb.device)
    start = time.perf_counter()
    for k in keys:
        one(k)
    if bb.device.type == "cuda":
        torch.cuda.synchronize(bb.device)
    peak = torch.cuda.max_memory_allocated(bb.device) if bb.device.type == "cuda" else 0
    return {"seconds_per_key_frame": (time.perf_counter() - start) / len(keys), "peak_memory_gib": peak / 2 ** 30}


def main() -> None:
    p = backbone_arguments(__doc__, frames=21)
    p.add_argument("--key-interval", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--peer", action="store_true", help="also time diffusers' ControlNet img2img pipeline")
    p.add_argument("--schedule", choices=("wavefront", "sequential"), default="wavefront")
    p.add_argument("--propagation", choices=tuple(PROPAGATION_VARIANTS), default="paper",
                   help="propagation variant (see bench_propagation.py): the defaults, the pre-issue-10 ones, or EbSynth's")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet's and ControlNet's resnets, feed-forwards and cross-attention")
    args = p.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    bb = build_backbone(args.backbone, "sd15-controlnet", device=args.device, dtype=args.dtype)
    if args.compile:
        compile_blocks(bb.unet, dynamic=True)
        compile_blocks(bb.controlnet, dynamic=True)
    task = sliding_video(args.frames, args.size)
    editor = RerenderEditor(bb, Estimators(), steps=args.steps, key_interval=args.key_interval,
                            schedule=args.schedule, propagation=PROPAGATION_VARIANTS[args.propagation])
    keys = key_frame_indices(args.frames, args.key_interval)

    # Warm-up: two key frames and one propagated frame; with --compile the whole video, so every shape is
    # compiled before timing.
    if args.compile:
        editor.edit(task)
    else:
        RerenderEditor(bb, Estimators(), steps=args.steps, key_interval=2).edit(sliding_video(3, args.size, seed=1))
    start = time.perf_counter()
    result = editor.edit(task)
    wall = time.perf_counter() - start

    n_keys, n_other = len(keys), args.frames - len(keys)
    t = result.timings
    row = {
        "method": f"rerender ({args.schedule}, {result.info['unet_calls']} UNet calls, {args.propagation} propagation)",
        "seconds_per_key_frame": t.get("sampling", 0.0) / n_keys,
        "seconds_per_propagated_frame": t.get("propagation", 0.0) / n_other if n_other else None,
        "seconds_per_frame": wall / args.frames,
        "preprocessing_seconds": t.get("preprocessing", 0.0),
        "peak_memory_gib": result.peak_memory_bytes / 2 ** 30,
    }
    rows = [row]
    if args.peer:
        edges = Estimators().edges(task, kind="canny", low=50, high=100)
        rows.append({"method": "diffusers ControlNet img2img (key frames only)",
                     **time_peer(bb, task, keys, edges, editor.control_scale, args.steps)})

    device_name = torch.cuda.get_device_name(bb.device) if bb.device.type == "cuda" else "cpu"
    record = {"benchmark": "rerender", "backbone": bb.describe(), "device_name": device_name,
              "frames": args.frames, "size": args.size, "key_interval": args.key_interval, "key_frames": keys,
              "steps": args.steps, "x0_strength": editor.x0_strength, "compile": args.compile,
              "schedule": args.schedule, "propagation": args.propagation, "timings": t, "results": rows,
              "targets_h100": {"seconds_per_key_frame": 1.0, "seconds_per_frame_at_k10": 0.25}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))

    print(f"\nrerender benchmark: {args.backbone} {args.dtype} on {device_name}, {args.frames} frames "
          f"{args.size}x{args.size}, K={args.key_interval} (key frames {keys}), {args.steps} steps"
          + (", compiled" if args.compile else ""))
    header = f"{'method':<64} {'s/key frame':>12} {'s/propagated':>13} {'s/frame':>9} {'peak GiB':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        def fmt(key: str, width: int) -> str:
            v = r.get(key)
            return f"{v:>{width}.3f}" if isinstance(v, float) else f"{'-':>{width}}"
        print(f"{r['method']:<64} {fmt('seconds_per_key_frame', 12)} {fmt('seconds_per_propagated_frame', 13)} "
              f"{fmt('seconds_per_frame', 9)} {fmt('peak_memory_gib', 9)}")
    print(f"targets (one H100): <= 1.0 s per key frame, <= 0.25 s per frame at K=10; results in {args.out}")


if __name__ == "__main__":
    main()
