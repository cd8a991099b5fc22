"""TokenFlow speed: seconds per frame (inversion, sampling, total) and peak GPU memory.

    python benchmarks/perf/bench_tokenflow.py --backbone random --device cuda --dtype bfloat16 \
        --frames 40 --size 512 --steps 50 --peer --out tokenflow.json [--compile]
    python benchmarks/perf/bench_tokenflow.py --backbone tiny --device cpu --dtype float32 \
        --frames 10 --size 64 --steps 2 --peer --out /tmp/tf.json            # smoke test

The video is random smooth frames. The timed edit is the whole method: VAE encoding, DDIM inversion
of every frame (the method's default 500 steps, the released preprocess), PnP sampling with key frames and token
propagation, VAE decoding; the target is <= 1.0 s per frame in total.

`--peer` runs the released code's structure (omerbt/TokenFlow run_tokenflow_pnp.py) on the same
frames with the same diffusers components: per step one key-frame call, then one UNet call per
batch of `batch_size` frames (not all frames at once), attention as the released processor computes
it (per head, explicit softmax(QK^T) V, no fused kernel), the released key-frame pairing (batch b with
b-1). Arithmetic is otherwise the same, so the difference is the cost of batching and SDPA. Its
inversion also runs in batches of 8 frames (the released preprocess inverts 40 at once, with
diffusers' default SDPA attention, like ours): compare sampling for the method's structure.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import vedit.editors.tokenflow as tokenflow
from vedit.backbones.compile import compile_blocks
from vedit.task import EditTask
from vedit.video import Video

from bench_pix2video import smooth_random  # this folder is on sys.path when run as a script
from harness import backbone_arguments, build_timed, report

SOURCE, TARGET = "a woman running", "a marble sculpture of a woman running, Venus de Milo"


def released_attend(attn, hidden_states, key_input, value_input):
    """The released processor's attention arithmetic: a loop over heads, softmax(Q K^T * scale) V."""
    b = hidden_states.shape[0]
    q, k, v = attn.to_q(hidden_states), attn.to_k(key_input), attn.to_v(value_input)
    h = attn.heads
    q, k, v = (t.view(b, t.shape[1], h, -1) for t in (q, k, v))
    out = torch.stack([torch.bmm((torch.bmm(q[:, :, j], k[:, :, j].transpose(1, 2)) * attn.scale).softmax(-1),
                                 v[:, :, j]) for j in range(h)], dim=2)
    return attn.to_out[1](attn.to_out[0](out.flatten(2)))


def timed_edit(editor, task, device) -> tuple[dict, float, int, dict]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = editor.edit(task)
    wall = time.perf_counter() - start
    # random weights in float16 may overflow; the timing stands either way, the record says so
    info = {**result.info, "finite": bool(torch.isfinite(result.frames).all())}
    return result.timings, wall, result.peak_memory_bytes, info


def main() -> None:
    p = backbone_arguments(__doc__, frames=40)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--unet-batch", type=int, default=None, help="frames per propagation/inversion UNet call")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet's resnets, feed-forwards and cross-attention (dynamic shapes)")
    p.add_argument("--peer", action="store_true", help="also time the released code's structure")
    p.add_argument("--peer-frames", type=int, default=None, help="time the peer on the first N frames only")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    bb, build_s = build_timed(args, "sd21")
    device = bb.device
    compiled = compile_blocks(bb.unet, dynamic=True) if args.compile else 0
    frames = smooth_random((args.frames, 3), args.size, torch.Generator().manual_seed(0))
    task = EditTask(Video(frames, 24.0, "bench"), SOURCE, TARGET)
    n = args.frames

    # Warm-up on the same shapes with 2 steps (kernels, allocator, cudnn autotuning).
    tokenflow.TokenFlowEditor(bb, steps=2, inversion_steps=None, unet_batch=args.unet_batch).edit(task)
    print(f"backbone built in {build_s:.1f}s; warm-up done", flush=True)
    editor = tokenflow.TokenFlowEditor(bb, steps=args.steps, unet_batch=args.unet_batch)
    timings, wall, peak, info = timed_edit(editor, task, device)
    total = sum(timings.values())
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backbone": args.backbone, "dtype": args.dtype, "frames": n, "size": args.size, "steps": args.steps,
        "unet_batch": args.unet_batch, "compile": args.compile, "compiled_modules": compiled,
        "backbone_build_s": build_s, "unet_calls_sampling": info["unet_calls"], "finite": info["finite"],
        "seconds": timings, "wall_s": wall,
        "s_per_frame": {k: v / n for k, v in timings.items()} | {"total": total / n},
        "peak_gb": peak / 2**30,
    }
    if args.peer:
        m = args.peer_frames or n
        peer_task = EditTask(Video(frames[:m], 24.0, "bench-peer"), SOURCE, TARGET)
        sdpa_attend, tokenflow.attend = tokenflow.attend, released_attend  # looked up at call time
        try:
            peer = tokenflow.TokenFlowEditor(bb, steps=args.steps, unet_batch=8, pairing="released")
            tokenflow.TokenFlowEditor(bb, steps=2, inversion_steps=None, unet_batch=8).edit(peer_task)  # warm-up
            p_timings, p_wall, p_peak, p_info = timed_edit(peer, peer_task, device)
        finally:
            tokenflow.attend = sdpa_attend
        res["peer_released_structure"] = {
            "frames": m, "seconds": p_timings, "unet_calls_sampling": p_info["unet_calls"], "finite": p_info["finite"],
            "s_per_frame": {k: v / m for k, v in p_timings.items()} | {"total": sum(p_timings.values()) / m},
            "peak_gb": p_peak / 2**30,
        }
    res["targets"] = {"total_le_1.0_s_per_frame": res["s_per_frame"]["total"] <= 1.0}

    print(f"\ntokenflow | {res['device']} | {args.backbone} {args.dtype} | {n} frames {args.size}px {args.steps} steps"
          f"{' +compile' if args.compile else ''}")
    print(f"{'phase':30s} {'s/frame':>10s}" + (f" {'peer s/frame':>13s}" if args.peer else ""))
    for phase in ("preprocessing", "inversion", "sampling", "total"):
        row = f"{phase:30s} {res['s_per_frame'].get(phase, 0.0):10.4f}"
        if args.peer:
            row += f" {res['peer_released_structure']['s_per_frame'].get(phase, 0.0):13.4f}"
        print(row)
    print(f"{'peak GPU memory (GB)':30s} {res['peak_gb']:10.2f}"
          + (f" {res['peer_released_structure']['peak_gb']:13.2f}" if args.peer else ""))
    print(f"{'UNet calls (sampling)':30s} {res['unet_calls_sampling']:10d}"
          + (f" {res['peer_released_structure']['unet_calls_sampling']:13d}" if args.peer else ""))
    report(res, args.out)


if __name__ == "__main__":
    main()
