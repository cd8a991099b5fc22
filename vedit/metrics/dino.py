"""V2VBench's Object Consistency: DINOv2 frame consistency.

transformers `Dinov2Model` `facebook/dinov2-base` with its BitImageProcessor (8-bit PIL bicubic
resize of the shortest side to 256, centre crop 224, ImageNet mean/std); per frame the
`pooler_output` (the layer-normed CLS token), L2-normalised; the mean over the T-1 consecutive
pairs of max(0, cosine), as `clip_image`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vedit.metrics.base import Metric, MetricError, frame_chunks
from vedit.metrics.clip import consecutive_consistency
from vedit.metrics.hub import load_or_explain
from vedit.metrics.preprocess import ImagePreprocess
from vedit.registry import METRICS
from vedit.task import EditTask

DINO_MODEL = "facebook/dinov2-base"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DinoEncoder:
    """`encode_images(frames)` -> L2-normalised `pooler_output` (N, D) on CPU, `batch_size` frames at a time."""

    def __init__(self, model: Any, preprocessing: ImagePreprocess, name: str, device: str | torch.device = "cpu",
                 batch_size: int = 16, tiny: bool = False) -> None:
        self.model = model.eval().to(device)
        self.preprocessing, self.name, self.tiny = preprocessing, name, tiny
        self.device, self.batch_size = torch.device(device), int(batch_size)

    @torch.no_grad()
    def encode_images(self, frames: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        out = [self.model(pixel_values=self.preprocessing(c).to(self.device, dtype)).pooler_output.float().cpu()
               for c in frame_chunks(frames, self.batch_size)]
        return F.normalize(torch.cat(out), dim=-1)


def load_dino(model: str = DINO_MODEL, device: str | torch.device = "cpu") -> DinoEncoder:
    """DINOv2 and its image processor from the Hugging Face cache (Hub id) or a local folder."""
    from transformers import BitImageProcessor, Dinov2Model

    proc = load_or_explain("DINOv2's image processor", model, "dino_consistency.model",
                           lambda: BitImageProcessor.from_pretrained(model))
    net = load_or_explain("DINOv2", model, "dino_consistency.model", lambda: Dinov2Model.from_pretrained(model))
    try:
        prep = ImagePreprocess.from_image_processor(proc)
    except ValueError as e:
        raise MetricError(f"DINOv2 image processor {model!r}: {e}") from e
    return DinoEncoder(net, prep, name=model, device=device)


def tiny_dino(seed: int = 0, device: str | torch.device = "cpu") -> DinoEncoder:
    """A Dinov2Model at tiny sizes with random weights (seeded), DINOv2's preprocessing at 36/32 px."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                          image_size=32, patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Dinov2Model(config)
    prep = ImagePreprocess(size=36, crop=(32, 32), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return DinoEncoder(net, prep, name=f"tiny-dino-{seed}", device=device, tiny=True)


@METRICS.register("dino_consistency")
class DinoConsistency(Metric):
    """V2VBench's Object Consistency: mean max(0, cos) of consecutive frames' DINOv2 pooled features.

    `model`: Hub id or local folder; "tiny" builds `tiny_dino` (tests). The model loads on the first call."""

    name = "dino_consistency"
    higher_is_better = True

    def __init__(self, model: str = DINO_MODEL, device: str | torch.device = "cpu",
                 encoder: DinoEncoder | None = None) -> None:
        self.model_id, self.device, self._encoder = model, device, encoder
        self._name = encoder.name if encoder is not None else model  # fixed before loading: the metric key
        self.convention = (f"cosine clamped at 0 of DINOv2 pooler_output (CLS token), mean over the T-1 consecutive "
                           f"pairs (t, t+1), in [0, 1]; {self._name} with its BitImageProcessor (8-bit PIL bicubic "
                           "shortest-side resize, centre crop)")

    @property
    def encoder(self) -> DinoEncoder:
        if self._encoder is None:
            self._encoder = tiny_dino(device=self.device) if self.model_id == "tiny" else load_dino(self.model_id,
                                                                                                      self.device)
        return self._encoder

    def models(self, task: EditTask) -> dict[str, Any]:
        tiny = self.model_id == "tiny" or (self._encoder is not None and self._encoder.tiny)
        return {"dino": self._name, "dino_tiny": tiny}

    def config(self, task: EditTask) -> dict[str, Any]:
        return {**super().config(task), "model": self._name}

    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        self.check_frames(edited, task, min_frames=2)
        return {self.name: consecutive_consistency(self.encoder.encode_images(edited))}
