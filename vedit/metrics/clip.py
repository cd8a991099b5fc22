"""CLIP metrics by the conventions the benchmarks use (see docs/METRICS.md):

- `clip_text`: mean over frames of cos(frame, target prompt); raw, x100 (`clip_text_x100`) and
  x exp(logit_scale) (`clip_text_logit`: transformers' `logits_per_image`, TGVE's and V2VBench's
  score; exp(logit_scale) is 100 for the OpenAI weights up to their stored precision).
- `clip_image`: frame consistency over the T-1 consecutive pairs of projected embeddings, each
  cosine clamped at 0 (Pix2Video's CLIP-Image, Rerender's Tem-Con); raw and x100.
- `clip_consistency`: V2VBench's frame consistency, the same pairs on the image tower's output
  before the projection (`CLIPVisionModel.pooler_output`, 1024-d for ViT-L/14).
- `clip_image_allpairs`: frame consistency over all T(T-1)/2 pairs of distinct frames (TGVE).
- `frame_acc`: fraction of frames closer to the target than to the source prompt (FateZero, Rerender).
"""

from __future__ import annotations

from typing import Any

import torch

from vedit.metrics.base import Metric, MetricError
from vedit.metrics.clip_models import ClipModel
from vedit.registry import METRICS
from vedit.task import EditTask


def _prompt(task: EditTask, attr: str, metric: str) -> str:
    value = getattr(task, attr)
    if not isinstance(value, str) or not value.strip():
        raise MetricError(f"{metric} needs the {attr} of video {task.video.id!r}; give it in the dataset's prompts")
    return value


class ClipMetric(Metric):
    """A metric over CLIP embeddings; the CLIP model is injected."""

    def __init__(self, clip: ClipModel) -> None:
        self.clip = clip

    def models(self, task: EditTask) -> dict[str, Any]:
        # values under another preprocessing are another row of the leaderboard: the label names it
        prep = self.clip.preprocessing
        notes = ([] if prep.reference == "open_clip" else [f"{prep.reference} preprocessing"]) + (
            [f"frames {prep.square}x{prep.square}"] if prep.square else [])
        name = f"{self.clip.name} ({', '.join(notes)})" if notes else self.clip.name
        return {"clip": name, "clip_tiny": self.clip.tiny}

    def config(self, task: EditTask) -> dict[str, Any]:
        return {**super().config(task), "clip": self.clip.describe()}

    def _model(self) -> str:
        return (f"{self.clip.name} ({self.clip.describe()['activation']}) at {self.clip.image_size[0]}px; "
                f"{self.clip.preprocessing.label()}")


@METRICS.register("clip_text")
class ClipText(ClipMetric):
    """Mean over frames of cos(frame embedding, target prompt embedding)."""

    name = "clip_text"
    higher_is_better = True
    prompts_needed = ("target_prompt",)

    def __init__(self, clip: ClipModel) -> None:
        super().__init__(clip)
        self.convention = (f"raw cosine in [-1, 1] (clip_text_x100: x100; clip_text_logit: x exp(logit_scale) "
                           f"= {self.clip.logit_scale():.4f}), mean over all frames vs the target prompt; "
                           f"{self._model()}")

    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        return self.evaluate(edited, task)[0]

    def evaluate(self, edited: torch.Tensor, task: EditTask) -> tuple[dict[str, float], dict[str, list]]:
        self.check_frames(edited, task)
        text = self.clip.encode_texts([_prompt(task, "target_prompt", self.name)])
        per_frame = (self.clip.encode_images(edited) @ text.T)[:, 0]
        score = per_frame.mean().item()
        return ({self.name: score, f"{self.name}_x100": 100 * score, f"{self.name}_logit": self.clip.logit_scale() * score},
                {self.name: per_frame.tolist()})


def consecutive_consistency(emb: torch.Tensor) -> float:
    """emb (T, D) normalised -> mean over t of max(0, cos(e_t, e_t+1))."""
    return (emb[:-1] * emb[1:]).sum(-1).clamp_min(0).mean().item()


def all_pairs_consistency(emb: torch.Tensor) -> float:
    """emb (T, D) normalised -> mean cos over all pairs i < j of distinct frames."""
    sims = emb @ emb.T
    i, j = torch.triu_indices(len(emb), len(emb), offset=1)
    return sims[i, j].mean().item()


@METRICS.register("clip_image")
class ClipImage(ClipMetric):
    """Temporal consistency: mean max(0, cos) between consecutive frames' image embeddings."""

    name = "clip_image"
    higher_is_better = True

    pooled = False  # features before the projection (V2VBench) instead of the projected embedding

    def __init__(self, clip: ClipModel) -> None:
        super().__init__(clip)
        features = "the image tower's output before the projection" if self.pooled else "projected image embeddings"
        self.convention = (f"cosine clamped at 0 of {features}, mean over the T-1 consecutive pairs (t, t+1) "
                           f"(x100: {self.name}_x100); {self._model()}")

    def config(self, task: EditTask) -> dict[str, Any]:
        return {**super().config(task), "features": "pooled" if self.pooled else "projected"}

    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        self.check_frames(edited, task, min_frames=2)
        score = consecutive_consistency(self.clip.encode_images(edited, pooled=self.pooled))
        return {self.name: score, f"{self.name}_x100": 100 * score}


@METRICS.register("clip_consistency")
class ClipConsistency(ClipImage):
    """V2VBench's frame consistency: `clip_image` on `CLIPVisionModel.pooler_output` (before the projection)."""

    name = "clip_consistency"
    pooled = True


@METRICS.register("clip_image_allpairs")
class ClipImageAllPairs(ClipMetric):
    """Temporal consistency as TGVE: mean cos over all pairs of distinct frames."""

    name = "clip_image_allpairs"
    higher_is_better = True

    def __init__(self, clip: ClipModel) -> None:
        super().__init__(clip)
        self.convention = (f"raw cosine, mean over all T(T-1)/2 pairs of distinct frames (x100: "
                           f"clip_image_allpairs_x100); {self._model()}")

    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        self.check_frames(edited, task, min_frames=2)
        score = all_pairs_consistency(self.clip.encode_images(edited))
        return {self.name: score, f"{self.name}_x100": 100 * score}


@METRICS.register("frame_acc")
class FrameAccuracy(ClipMetric):
    """Fraction of frames whose embedding is closer (cosine) to the target than to the source prompt."""

    name = "frame_acc"
    higher_is_better = True
    prompts_needed = ("source_prompt", "target_prompt")

    def __init__(self, clip: ClipModel) -> None:
        super().__init__(clip)
        self.convention = f"fraction in [0, 1] of frames with cos(target) > cos(source); {self._model()}"

    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        self.check_frames(edited, task)
        prompts = [_prompt(task, "target_prompt", self.name), _prompt(task, "source_prompt", self.name)]
        return {self.name: frame_accuracy(self.clip.encode_images(edited), self.clip.encode_texts(prompts))}


def frame_accuracy(images: torch.Tensor, texts: torch.Tensor) -> float:
    """images (T, D), texts (2, D) = [target, source], both normalised -> fraction of frames nearer the target."""
    sims = images @ texts.T
    return (sims[:, 0] > sims[:, 1]).float().mean().item()
