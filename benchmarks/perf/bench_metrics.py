"""Seconds per frame of a metric set (conf/metrics/<set>.yaml) on one edit, with the real architectures.

    python benchmarks/perf/bench_metrics.py --device cuda --set default --frames 50 --size 512 --out outputs/bench_metrics_default.json
    python benchmarks/perf/bench_metrics.py --device cuda --set v2vbench --frames 50 --size 512 --out outputs/bench_metrics_v2vbench.json
    python benchmarks/perf/bench_metrics.py --device cpu --set v2vbench --frames 6 --size 64 --tiny --out /tmp/m.json   # smoke test

Weights do not change compute: CLIP ViT-L/14 (QuickGELU, as load_clip builds it), PickScore's CLIP
ViT-H/14, DINOv2-base, the aesthetic head, ViCLIP-L/14 (on 8 of the frames, as V2VBench) and DOVER
(`dover`, model "random") are built with random weights at their real sizes;
RAFT uses the torch hub weights when cached, else random weights. Two passes over the set: `cold`
(the source video's flow is estimated, as for the first edit of a video) and `warm` (the source flow
is in the cache, as for every later edit of that video; a new edited tensor, so CLIP encodes again).
Metrics run in the set's order, so the first CLIP metric carries the one image encoding the CLIP
metrics share. Reports seconds per metric, the set's seconds per frame and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
import yaml

CONF = Path(__file__).resolve().parents[2] / "conf" / "metrics"


def metric_set(name: str) -> dict:
    """names, options and clip settings of a preset, its `defaults: [default]` merged (no Hydra needed)."""
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    if "default" in (cfg.get("defaults") or []):
        base = yaml.safe_load((CONF / "default.yaml").read_text())
        cfg = {**base, **cfg, "clip": {**base["clip"], **(cfg.get("clip") or {})},
               "options": {**(base.get("options") or {}), **(cfg.get("options") or {})}}
    return cfg


def build_models(tiny: bool, clip_cfg: dict, device: torch.device) -> dict:
    from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

    from vedit.backbones.tokenizer import clip_tokenizer
    from vedit.metrics.aesthetic import aesthetic_head
    from vedit.metrics.clip_models import load_clip, tiny_clip
    from vedit.metrics.dino import IMAGENET_MEAN, IMAGENET_STD, DinoEncoder, tiny_dino
    from vedit.metrics.pick_score import HFClipScorer, tiny_pickscore
    from vedit.metrics.preprocess import ImagePreprocess
    from vedit.metrics.viclip import random_viclip, tiny_viclip

    prep = {"preprocess": clip_cfg.get("preprocess", "open_clip"), "square": clip_cfg.get("square")}
    if tiny:
        clip = tiny_clip(device=device, **prep)
        return {"clip": clip, "pick": tiny_pickscore(device=device), "dino": tiny_dino(device=device),
                "head": aesthetic_head(clip.model.text_projection.shape[1]), "viclip": tiny_viclip(device=device),
                "dover": "tiny", "device": device}
    clip = load_clip("ViT-L-14", "openai", device=device, load_weights=False, **prep)
    h14 = CLIPConfig(  # laion/CLIP-ViT-H-14-laion2B-s32B-b79K's architecture, as PickScore_v1 fine-tunes it
        text_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                     "num_attention_heads": 16, "hidden_act": "gelu"},
        vision_config={"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                       "num_attention_heads": 16, "patch_size": 14, "image_size": 224, "hidden_act": "gelu"},
        projection_dim=1024)
    clip_prep = ImagePreprocess(224, (224, 224), (0.48145466, 0.4578275, 0.40821073),
                                (0.26862954, 0.26130258, 0.27577711))
    pick = HFClipScorer(CLIPModel(h14), clip_tokenizer(), clip_prep, name="random PickScore (ViT-H/14)", device=device)
    dino = DinoEncoder(Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                                patch_size=14, image_size=518)),
                       ImagePreprocess(256, (224, 224), IMAGENET_MEAN, IMAGENET_STD), name="random dinov2-base",
                       device=device)
    return {"clip": clip, "pick": pick, "dino": dino, "head": aesthetic_head(768),
            "viclip": random_viclip(device=device), "dover": "random", "device": device}


def instantiate(name: str, options: dict, models: dict, estimators, frames: int = 24):
    import inspect

    from vedit.registry import METRICS

    cls = METRICS.get(name)
    params = inspect.signature(cls).parameters
    kwargs = dict(options.get(name) or {})
    if "clip" in params:
        kwargs["clip"] = models["clip"]
    if "estimators" in params:
        kwargs["estimators"] = estimators
    if name == "pick_score":
        kwargs["scorer"] = models["pick"]
    if name == "dino_consistency":
        kwargs["encoder"] = models["dino"]
    if name == "aesthetic_score":
        kwargs["head"] = models["head"]
    if name == "viclip_text":
        kwargs["encoder"] = models["viclip"]
    if name == "dover":  # DOVER's full network with random weights (or the tiny one), on the bench device
        kwargs.update(model=models["dover"], device=models["device"])
    return cls(**kwargs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--set", default="default", help="a preset of conf/metrics/")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tiny", action="store_true", help="tiny models and raft_small (smoke test)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from torchvision.models import optical_flow

    from vedit.estimators import Estimators
    from vedit.task import EditTask
    from vedit.video import Video

    device = torch.device(args.device)
    cfg = metric_set(args.set)
    models = build_models(args.tiny, cfg["clip"], device)
    raft_name = "raft_small" if args.tiny else "raft_large"
    try:
        from vedit.estimators.flow import load_raft

        raft, raft_weights = load_raft(raft_name, device), "pretrained"
    except Exception:  # noqa: BLE001 - no cached weights: same compute with random weights
        raft, raft_weights = getattr(optical_flow, raft_name)().eval().to(device), "random"
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, args.size + 2 * args.frames, args.size + 2 * args.frames, generator=g)
    base = torch.nn.functional.avg_pool2d(base, 9, 1, 4)  # smooth, so flow has something to track
    frames = torch.cat([base[..., t:t + args.size, 2 * t:2 * t + args.size] for t in range(args.frames)])
    source = Video((frames * 255).round().to(torch.uint8), fps=8, id="bench")
    task = EditTask(video=source, source_prompt="a textured wall", target_prompt="a painted wall")
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "set": args.set, "names": cfg["names"], "frames": args.frames, "size": args.size,
                     "clip": models["clip"].describe(), "raft": raft_name, "raft_weights": raft_weights, "passes": {}}
    with tempfile.TemporaryDirectory() as cache:
        estimators = Estimators(flow="raft", flow_model=raft, raft_name=raft_name, cache_dir=cache, device=str(device))
        metrics = [instantiate(n, cfg.get("options") or {}, models, estimators, args.frames) for n in cfg["names"]]
        for name in ("cold", "warm"):
            edited = (frames.flip(1) * 255).round().to(torch.uint8)  # a colour edit, stored as uint8; new each pass
            per_metric, total = {}, 0.0
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            for metric in metrics:
                start = time.perf_counter()
                try:
                    values = metric(edited, task)
                except Exception as e:  # noqa: BLE001 - e.g. random RAFT weights: every pixel occluded
                    values = {"error": f"{type(e).__name__}: {e}"}
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                total += seconds
                per_metric[metric.name] = {"seconds": seconds, "values": values}
                print(f"{name} {metric.name:20s} {seconds:8.3f} s  {values}")
            results["passes"][name] = {
                "seconds": total, "seconds_per_frame": total / args.frames, "metrics": per_metric,
                "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0}
            print(f"{name}: {total:.2f} s, {total / args.frames:.4f} s/frame")
    results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"peak RSS {results['peak_rss_gb']:.2f} GB; written to {args.out}")


if __name__ == "__main__":
    main()
