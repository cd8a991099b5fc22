"""FateZero speed: seconds per frame (inversion, sampling, total) and peak GPU memory, ours and the
released code's structure on the same frames and components.

    python benchmarks/perf/bench_fatezero.py --backbone random --device cuda --dtype float16 \
        --frames 8 --size 512 --steps 50 --peer --out fatezero.json
    python benchmarks/perf/bench_fatezero.py --backbone tiny --device cpu --dtype float32 \
        --frames 4 --size 64 --steps 2 --peer                                 # smoke test

`--peer` runs the released structure (ChenyangQiQi/FateZero attention_util / attention_register):
the inversion computes every attention layer with at most 32x32 query tokens explicitly
(softmax(Q K^T) V, all heads in one batched matmul) and keeps each one's probabilities for every step,
those with exactly 32x32 tokens copied to the CPU, the rest on the GPU; editing runs [uncond; cond]
rows and its conditional rows read the stored maps back (self-attention: stored probabilities times
its values; cross-attention: prompt-to-prompt on the stored and its own probabilities). Everything
else (spatial-temporal keys of the middle frame, SDPA in the other layers, DDIM) is ours, so the
difference is the cost of storing maps against recomputing them in the editing call. The released
store holds f * heads * 1024^2 values per 32x32 self-attention layer and step: at 50 frames, 50 steps
and 5 such layers about 210 GB in float16, so the peer runs on `--peer-frames` (default 8, the released
configs' clip length) and per-frame numbers are compared.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from vedit.editors.fatezero import FateZeroEditor, _level
from vedit.ops.attention import attend, attention_processors
from vedit.ops.ddim import DDIM, classifier_free_guidance
from vedit.task import EditTask
from vedit.video import Video

from bench_pix2video import smooth_random  # this folder is on sys.path when run as a script
from harness import backbone_arguments, build_timed, report

SOURCE = "a silver jeep driving down a curvy road in the countryside"
TARGET = "watercolor painting of a silver jeep driving down a curvy road in the countryside"
STORE_LIMIT = 32 ** 2


class _ReleasedProcessor:
    """Explicit attention in the layers the released store covers; store (inversion) or read (editing)."""

    def __init__(self, name: str, peer: "ReleasedStructure", cross: bool, kv_frames) -> None:
        self.name, self.peer, self.cross, self.kv_frames = name, peer, cross, kv_frames

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        p, f = self.peer, self.peer.frames
        x = hidden_states
        if self.cross:
            ctx = encoder_hidden_states
        elif self.kv_frames is None:
            ctx = x
        else:  # the middle frame's tokens for every frame
            ctx = x.unflatten(0, (-1, f))[:, (f - 1) // 2].repeat_interleave(f, dim=0)
        if x.shape[1] > STORE_LIMIT:
            return attend(attn, x, ctx, ctx)
        h = attn.heads
        q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2).flatten(0, 1)
                   for t in (attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)))
        probs = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype, device=q.device),
                              q, k.transpose(1, 2), beta=0, alpha=attn.scale).softmax(-1)
        probs = probs.unflatten(0, (-1, h))  # (rows, heads, N, M)
        if p.mode == "store":
            p.step_store.append(probs.cpu() if x.shape[1] == STORE_LIMIT else probs.clone())
        elif p.fuse_self or (self.cross and p.cross_alpha > 0):
            base = p.stored[p.step][p.position].to(probs.device, probs.dtype)
            p.position += 1
            cond = probs[f:]
            if self.cross:
                a = p.alphas.to(cond)
                mixed = base[..., p.mapper.to(cond.device)] * a + cond * (1 - a)
                cond = p.cross_alpha * mixed + (1 - p.cross_alpha) * cond
            else:
                cond = base
            probs = torch.cat([probs[:f], cond])
        else:
            p.position += 1
        out = torch.bmm(probs.flatten(0, 1), v).unflatten(0, (-1, h)).transpose(1, 2).flatten(2)
        return attn.to_out[1](attn.to_out[0](out))


class ReleasedStructure(FateZeroEditor):
    """FateZero with the released code's attention store (see the module docstring)."""

    def _released_processors(self):
        procs = {}
        for name in self.self_layers:
            kv = self.st_attention if _level(name, self.levels) >= self.st_attention_from_level else None
            procs[name] = _ReleasedProcessor(name, self, False, kv)
            procs[name[:-1] + "2"] = _ReleasedProcessor(name[:-1] + "2", self, True, None)
        return attention_processors(self.backbone.unet, procs)

    @torch.no_grad()
    def invert(self, x0, source_embeds):
        ddim = DDIM(self.backbone.scheduler(), self.steps)
        self.frames, self.mode, self.stored = x0.shape[0], "store", {}
        emb = source_embeds.expand(x0.shape[0], -1, -1)

        def eps(x, t, i):
            self.step_store = []
            out = self._unet(x, t, emb)
            self.stored[i] = self.step_store
            return out

        with self._released_processors():
            trajectory = torch.stack(ddim.invert(x0, eps))
        return trajectory, None

    @torch.no_grad()
    def sample(self, trajectory, maps, embeds, controls):
        ddim = DDIM(self.backbone.scheduler(), self.steps)
        f = trajectory.shape[1]
        self.mode, self.mapper, self.alphas = "edit", controls["mapper"], controls["alphas"]
        x = trajectory[0].clone()
        emb = embeds[1:].repeat_interleave(f, dim=0)
        with self._released_processors():
            for i in range(self.steps):
                self.step, self.position = i, 0
                self.fuse_self, self.cross_alpha = i in self.self_window(), float(i in self.cross_window())
                out = self._unet(torch.cat([x, x]), ddim.timesteps[i], emb)
                x = ddim.step(x, classifier_free_guidance(out, self.guidance_scale), i)[0]
        return x


def timed(editor, task, device) -> tuple[dict, float, int]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = editor.edit(task)
    return result.timings, time.perf_counter() - start, result.peak_memory_bytes


def main() -> None:
    p = backbone_arguments(__doc__, frames=50)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--peer", action="store_true", help="also time the released code's structure")
    p.add_argument("--peer-frames", type=int, default=8, help="frames for the peer and the like-for-like ours")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    bb, build_s = build_timed(args, "sd14")
    device = bb.device
    frames = smooth_random((args.frames, 3), args.size, torch.Generator().manual_seed(0))
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "backbone": args.backbone, "dtype": args.dtype, "size": args.size, "steps": args.steps,
           "backbone_build_s": build_s, "runs": {}}
    runs = [("ours", FateZeroEditor, args.frames)]
    if args.peer:
        runs += [("ours_peer_frames", FateZeroEditor, args.peer_frames), ("released_structure", ReleasedStructure,
                                                                          args.peer_frames)]
    for label, cls, n in runs:
        task = EditTask(Video(frames[:n], 24.0, f"bench-{n}"), SOURCE, TARGET)
        cls(bb, steps=2).edit(task)  # warm-up on the same shapes
        timings, wall, peak = timed(cls(bb, steps=args.steps), task, device)
        res["runs"][label] = {"frames": n, "seconds": timings, "wall_s": wall, "peak_gb": peak / 2**30,
                              "s_per_frame": {k: v / n for k, v in timings.items()} | {"total": wall / n}}
        print(f"{label:20s} {n:4d} frames  {wall / n:8.4f} s/frame  peak {peak / 2**30:6.2f} GB  {timings}", flush=True)
    if args.peer:
        speedup = res["runs"]["released_structure"]["wall_s"] / res["runs"]["ours_peer_frames"]["wall_s"]
        res["speedup_vs_released_structure"] = speedup
        print(f"speed-up over the released structure at {args.peer_frames} frames: {speedup:.2f}x")
        res["targets"] = {"speedup_ge_3": speedup >= 3.0}
    else:
        res["targets"] = {}
    report(res, args.out)


if __name__ == "__main__":
    main()
