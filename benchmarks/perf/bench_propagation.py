"""Key-frame propagation (`vedit.ops.propagation.propagate_keyframes`): seconds per propagated frame, PSNR
and warp error, for several propagation variants side by side, on real clips and synthetic scenes.

    python benchmarks/perf/bench_propagation.py --device cuda --size 512 --frames 21 --key-interval 10 \
        --clips-dir data/clips --variants paper,previous,ebsynth --out propagation.json
    python benchmarks/perf/bench_propagation.py --device cpu --size 128 --frames 21 --clips-dir ../shared/data \
        --variants paper,previous --repeats 1 --out /tmp/prop.json                               # CPU, small

Clips: every *.mp4 and every folder of .jpg/.png frames under `--clips-dir` (e.g. a copy of
../shared/data/clips and davis-mini/JPEGImages/480p; `--clips` picks some by name), the first `--frames`
frames resized to `--size` x `--size`, flow by OpenCV DIS between consecutive frames. Their ground-truth
"stylisation" is a fixed per-frame colour map + posterisation (a per-pixel map: it does not test
correspondence). Plus `--synthetic N` generated scenes (vedit.data.synthetic, seeds 0..N-1) with exact
flow and a stylisation that half is a texture painted on the scene's surfaces (as tests/test_propagation.py).
The propagator sees only the key frames' stylisation.

Per clip and variant: seconds per propagated (non-key) frame (best of `--repeats` after a warm-up run),
PSNR of the propagated frames against the ground truth and of repeating the nearest key frame, and warp
error (mean squared difference, [0, 1] units, of frame t and frame t+1 warped back by the clip's flow over
non-occluded pixels, all consecutive pairs) of the propagated video next to that of the ground truth.

Variants: `paper` (the defaults: EbSynth's mean vote, the released code's temporal selection and Lab
mean/std blend), `previous` (the defaults before issue 10: selective vote, error-tilted weights at
temperature 10, per-pixel lower-error selection, full histogram blend), `ebsynth` (method=rerender_ebsynth:
12 search/vote iterations, style weight 1, pyramid down to 11 px, full patches), `before27` (the guides and
blend before issue 27: grey Laplacian edge guide, bilinear guide warps, masked temporal guide, no Poisson,
the estimator's occlusion), and each of those switches alone (`grey_edges`, `bilinear_guides`, `masked_temporal`,
`no_poisson`, `sundaram_occlusion`, `xy_pos`). Propagation sees occlusion by the editor's default rule, the released code's
(`vedit.ops.warp.rerender_occlusion`), unless a variant says `occlusion: estimator`; warp error keeps the
clip's own occlusion (Sundaram's rule, or the synthetic scene's exact one).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
import torch.nn.functional as F

from vedit.ops.propagation import propagate_keyframes
from vedit.ops.warp import backward_warp, occlusion_masks, rerender_occlusion
from vedit.video import frames_to_uint8, read_video

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {
    "paper": {},
    "previous": {"selective_vote": True, "blend_temperature": 10.0, "selection": "error", "blend": "histogram"},
    "ebsynth": yaml.safe_load((REPO / "conf/method/rerender_ebsynth.yaml").read_text())["params"]["propagation"],
    "before27": {"edge_guide": "luminance", "guide_warp": "bilinear", "temporal_mask": True, "pos_guide": "xy",
                 "poisson": False, "occlusion": "estimator"},
    # one switch of issue 27 each, off the defaults
    "grey_edges": {"edge_guide": "luminance"}, "bilinear_guides": {"guide_warp": "bilinear"},
    "masked_temporal": {"temporal_mask": True}, "no_poisson": {"poisson": False}, "sundaram_occlusion": {"occlusion": "estimator"},
    "xy_pos": {"pos_guide": "xy"},
}


def colour_map_stylise(frames: torch.Tensor) -> torch.Tensor:
    """A fixed per-frame stylisation: JET colour map of the luminance mixed with the colour, posterised."""
    out = []
    for img in frames_to_uint8(frames):
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        mapped = cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        out.append(np.floor((0.6 * mapped + 0.4 * img) / 32) * 32 + 16)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def find_clips(root: Path) -> dict[str, Path]:
    """name -> path: *.mp4 files and folders holding .jpg/.png frames, anywhere under root."""
    clips = {p.stem if p.parent == root else p.parent.name: p for p in sorted(root.rglob("*.mp4"))}
    for folder in sorted({p.parent for ext in ("*.jpg", "*.png") for p in root.rglob(ext)}):
        clips.setdefault(folder.name, folder)
    return clips


def real_clip(path: Path, frames: int, size: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
    from vedit.estimators import dis_flow

    video = read_video(path, max_frames=frames).frames
    video = F.interpolate(video, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    fwd, bwd = dis_flow(video)
    occ_fwd, occ_bwd = occlusion_masks(fwd, bwd)
    side = {"flow_fwd": fwd, "flow_bwd": bwd, "occ_fwd": occ_fwd, "occ_bwd": occ_bwd}
    return video, side, colour_map_stylise(video)


def synthetic_clip(seed: int, frames: int, size: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
    from vedit.data.synthetic import stylised_clip

    return stylised_clip(seed, frames, size)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((10 * torch.log10(1 / ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12))).mean())


def warp_error(video: torch.Tensor, side: dict) -> float:
    warped = backward_warp(video[1:], side["flow_fwd"])
    visible = 1 - side["occ_fwd"]
    return float((((warped - video[:-1]) ** 2).mean(1, keepdim=True) * visible).sum() / visible.sum().clamp_min(1))


def measure(video: torch.Tensor, side: dict, truth: torch.Tensor, keys: list[int], params: dict,
            device: torch.device, repeats: int) -> dict:
    params = dict(params)
    if params.pop("occlusion", "released") == "released":
        occ_fwd, occ_bwd = rerender_occlusion(side["flow_fwd"], side["flow_bwd"])
    else:
        occ_fwd, occ_bwd = side["occ_fwd"], side["occ_bwd"]

    def run() -> torch.Tensor:
        out = propagate_keyframes(video, keys, truth[keys], side["flow_fwd"], side["flow_bwd"], occ_fwd, occ_bwd,
                                  device=device, **params)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    seconds = []
    for _ in range(1 + repeats):  # the first run warms up (allocator, kernels); timed only without repeats
        start = time.perf_counter()
        out = run()
        seconds.append(time.perf_counter() - start)
    seconds = seconds[1:] or seconds
    nonkey = [i for i in range(video.shape[0]) if i not in keys]
    return {"seconds_per_propagated_frame": min(seconds) / max(len(nonkey), 1),
            "psnr_propagated": psnr(out[nonkey], truth[nonkey]), "warp_error": warp_error(out, side)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=21)
    parser.add_argument("--key-interval", type=int, default=10)
    default_dir = REPO / "data" / "clips"
    parser.add_argument("--clips-dir", type=Path, default=default_dir if default_dir.exists() else REPO.parent / "shared" / "data",
                        help="folder searched for *.mp4 and frame folders (default: data/clips in the repo, else ../shared/data)")
    parser.add_argument("--clips", default="", help="comma-separated clip names (default: all found)")
    parser.add_argument("--synthetic", type=int, default=2, help="number of synthetic scenes (exact flow) to add")
    parser.add_argument("--variants", default="paper,previous", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up run (0: time that run)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    device = torch.device(args.device)
    found = find_clips(args.clips_dir) if args.clips_dir.exists() else {}
    names = [c for c in args.clips.split(",") if c] or list(found)
    missing = [c for c in names if c not in found]
    if missing:
        parser.error(f"clips {missing} not found under {args.clips_dir}; found: {sorted(found)}")
    sources = [(name, "DIS", lambda name=name: real_clip(found[name], args.frames, args.size)) for name in names]
    sources += [(f"synthetic-{s}", "exact", lambda s=s: synthetic_clip(s, args.frames, args.size))
                for s in range(args.synthetic)]

    rows = []
    for name, flow, load in sources:
        video, side, truth = load()
        if video.shape[0] < 3:
            print(f"skipping {name}: {video.shape[0]} frames")
            continue
        keys = sorted(set(range(0, video.shape[0], args.key_interval)) | {video.shape[0] - 1})
        nonkey = [i for i in range(video.shape[0]) if i not in keys]
        nearest = truth[[min(keys, key=lambda k: abs(k - i)) for i in range(video.shape[0])]]
        base = {"clip": name, "flow": flow, "frames": int(video.shape[0]), "size": args.size, "key_frames": keys,
                "psnr_nearest_key": psnr(nearest[nonkey], truth[nonkey]), "warp_error_truth": warp_error(truth, side),
                "warp_error_nearest_key": warp_error(nearest, side)}
        for variant in variants:
            row = {**base, "variant": variant, **measure(video, side, truth, keys, VARIANTS[variant], device, args.repeats)}
            rows.append(row)
            print(f"{name:18s} {variant:9s} {row['seconds_per_propagated_frame']:.4f} s/frame  PSNR "
                  f"{row['psnr_propagated']:.2f} (nearest key {row['psnr_nearest_key']:.2f})  warp "
                  f"{row['warp_error'] * 1e3:.3f}e-3 (truth {row['warp_error_truth'] * 1e3:.3f}e-3)", flush=True)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {"device": device_name, "size": args.size, "frames": args.frames, "key_interval": args.key_interval,
              "variants": {v: VARIANTS[v] for v in variants}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\npropagation benchmark on {device_name}: {args.size}x{args.size}, {args.frames} frames, K={args.key_interval}")
    print("| clip (flow) | variant | s / propagated frame | PSNR dB | PSNR nearest key | warp err x1e3 | warp err truth x1e3 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} ({r['flow']}) | {r['variant']} | {r['seconds_per_propagated_frame']:.4f} | "
              f"{r['psnr_propagated']:.2f} | {r['psnr_nearest_key']:.2f} | {r['warp_error'] * 1e3:.3f} | "
              f"{r['warp_error_truth'] * 1e3:.3f} |")
    for variant in variants:
        own = [r for r in rows if r["variant"] == variant]
        if own:
            print(f"mean over {len(own)} clips, {variant}: {np.mean([r['seconds_per_propagated_frame'] for r in own]):.4f} "
                  f"s/frame, PSNR gain over nearest key {np.mean([r['psnr_propagated'] - r['psnr_nearest_key'] for r in own]):.2f} dB, "
                  f"warp error / truth {np.mean([r['warp_error'] / r['warp_error_truth'] for r in own]):.2f}x")


if __name__ == "__main__":
    main()
