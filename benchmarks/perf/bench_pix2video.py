"""Pix2Video speed: seconds per frame (inversion, sampling, total) and peak GPU memory.

    python benchmarks/perf/bench_pix2video.py --backbone random --device cuda --dtype bfloat16 \
        --frames 48 --size 512 --steps 50 --out pix2video.json [--compile] [--peer]
    python benchmarks/perf/bench_pix2video.py --backbone tiny --device cpu --dtype float32 \
        --frames 4 --size 64 --steps 3 --peer --out /tmp/p2v.json        # smoke test

The video is random smooth frames with random smooth depth (depth given as side data: the timed
edit does not run DPT; DPT on the same frames is timed separately). `--peer` times diffusers'
StableDiffusionDepth2ImgPipeline, built from the same components, editing the same frames one by
one with the same depth maps, strength 1.0 (all `--steps` denoising steps, as Pix2Video samples
all steps from the inverted noise), guidance 7.5.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vedit.backbones.compile import compile_blocks
from vedit.editors.pix2video import SCHEDULES, Pix2VideoEditor
from vedit.task import EditTask
from vedit.video import Video

from harness import backbone_arguments, build_timed, report  # this folder is on sys.path when run as a script

SOURCE, TARGET = "a black swan swimming in a river", "a white duck swimming in a river"


def smooth_random(shape: tuple[int, ...], size: int, generator: torch.Generator) -> torch.Tensor:
    """Random images upsampled from 1/16 resolution: image-like low frequencies, in [0, 1]."""
    low = torch.rand(*shape[:2], max(size // 16, 2), max(size // 16, 2), generator=generator)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_depth_estimator(bb, frames: torch.Tensor, batch: int) -> float:
    """Seconds per frame of the backbone's DPT on the frames (resized to its input size)."""
    model = bb.depth_estimator
    side = model.config.image_size
    with torch.no_grad():
        x = F.interpolate(frames[:batch], size=(side, side), mode="bicubic").to(bb.device) * 2 - 1
        model(pixel_values=x)  # warm-up
        sync(bb.device)
        start = time.perf_counter()
        for chunk in frames.split(batch):
            x = F.interpolate(chunk, size=(side, side), mode="bicubic").to(bb.device) * 2 - 1
            model(pixel_values=x)
        sync(bb.device)
    return (time.perf_counter() - start) / frames.shape[0]


def time_peer(bb, frames: torch.Tensor, depth: torch.Tensor, steps: int) -> dict:
    """diffusers' depth2img pipeline, one frame per call, the same depth maps, strength 1.0."""
    from diffusers import StableDiffusionDepth2ImgPipeline
    from transformers import DPTImageProcessor

    side = bb.depth_estimator.config.image_size
    pipe = StableDiffusionDepth2ImgPipeline(
        vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer, unet=bb.unet,
        scheduler=bb.scheduler(), depth_estimator=bb.depth_estimator,
        feature_extractor=DPTImageProcessor(size={"height": side, "width": side}),
    )
    pipe.set_progress_bar_config(disable=True)

    def one(f: int):
        return pipe(prompt=TARGET, image=frames[f:f + 1], depth_map=depth[f], strength=1.0,
                    num_inference_steps=steps, guidance_scale=7.5, output_type="pt",
                    generator=torch.Generator().manual_seed(f)).images

    one(0)  # warm-up
    if bb.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bb.device)
    sync(bb.device)
    start = time.perf_counter()
    for f in range(frames.shape[0]):
        out = one(f)
    sync(bb.device)
    seconds = time.perf_counter() - start
    assert torch.isfinite(out).all()
    peak = torch.cuda.max_memory_allocated(bb.device) if bb.device.type == "cuda" else 0
    return {"s_per_frame": seconds / frames.shape[0], "peak_gb": peak / 2**30,
            "strength": 1.0, "steps": steps, "guidance_scale": 7.5}


def main() -> None:
    p = backbone_arguments(__doc__, frames=48)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--inversion-batch-size", type=int, default=16)
    p.add_argument("--sampling-batch-size", type=int, default=50)
    p.add_argument("--schedule", choices=SCHEDULES, default="lockstep")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet's resnets, feed-forwards and cross-attention (dynamic shapes)")
    p.add_argument("--peer", action="store_true", help="also time diffusers' StableDiffusionDepth2ImgPipeline")
    p.add_argument("--peer-frames", type=int, default=None,
                   help="time the peer on the first N frames only (its cost per frame does not depend on N)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    bb, build_s = build_timed(args, "sd2-depth")
    device = bb.device
    compiled = compile_blocks(bb.unet, dynamic=True) if args.compile else 0

    g = torch.Generator().manual_seed(0)
    frames = smooth_random((args.frames, 3), args.size, g)
    depth = smooth_random((args.frames, 1), args.size, g)
    task = EditTask(Video(frames, 24.0, "bench"), SOURCE, TARGET, side={"depth": depth})
    editor = Pix2VideoEditor(bb, steps=args.steps, schedule=args.schedule,
                             inversion_batch_size=args.inversion_batch_size,
                             sampling_batch_size=args.sampling_batch_size)

    # Warm-up (kernels, cuDNN graphs; with --compile every batch size of the schedule).
    warm = task if args.compile else EditTask(Video(frames[:3], 24.0, "warmup"), SOURCE, TARGET,
                                             side={"depth": depth[:3]})
    editor.edit(warm)
    editor.warmup(tuple(task.video.size), args.frames)
    print(f"backbone built in {build_s:.1f}s; warm-up done", flush=True)
    result = editor.edit(task)
    print(f"edit of {args.frames} frames: {result.timings}", flush=True)
    assert torch.isfinite(result.frames).all()
    n = args.frames
    timings = result.timings
    total = sum(timings.values())
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backbone": args.backbone, "dtype": args.dtype, "frames": n, "size": args.size, "steps": args.steps,
        "schedule": args.schedule, "compile": args.compile, "compiled_modules": compiled, "inversion_batch_size": args.inversion_batch_size,
        "sampling_batch_size": args.sampling_batch_size, "backbone_build_s": build_s,
        "unet_calls_sampling": result.info["unet_calls"],
        "seconds": timings,
        "s_per_frame": {"preprocessing": timings.get("preprocessing", 0.0) / n,
                        "inversion": timings["inversion"] / n, "sampling": timings["sampling"] / n,
                        "total": total / n},
        "peak_gb": result.peak_memory_bytes / 2**30,
        "depth_dpt_s_per_frame": time_depth_estimator(bb, frames, args.inversion_batch_size),
    }
    if args.peer:
        m = args.peer_frames or n
        res["peer_depth2img"] = {**time_peer(bb, frames[:m], depth[:m], args.steps), "frames": m}
    res["targets"] = {
        "total_le_0.5_s_per_frame": res["s_per_frame"]["total"] <= 0.5,
        "peak_lt_24_gb": res["peak_gb"] < 24,
        **({"sampling_faster_than_peer": res["s_per_frame"]["sampling"] < res["peer_depth2img"]["s_per_frame"]}
           if args.peer else {}),
    }

    rows = [("inversion", res["s_per_frame"]["inversion"]), ("sampling (incl. decode)", res["s_per_frame"]["sampling"]),
            ("total (incl. depth prep, text)", res["s_per_frame"]["total"]),
            ("DPT depth (separate)", res["depth_dpt_s_per_frame"])]
    if args.peer:
        rows.append(("diffusers depth2img per frame", res["peer_depth2img"]["s_per_frame"]))
    print(f"\npix2video | {res['device']} | {args.backbone} {args.dtype} | {n} frames {args.size}px "
          f"{args.steps} steps | {args.schedule}{' +compile' if args.compile else ''}")
    print(f"{'phase':34s} {'s/frame':>10s}")
    for name, value in rows:
        print(f"{name:34s} {value:10.4f}")
    print(f"{'peak GPU memory (GB)':34s} {res['peak_gb']:10.2f}")
    print(f"{'UNet calls (sampling)':34s} {res['unet_calls_sampling']:10d}")
    report(res, args.out)


if __name__ == "__main__":
    main()
