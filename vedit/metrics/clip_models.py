"""CLIP models for the metrics: a small wrapper over open_clip with the model's own preprocessing.

OpenAI's CLIP weights were trained with QuickGELU; open_clip's plain model names build GELU towers
(and warn "QuickGELU mismatch"). `load_clip` builds each pretrained tag with the activation its
pretrained config names, and takes mean, std, interpolation and resize mode from that config.
open_clip's OpenAI ViT-L/14 holds the same weights as transformers' `openai/clip-vit-large-patch14`,
which V2VBench and LOVEU-TGVE load; `preprocess` picks whose image preprocessing to follow
(`vedit.metrics.preprocess`) and `square` TGVE's resize of every frame to a square first.
"""

from __future__ import annotations

import os
import weakref
from typing import Callable

import open_clip
import torch
import torch.nn.functional as F

from vedit.metrics.base import MetricError, frame_chunks
from vedit.metrics.preprocess import ImagePreprocess

TINY_VOCAB = 49408  # open_clip.tokenize's BPE vocabulary
OPENAI_PREPROCESS = {"mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
                     "interpolation": "bicubic", "resize_mode": "shortest"}


class ClipModel:
    """`encode_images(frames)` and `encode_texts(texts)` -> L2-normalised embeddings (N, D) on CPU.

    Images get the model's preprocessing (open_clip's `preprocess_cfg`: mean, std, interpolation)
    done as `preprocess` does it ("open_clip": torchvision's transform; "transformers":
    CLIPImageProcessor; both resample 8-bit PIL images, see `vedit.metrics.preprocess`), after
    resizing every frame to `square` x `square` when given (TGVE). Frames may be uint8 or float in
    [0, 1]; they are encoded in chunks of `batch_size`, so long videos need memory for one chunk only.
    `encode_images(frames, pooled=True)` gives the image tower's output before the projection
    (transformers' `CLIPVisionModel.pooler_output`, V2VBench's frame consistency). The features of the
    last frames tensor are kept, so the metrics of one set encode a video once.
    """

    def __init__(self, model: open_clip.model.CLIP, tokenizer: Callable = open_clip.tokenize,
                 name: str = "custom", device: str | torch.device = "cpu", batch_size: int = 32,
                 tiny: bool = False, preprocess: str = "open_clip", square: int | None = None) -> None:
        self.model = model.eval().to(device)
        self.tokenizer, self.name, self.device, self.batch_size = tokenizer, name, torch.device(device), batch_size
        self.tiny = tiny  # random tiny weights: values are meaningless, tables label them
        size = model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = {**OPENAI_PREPROCESS, **(getattr(model.visual, "preprocess_cfg", None) or {})}
        self.interpolation, self.resize_mode = cfg["interpolation"], cfg["resize_mode"]
        if self.resize_mode != "shortest" or self.image_size[0] != self.image_size[1]:
            raise MetricError(f"CLIP {name}: resize_mode {self.resize_mode!r} at {self.image_size} is not supported "
                              "(only 'shortest' to a square input)")
        try:
            self.preprocessing = ImagePreprocess(size=self.image_size[0], crop=self.image_size, mean=cfg["mean"],
                                                 std=cfg["std"], resample=self.interpolation, reference=preprocess,
                                                 square=square)
        except ValueError as e:
            raise MetricError(f"CLIP {name}: {e}") from e
        self._last: tuple | None = None  # (weakref to frames, version, pooled, projected) of the last video

    def describe(self) -> dict:
        """What identifies this model's scores: name (with pretrained tag) and activation."""
        acts = sorted({type(m).__name__ for m in self.model.modules() if "GELU" in type(m).__name__})
        return {"name": self.name, "activation": "+".join(acts), "image_size": list(self.image_size),
                "tiny": self.tiny, "preprocess": self.preprocessing.describe()}

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 or float in [0, 1] -> normalised model input."""
        return self.preprocessing(frames)

    def logit_scale(self) -> float:
        """exp(logit_scale): the factor transformers' `logits_per_image` applies (100 for OpenAI CLIP)."""
        return float(self.model.logit_scale.detach().float().exp())

    @torch.no_grad()
    def _features(self, frames: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(pooled before the projection or None where the tower has no `proj`, projected), unnormalised."""
        last = self._last
        if last is not None and last[0]() is frames and last[1] == frames._version:
            return last[2], last[3]
        visual = self.model.visual
        proj = getattr(visual, "proj", None)
        dtype = next(self.model.parameters()).dtype
        pooled, projected = [], []
        for chunk in frame_chunks(frames, self.batch_size):
            x = self.preprocess(chunk).to(self.device, dtype)
            if isinstance(proj, torch.nn.Parameter):  # one pass gives both: open_clip skips a None proj
                visual.proj = None
                try:
                    out = visual(x)
                finally:
                    visual.proj = proj
                pooled.append(out.float().cpu())
                projected.append((out @ proj).float().cpu())
            else:
                projected.append(self.model.encode_image(x).float().cpu())
        result = (torch.cat(pooled) if pooled else None, torch.cat(projected))
        self._last = (weakref.ref(frames), frames._version, *result)  # never keeps the video alive
        return result

    def encode_images(self, frames: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """(N, 3, H, W) uint8 or float in [0, 1] -> (N, D) projected embeddings, or with `pooled` the
        image tower's output before the projection (N, width)."""
        before, after = self._features(frames)
        if pooled and before is None:
            raise MetricError(f"CLIP {self.name}: its image tower has no projection to take the features before")
        return F.normalize(before if pooled else after, dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """list of N strings -> (N, D)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float().cpu(), dim=-1)


def pretrained_build_args(name: str, pretrained: str | None, quick_gelu: bool | None = None) -> dict:
    """create_model arguments that build `name` as its weights were trained.

    QuickGELU when the tag's pretrained config says so (all OpenAI weights) or the name ends in
    `-quickgelu`; a checkpoint path has no config: pass `quick_gelu` (true for OpenAI weights).
    """
    cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    if quick_gelu is None:
        quick_gelu = bool(cfg.get("quick_gelu")) or name.endswith("-quickgelu")
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    return {"force_quick_gelu": bool(quick_gelu), "force_preprocess_cfg": preprocess or None}


def load_clip(name: str = "ViT-L-14", pretrained: str = "openai", device: str | torch.device = "cpu",
              quick_gelu: bool | None = None, load_weights: bool = True, preprocess: str = "open_clip",
              square: int | None = None) -> ClipModel:
    """A real open_clip model; `pretrained` is a tag (weights from the Hugging Face cache) or a file path.

    `load_weights=False` builds the same architecture and preprocessing with random weights (no
    download; for checking the build). `preprocess` / `square`: see `ClipModel`.
    """
    args = pretrained_build_args(name, pretrained, quick_gelu)
    cache = hub_cache()
    if load_weights:
        check_cached_offline(name, pretrained, cache)
    try:
        model = open_clip.create_model(name, pretrained=pretrained if load_weights else None, device=device,
                                       require_pretrained=load_weights, cache_dir=cache, **args)
    except Exception as e:  # noqa: BLE001 - open_clip and the hub raise many types when weights are absent
        raise MetricError(
            f"cannot load CLIP {name} ({pretrained}): {e.__class__.__name__}: {e}. open_clip reads weights "
            "from the Hugging Face cache: download them where there is network (HF_HOME pointing at that "
            "cache), or pass a local checkpoint path as `pretrained`, or use tiny_clip() for tests. Without "
            "network, HF_HUB_OFFLINE=1 skips the hub's retries (~50 s)") from e
    return ClipModel(model, open_clip.get_tokenizer(name), name=f"{name}/{pretrained}", device=device,
                     tiny=not load_weights, preprocess=preprocess, square=square)


def hub_cache() -> str:
    """The Hugging Face hub cache as the environment names it now (HF_HUB_CACHE, else HF_HOME/hub)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"))


def check_cached_offline(name: str, pretrained: str, cache: str) -> None:
    """With HF_HUB_OFFLINE set, a tag whose weights are not in the hub cache fails at once (instead of
    after building the model and the hub's retries), naming the ways out."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = (open_clip.get_pretrained_cfg(name, pretrained) or {}).get("hf_hub", "").strip("/")
    if os.environ.get("HF_HUB_OFFLINE", "").upper() not in ("1", "ON", "YES", "TRUE") or not repo:
        return
    try:
        snapshot_download(repo, local_files_only=True, cache_dir=cache)
    except LocalEntryNotFoundError:
        raise MetricError(f"CLIP {name} ({pretrained}): its weights ({repo}) are not in the Hugging Face cache "
                          f"({cache}) and HF_HUB_OFFLINE is set; put them there (HF_HOME), pass a "
                          "checkpoint path as metrics.clip.pretrained, or run with metrics=tiny (random tiny CLIP: "
                          "every metric runs, CLIP values are meaningless)") from None


def tiny_clip(seed: int = 0, embed_dim: int = 32, image_size: int = 32, device: str | torch.device = "cpu",
              preprocess: str = "open_clip", square: int | None = None) -> ClipModel:
    """An open_clip CLIP at tiny sizes with random weights (seeded) and the real tokenizer; no download."""
    vision = open_clip.model.CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=image_size)
    text = open_clip.model.CLIPTextCfg(context_length=77, vocab_size=TINY_VOCAB, width=32, heads=2, layers=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    return ClipModel(model, open_clip.tokenize, name=f"tiny-clip-{seed}", device=device, tiny=True,
                     preprocess=preprocess, square=square)
