"""V2VBench's Frames Quality: the LAION aesthetic predictor (improved-aesthetic-predictor, v2).

V2VBench runs `shunk031/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE`: OpenAI's CLIP
ViT-L/14 image tower and projection (copied from `openai/clip-vit-large-patch14`), the projected
embedding L2-normalised, then the linear MLP head of `sac+logos+ava1-l14-linearMSE` (768 -> 1024 ->
128 -> 64 -> 16 -> 1, no activations; dropout inactive at inference); per frame, mean over frames.
The tower is the metric set's CLIP (the same OpenAI weights), so only the head is loaded here: from
that Hub repo's weights, or a local head file (`.pth` / `.safetensors` with `layers.*` keys, as
LAION releases it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vedit.metrics.base import MetricError
from vedit.metrics.clip import ClipMetric
from vedit.metrics.clip_models import ClipModel
from vedit.metrics.hub import load_or_explain
from vedit.registry import METRICS
from vedit.task import EditTask

AESTHETIC_MODEL = "shunk031/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE"
HEAD_WIDTHS = (1024, 128, 64, 16, 1)
HEAD_DROPOUT = (0.2, 0.2, 0.1)


def aesthetic_head(in_dim: int = 768) -> nn.Sequential:
    """The predictor's head with the released module indices (layers.0, 2, 4, 6, 7)."""
    dims = (in_dim, *HEAD_WIDTHS)
    mods: list[nn.Module] = []
    for i in range(len(HEAD_WIDTHS)):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(HEAD_DROPOUT):
            mods.append(nn.Dropout(HEAD_DROPOUT[i]))
    return nn.Sequential(*mods).eval()


def _head_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith("layers.")}
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: v for k, v in state.items() if k.startswith("layers.")}


def _head_file(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_file():
        return path
    names = ("model.safetensors", "pytorch_model.bin")
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise MetricError(f"aesthetic head folder {source!r} has none of {', '.join(names)}")
    from huggingface_hub import hf_hub_download

    errors = []
    for name in names:
        try:
            return Path(hf_hub_download(source, name))
        except Exception as e:  # noqa: BLE001 - try the other file name; report both
            errors.append(e)
    raise errors[-1]


def load_aesthetic_head(source: str = AESTHETIC_MODEL) -> nn.Sequential:
    """The head's weights (`layers.*`) from a Hub repo id (Hugging Face cache), a folder or a file."""
    file = load_or_explain("the aesthetic predictor", source, "aesthetic_score.head", lambda: _head_file(source))
    state = _head_state(file)
    if "layers.0.weight" not in state:
        raise MetricError(f"aesthetic head {source!r} ({file.name}) has no layers.* weights of the LAION predictor")
    head = aesthetic_head(state["layers.0.weight"].shape[1])
    try:
        head.load_state_dict({k.removeprefix("layers."): v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise MetricError(f"aesthetic head {source!r}: {e}") from e
    return head


@METRICS.register("aesthetic_score")
class AestheticScore(ClipMetric):
    """V2VBench's Frames Quality: mean over frames of the LAION aesthetic predictor's score (about 1-10)."""

    name = "aesthetic_score"
    higher_is_better = True

    def __init__(self, clip: ClipModel, head: str | nn.Module = AESTHETIC_MODEL) -> None:
        super().__init__(clip)
        self.head_source = head if isinstance(head, str) else f"custom {type(head).__name__}"
        self._head = head if isinstance(head, nn.Module) else None
        self.convention = ("LAION aesthetic predictor v2 (sac+logos+ava1-l14-linearMSE) score, about 1-10, of the "
                           f"L2-normalised projected CLIP embedding, mean over frames; head {self.head_source}; "
                           f"{self._model()}")

    @property
    def head(self) -> nn.Module:
        if self._head is None:
            self._head = load_aesthetic_head(self.head_source)
        return self._head

    def models(self, task: EditTask) -> dict[str, Any]:
        return {**super().models(task), "aesthetic_head": self.head_source}

    def config(self, task: EditTask) -> dict[str, Any]:
        return {**super().config(task), "head": self.head_source}

    @torch.no_grad()
    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        self.check_frames(edited, task)
        emb = self.clip.encode_images(edited)
        head = self.head
        width = next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features
        if emb.shape[1] != width:
            raise MetricError(f"{self.name}: the head takes {width}-d embeddings, CLIP {self.clip.name} gives "
                              f"{emb.shape[1]}-d; the released head needs CLIP ViT-L/14 (metrics.clip)")
        return {self.name: head(emb).double().mean().item()}
