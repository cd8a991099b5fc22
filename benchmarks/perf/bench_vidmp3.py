"""VidMP3 speed: seconds for preprocessing, tuning, inversion and sampling, and peak GPU memory.

    python benchmarks/perf/bench_vidmp3.py --backbone random --device cuda --dtype bfloat16 \
        --frames 16 --size 512 --tune-steps 100 --steps 50 --out vidmp3.json [--peer] [--grad-ckpt]
    python benchmarks/perf/bench_vidmp3.py --backbone random --device cuda --dtype bfloat16 \
        --frames 80 --size 512 --out vidmp3_80.json        # a whole video in 16-frame windows, overlap 4
    python benchmarks/perf/bench_vidmp3.py --backbone tiny --device cpu --dtype float32 \
        --frames 20 --size 64 --tune-steps 2 --steps 3 --peer --out /tmp/vidmp3.json    # smoke test

Full-size SD 1.5 + AnimateDiff v1-5-2 motion modules with random weights (`--backbone random`).
The clip is random smooth frames with a square subject moving across them; its mask, depth and
correspondence are given as side data, so preprocessing times the VAE encoding and the MotionGuide
input, not the SD-DINO / depth estimators (the paper's ~100 s for those are a separate cost).
Tuning, inversion and sampling see the same frames: a clip of up to `--window` frames whole, a longer
video in overlapping windows (`--window`, `--overlap`); `seconds_per_frame` divides by `--frames`.

`--peer` times diffusers' AnimateDiffVideoToVideoPipeline in the same run, built from the same
components (the editor's inflated UNet with diffusers' own attention processors), on the same
frames, target prompt, guidance 7.5 and strength 1.0 (`--peer-strength`): with 1.0 it runs all
`--steps` denoising steps, the same work as VidMP3's sampling phase (plus a VAE encoding).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vedit.backbones import build_backbone
from vedit.editors.vidmp3 import VidMP3Editor
from vedit.task import EditTask
from vedit.video import Video

from harness import backbone_arguments, report  # this folder is on sys.path when run as a script

SOURCE, TARGET = "a silver jeep driving on a road", "a bulldog on roller blades on a road"
PHASES = ("preprocessing", "tuning", "inversion", "sampling")


def bench_clip(frames: int, size: int, generator: torch.Generator) -> EditTask:
    """Smooth random frames and a square subject translating across them, with exact side data."""
    low = torch.rand(frames, 3, max(size // 16, 2), max(size // 16, 2), generator=generator)
    video = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    half, step = size // 6, size / (3 * max(frames - 1, 1))
    masks, depths, corrs = [], [], []
    for t in range(frames):
        cx, cy = size / 3 + step * t, size / 2
        m = ((xs - cx).abs() <= half) & ((ys - cy).abs() <= half)
        video[t, :, m] = torch.tensor([0.8, 0.1, 0.1])[:, None]
        masks.append(m.float()[None])
        depths.append(torch.where(m, 0.6 + 0.01 * t, 0.1)[None])
        corr = torch.stack([xs - step * t, ys])
        corrs.append(torch.where(m[None], corr, torch.full_like(corr, float("nan"))))
    side = {"mask": torch.stack(masks), "depth": torch.stack(depths), "correspondence": torch.stack(corrs)}
    return EditTask(Video(video, 8.0, "bench"), SOURCE, TARGET, seed=0, side=side)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_peer(editor: VidMP3Editor, task: EditTask, steps: int, strength: float) -> dict:
    """diffusers' AnimateDiff video-to-video pipeline with the same components and frames."""
    from diffusers import AnimateDiffVideoToVideoPipeline

    bb = editor.backbone
    pipe = AnimateDiffVideoToVideoPipeline(vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer,
                                           unet=editor.unet, motion_adapter=bb.motion_adapter,
                                           scheduler=bb.scheduler())
    pipe.set_progress_bar_config(disable=True)
    video = task.video.frames[None]

    def run(n_steps: int):
        return pipe(prompt=TARGET, video=video, strength=strength, num_inference_steps=n_steps,
                    guidance_scale=7.5, output_type="pt", generator=torch.Generator().manual_seed(0)).frames

    run(2)  # warm-up
    if bb.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bb.device)
    sync(bb.device)
    start = time.perf_counter()
    out = run(steps)
    sync(bb.device)
    seconds = time.perf_counter() - start
    assert torch.isfinite(out).all()
    peak = torch.cuda.max_memory_allocated(bb.device) if bb.device.type == "cuda" else 0
    return {"seconds": seconds, "peak_gb": peak / 2**30, "strength": strength,
            "denoising_steps": min(int(steps * strength), steps), "guidance_scale": 7.5}


def main() -> None:
    p = backbone_arguments(__doc__, frames=16)
    p.add_argument("--tune-steps", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--overlap", type=int, default=4)
    p.add_argument("--grad-ckpt", action="store_true", help="tune with gradient checkpointing (less memory)")
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--peer", action="store_true", help="also time diffusers' AnimateDiffVideoToVideoPipeline")
    p.add_argument("--peer-strength", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    bb = build_backbone(args.backbone, "sd15-animatediff", device=device, dtype=args.dtype)
    editor = VidMP3Editor(bb, steps=args.steps, tune_steps=args.tune_steps, window=args.window,
                          window_overlap=args.overlap, gradient_checkpointing=args.grad_ckpt,
                          vae_batch=args.vae_batch)
    editor.unet  # builds the inflated UNet
    sync(device)
    build_s = time.perf_counter() - start
    task = bench_clip(args.frames, args.size, torch.Generator().manual_seed(0))

    # Warm-up on the same shapes with 2 tuning iterations and 2 steps (kernels, cudnn autotuning).
    editor.tune_steps, editor.steps = 2, 2
    editor.edit(task)
    editor.tune_steps, editor.steps = args.tune_steps, args.steps
    result = editor.edit(task)
    assert torch.isfinite(result.frames).all()
    timings = {k: result.timings.get(k, 0.0) for k in PHASES}
    total = sum(timings.values())
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backbone": args.backbone, "dtype": args.dtype, "frames": args.frames, "size": args.size,
        "tune_steps": args.tune_steps, "windows": result.info["windows"], "steps": args.steps,
        "gradient_checkpointing": args.grad_ckpt, "build_s": build_s,
        "seconds": {**timings, "total": total}, "seconds_per_frame": total / args.frames,
        "s_per_iteration": {"tuning": timings["tuning"] / max(args.tune_steps, 1),
                            "inversion": timings["inversion"] / args.steps,
                            "sampling": timings["sampling"] / args.steps},
        "peak_gb": result.peak_memory_bytes / 2**30,
        "tune_loss": [result.info["tune_loss_first"], result.info["tune_loss_last"]],
    }
    if args.peer:
        res["peer_animatediff_v2v"] = time_peer(editor, task, args.steps, args.peer_strength)
    res["targets"] = {"total_le_60_s": total <= 60.0} if len(res["windows"]) == 1 else {}
    res["targets"]["peak_lt_40_gb"] = res["peak_gb"] < 40
    if args.peer:
        res["targets"]["sampling_not_slower_than_peer"] = timings["sampling"] <= res["peer_animatediff_v2v"]["seconds"]

    print(f"\nvidmp3 | {res['device']} | {args.backbone} {args.dtype} | {args.frames} frames {args.size}px | "
          f"tune {args.tune_steps} it | {len(res['windows'])} window(s) | {args.steps} DDIM steps | "
          f"grad ckpt {'on' if res['gradient_checkpointing'] else 'off'}")
    print(f"{'phase':36s} {'seconds':>10s} {'s/iter':>10s}")
    for name in PHASES:
        per = res["s_per_iteration"].get(name)
        print(f"{name:36s} {timings[name]:10.3f} {'' if per is None else f'{per:10.4f}':>10s}")
    print(f"{'total':36s} {total:10.3f}")
    print(f"{'seconds per frame':36s} {res['seconds_per_frame']:10.3f}")
    if args.peer:
        peer = res["peer_animatediff_v2v"]
        print(f"{'diffusers AnimateDiff v2v (peer)':36s} {peer['seconds']:10.3f} "
              f"{peer['seconds'] / max(peer['denoising_steps'], 1):10.4f}")
    print(f"{'peak GPU memory (GB)':36s} {res['peak_gb']:10.2f}")
    if args.peer:
        print(f"{'peer peak GPU memory (GB)':36s} {res['peer_animatediff_v2v']['peak_gb']:10.2f}")
    report(res, args.out)


if __name__ == "__main__":
    main()
