"""Edge maps for ControlNet: Canny (OpenCV) and HED (controlnet-aux)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vedit.errors import EstimatorError
from vedit.video import frames_to_uint8

EDGE_METHODS = ("canny", "hed")
HED_REPO, HED_FILE = "lllyasviel/Annotators", "ControlNetHED.pth"


def canny_edges(frames: torch.Tensor, low: int = 50, high: int = 100) -> torch.Tensor:
    """(T, 1, H, W) Canny edge maps in {0, 1}, as ControlNet's annotator computes them: cv2.Canny on the
    8-bit RGB image (per pixel, the gradient of the colour channel where it is strongest), not on grey."""
    maps = [cv2.Canny(np.ascontiguousarray(img), low, high) for img in frames_to_uint8(frames)]
    return torch.from_numpy(np.stack(maps))[:, None].float() / 255.0


def load_hed(device: str | torch.device = "cpu") -> torch.nn.Module:
    """The ControlNet HED network (controlnet-aux) from the local Hugging Face cache; never downloads."""
    try:
        from controlnet_aux.hed import HEDdetector
    except ImportError as e:
        raise EstimatorError("edges=hed needs controlnet-aux (pip install controlnet-aux); or use edges=canny") from e
    try:
        detector = HEDdetector.from_pretrained(HED_REPO, filename=HED_FILE, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - hub raises several types when the file is absent
        raise EstimatorError(
            f"HED weights {HED_REPO}/{HED_FILE} are not in the Hugging Face cache ({e.__class__.__name__}). "
            "Download them with `huggingface-cli download lllyasviel/Annotators ControlNetHED.pth` where "
            "there is network (set HF_HOME), or use edges=canny") from e
    return detector.netNetwork.to(device)


@torch.no_grad()
def hed_edges(frames: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """(T, 1, H, W) soft HED edges in [0, 1] (controlnet-aux's network: mean of side outputs, sigmoid)."""
    device = next(model.parameters()).device
    out = []
    for frame in frames:
        sides = model(frame[None].to(device) * 255.0)
        sides = [F.interpolate(s.float(), size=frames.shape[-2:], mode="bilinear", align_corners=False) for s in sides]
        out.append(torch.sigmoid(torch.stack(sides).mean(0)).cpu())
    return torch.cat(out)
