"""Monocular depth: transformers DPT and Depth Anything V2 (the depth VidMP3 used)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vedit.errors import load_estimator_weights

DEPTH_METHODS = ("auto", "dpt", "depth_anything", "gt")
DEPTH_ANYTHING_MODEL = "depth-anything/Depth-Anything-V2-Large-hf"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@torch.no_grad()
def dpt_depth(frames: torch.Tensor, model: torch.nn.Module, resolution: int = 384, batch_size: int = 8) -> torch.Tensor:
    """(T, 1, H, W) relative inverse depth (larger = nearer) from a transformers DPT model."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = []
    for i in range(0, frames.shape[0], batch_size):
        x = F.interpolate(frames[i:i + batch_size], size=(resolution, resolution), mode="bicubic",
                          align_corners=False).clamp(0, 1)
        x = ((x - 0.5) / 0.5).to(device, dtype)
        pred = model(pixel_values=x).predicted_depth.float()
        out.append(F.interpolate(pred[:, None], size=frames.shape[-2:], mode="bicubic", align_corners=False).cpu())
    return torch.cat(out)


def depth_anything_size(h: int, w: int, target: int = 518, multiple: int = 14) -> tuple[int, int]:
    """Depth Anything's processor size: one scale for both sides (the one of target/h, target/w
    closer to 1, i.e. aspect kept), sides rounded to multiples of 14."""
    sh, sw = target / h, target / w
    scale = sw if abs(1 - sw) < abs(1 - sh) else sh
    return (max(multiple, round(h * scale / multiple) * multiple),
            max(multiple, round(w * scale / multiple) * multiple))


def load_depth_anything(model_id: str = DEPTH_ANYTHING_MODEL, device: str | torch.device = "cpu") -> torch.nn.Module:
    """DepthAnythingForDepthEstimation from a Hub id or local path (HF_HUB_OFFLINE=1: local caches only);
    "random": a V2-Large-sized model (ViT-L/14 backbone, DPT head 256/512/1024/1024) with seeded random
    weights, for benchmarks without the weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    if model_id == "random":
        backbone = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=518,
                                out_indices=[5, 12, 18, 24], reshape_hidden_states=False)
        config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=1024,
                                     neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return DepthAnythingForDepthEstimation(config).eval().to(device)
    model = load_estimator_weights(
        lambda: DepthAnythingForDepthEstimation.from_pretrained(model_id),
        "estimators.depth=depth_anything needs weights", model_id,
        "point estimators.depth_anything_model at a local copy, or use estimators.depth=auto")
    return model.eval().to(device)


@torch.no_grad()
def depth_anything_depth(frames: torch.Tensor, model: torch.nn.Module, target: int = 518,
                         batch_size: int = 8) -> torch.Tensor:
    """(T, 1, H, W) relative inverse depth (larger = nearer) from a transformers Depth Anything model,
    preprocessed as its image processor does (bicubic, aspect kept, ImageNet normalisation)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    size = depth_anything_size(*frames.shape[-2:], target=target)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for i in range(0, frames.shape[0], batch_size):
        x = F.interpolate(frames[i:i + batch_size], size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        pred = model(pixel_values=((x - mean) / std).to(device, dtype)).predicted_depth.float()
        out.append(F.interpolate(pred[:, None], size=frames.shape[-2:], mode="bicubic", align_corners=False).cpu())
    return torch.cat(out)
