"""Subject masks: the dataset's annotations, a text-prompted foreground model, or the whole frame.

`salient` runs CLIPSeg (transformers `CLIPSegForImageSegmentation`, default `CIDAS/clipseg-rd64-refined`,
no remote code) on every frame, queried with the task's source prompt (the subject's description),
and keeps pixels whose probability exceeds 0.5. The paper used RMBG-1.4 for classes COCO lacks;
RMBG and its successor need `trust_remote_code`, CLIPSeg does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vedit.errors import load_estimator_weights
from vedit.estimators.depth import IMAGENET_MEAN, IMAGENET_STD

MASK_METHODS = ("dataset", "salient", "none")
GROUND_TRUTH_DATASETS = ("synthetic",)  # generated masks are exact: recorded as "gt", not "dataset"
SALIENT_MODEL = "CIDAS/clipseg-rd64-refined"
CLIPSEG_SIZE = 352  # the resolution CLIPSeg was trained at (its processor resizes to it)


def whole_frame(frames: torch.Tensor) -> torch.Tensor:
    """(T, 1, H, W) ones: every pixel is the subject."""
    t, _, h, w = frames.shape
    return torch.ones(t, 1, h, w)


def load_salient(model_id: str = SALIENT_MODEL, device: str | torch.device = "cpu") -> tuple:
    """(CLIPSeg model, tokenizer) from a Hub id or local path (HF_HUB_OFFLINE=1: local caches only)."""
    from transformers import CLIPSegForImageSegmentation, CLIPTokenizer

    model, tokenizer = load_estimator_weights(
        lambda: (CLIPSegForImageSegmentation.from_pretrained(model_id), CLIPTokenizer.from_pretrained(model_id)),
        "salient masks need CLIPSeg weights", model_id,
        "point estimators.salient_model at a local copy, or use estimators.masks=dataset|none")
    return model.eval().to(device), tokenizer


@torch.no_grad()
def clipseg_masks(frames: torch.Tensor, prompt: str, model: torch.nn.Module, tokenizer, threshold: float = 0.5,
                  size: int = CLIPSEG_SIZE, batch_size: int = 8) -> torch.Tensor:
    """(T, 1, H, W) in {0, 1}: CLIPSeg's probability of `prompt` per pixel > threshold, at the frames' size."""
    device = next(model.parameters()).device
    text = tokenizer([prompt], padding=True, truncation=True, return_tensors="pt").to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    out = []
    for i in range(0, frames.shape[0], batch_size):
        x = frames[i:i + batch_size].to(device)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        n = x.shape[0]
        logits = model(input_ids=text.input_ids.expand(n, -1), attention_mask=text.attention_mask.expand(n, -1),
                       pixel_values=(x - mean) / std).logits
        logits = logits.reshape(n, 1, *logits.shape[-2:]).float()
        prob = F.interpolate(logits, size=frames.shape[-2:], mode="bilinear", align_corners=False).sigmoid()
        out.append((prob > threshold).float().cpu())
    return torch.cat(out)
