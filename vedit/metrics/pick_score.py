"""PickScore (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on human preferences, as V2VBench runs it.

Per frame exp(logit_scale) x cos(image, prompt) of the transformers `CLIPModel`
`yuvalkirstain/PickScore_v1`, with the tokenizer and image preprocessing of
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K` (CLIPImageProcessor: 8-bit PIL bicubic resize of the
shortest side to 224, centre crop, OpenAI mean/std); the mean over frames. TGVE's script scores the
same way after resizing each frame to 480x480 (`square: 480`).
"""

from __future__ import annotations

from typing import Any

import torch

from vedit.metrics.base import Metric, MetricError, frame_chunks
from vedit.metrics.clip import _prompt
from vedit.metrics.hub import load_or_explain
from vedit.metrics.preprocess import ImagePreprocess
from vedit.registry import METRICS
from vedit.task import EditTask

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class HFClipScorer:
    """A transformers CLIPModel with its tokenizer and preprocessing: `scores(frames, prompt)` ->
    exp(logit_scale) x cos per frame (N,), encoded `batch_size` frames at a time."""

    def __init__(self, model: Any, tokenizer: Any, preprocessing: ImagePreprocess, name: str,
                 device: str | torch.device = "cpu", batch_size: int = 16, tiny: bool = False) -> None:
        self.model = model.eval().to(device)
        self.tokenizer, self.preprocessing, self.name = tokenizer, preprocessing, name
        self.device, self.batch_size, self.tiny = torch.device(device), int(batch_size), tiny

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        tokens = self.tokenizer([prompt], padding=True, truncation=True, max_length=77, return_tensors="pt")
        pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                       attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
        return torch.nn.functional.normalize(self.model.text_projection(pooled).float().cpu(), dim=-1)

    @torch.no_grad()
    def image_embeddings(self, frames: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        out = []
        for chunk in frame_chunks(frames, self.batch_size):
            x = self.preprocessing(chunk).to(self.device, dtype)
            pooled = self.model.vision_model(pixel_values=x).pooler_output
            out.append(self.model.visual_projection(pooled).float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    def scores(self, frames: torch.Tensor, prompt: str) -> torch.Tensor:
        return self.logit_scale() * (self.image_embeddings(frames) @ self.text_embedding(prompt).T)[:, 0]


def load_pickscore(model: str = PICKSCORE_MODEL, processor: str = PICKSCORE_PROCESSOR,
                   device: str | torch.device = "cpu", square: int | None = None) -> HFClipScorer:
    """PickScore from the Hugging Face cache (Hub ids) or local folders (`save_pretrained` layout)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    images = load_or_explain("PickScore's image processor", processor, "pick_score.processor",
                             lambda: CLIPImageProcessor.from_pretrained(processor))
    tokenizer = load_or_explain("PickScore's tokenizer", processor, "pick_score.processor",
                                lambda: CLIPTokenizer.from_pretrained(processor))
    clip = load_or_explain("PickScore", model, "pick_score.model", lambda: CLIPModel.from_pretrained(model))
    try:
        prep = ImagePreprocess.from_image_processor(images, square=square)
    except ValueError as e:
        raise MetricError(f"PickScore processor {processor!r}: {e}") from e
    return HFClipScorer(clip, tokenizer, prep, name=model, device=device)


def tiny_pickscore(seed: int = 0, device: str | torch.device = "cpu", square: int | None = None) -> HFClipScorer:
    """A transformers CLIPModel at tiny sizes with random weights (seeded), the real CLIP tokenizer and
    CLIP's preprocessing at 32 px; no download. Values are meaningless."""
    from transformers import CLIPConfig, CLIPModel

    from vedit.backbones.tokenizer import clip_tokenizer

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    prep = ImagePreprocess(size=32, crop=(32, 32), mean=(0.48145466, 0.4578275, 0.40821073),
                           std=(0.26862954, 0.26130258, 0.27577711), square=square)
    return HFClipScorer(model, clip_tokenizer(), prep, name=f"tiny-pickscore-{seed}", device=device, tiny=True)


@METRICS.register("pick_score")
class PickScore(Metric):
    """V2VBench's Frames Pick Score: mean over frames of PickScore's exp(logit_scale) x cos(frame, target prompt).

    `model` / `processor`: Hub ids or local folders; "tiny" builds `tiny_pickscore` (tests). The model
    loads on the first call."""

    name = "pick_score"
    prompts_needed = ("target_prompt",)
    higher_is_better = True

    def __init__(self, model: str = PICKSCORE_MODEL, processor: str = PICKSCORE_PROCESSOR,
                 device: str | torch.device = "cpu", square: int | None = None,
                 scorer: HFClipScorer | None = None) -> None:
        self.model_id, self.processor_id, self.device, self.square = model, processor, device, square
        self._scorer = scorer
        self._name = scorer.name if scorer is not None else model  # fixed before loading: the metric key
        resize = f"frames resized to {square}x{square} (aspect lost), then " if square else ""
        self.convention = (f"exp(logit_scale) x cosine (PickScore's scale is ~100 x cos), mean over all frames vs the "
                           f"target prompt; {model} with {processor}'s tokenizer and preprocessing ({resize}8-bit PIL "
                           "bicubic resize of the shortest side, centre crop)")

    @property
    def scorer(self) -> HFClipScorer:
        if self._scorer is None:
            self._scorer = (tiny_pickscore(device=self.device, square=self.square) if self.model_id == "tiny" else
                            load_pickscore(self.model_id, self.processor_id, self.device, self.square))
        return self._scorer

    def models(self, task: EditTask) -> dict[str, Any]:
        tiny = self.model_id == "tiny" or (self._scorer is not None and self._scorer.tiny)
        return {"pick_score": self._name, "pick_score_tiny": tiny}

    def config(self, task: EditTask) -> dict[str, Any]:
        return {**super().config(task), "model": self._name, "processor": self.processor_id, "square": self.square}

    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        self.check_frames(edited, task)
        prompt = _prompt(task, "target_prompt", self.name)
        return {self.name: self.scorer.scores(edited, prompt).double().mean().item()}
