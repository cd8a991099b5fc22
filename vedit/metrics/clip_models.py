"""CLIP models for the metrics: a small wrapper over open_clip with the model's own preprocessing.

OpenAI's CLIP weights were trained with QuickGELU; open_clip's plain model names build GELU towers
(and warn "QuickGELU mismatch"). `load_clip` builds each pretrained tag with the activation its
pretrained config names, and takes mean, std, interpolation and resize mode from that config.
"""

from __future__ import annotations

import os
from typing import Callable

import open_clip
import torch
import torch.nn.functional as F

from vedit.metrics.base import MetricError, frame_chunks

TINY_VOCAB = 49408  # open_clip.tokenize's BPE vocabulary
OPENAI_PREPROCESS = {"mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
                     "interpolation": "bicubic", "resize_mode": "shortest"}


class ClipModel:
    """`encode_images(frames)` and `encode_texts(texts)` -> L2-normalised embeddings (N, D) on CPU.

    Images get the model's preprocessing (open_clip's `preprocess_cfg`): resize the shortest side to
    the input size (antialiased; bicubic for the OpenAI models), centre crop, normalise with the
    model's mean and std. Frames may be uint8 or float in [0, 1]; they are converted and encoded in
    chunks of `batch_size`, so long videos need memory for one chunk only.
    """

    def __init__(self, model: open_clip.model.CLIP, tokenizer: Callable = open_clip.tokenize,
                 name: str = "custom", device: str | torch.device = "cpu", batch_size: int = 32,
                 tiny: bool = False) -> None:
        self.model = model.eval().to(device)
        self.tokenizer, self.name, self.device, self.batch_size = tokenizer, name, torch.device(device), batch_size
        self.tiny = tiny  # random tiny weights: values are meaningless, tables label them
        size = model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = {**OPENAI_PREPROCESS, **(getattr(model.visual, "preprocess_cfg", None) or {})}
        self.mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        self.interpolation, self.resize_mode = cfg["interpolation"], cfg["resize_mode"]
        if self.resize_mode != "shortest":
            raise MetricError(f"CLIP {name}: resize_mode {self.resize_mode!r} is not supported (only 'shortest')")

    def describe(self) -> dict:
        """What identifies this model's scores: name (with pretrained tag) and activation."""
        acts = sorted({type(m).__name__ for m in self.model.modules() if "GELU" in type(m).__name__})
        return {"name": self.name, "activation": "+".join(acts), "image_size": list(self.image_size),
                "tiny": self.tiny}

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 or float in [0, 1] -> normalised model input."""
        frames = frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()
        h, w = frames.shape[-2:]
        th, tw = self.image_size
        scale = max(th / h, tw / w)
        rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
        x = F.interpolate(frames, size=(rh, rw), mode=self.interpolation, align_corners=False, antialias=True)
        top, left = (rh - th) // 2, (rw - tw) // 2
        x = x[..., top:top + th, left:left + tw].clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_images(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 or float in [0, 1] -> (N, D)."""
        dtype = next(self.model.parameters()).dtype
        out = [self.model.encode_image(self.preprocess(chunk).to(self.device, dtype)).float().cpu()
               for chunk in frame_chunks(frames, self.batch_size)]
        return F.normalize(torch.cat(out), dim=-1)

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
              quick_gelu: bool | None = None, load_weights: bool = True) -> ClipModel:
    """A real open_clip model; `pretrained` is a tag (weights from the Hugging Face cache) or a file path.

    `load_weights=False` builds the same architecture and preprocessing with random weights (no
    download; for checking the build).
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
                     tiny=not load_weights)


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


def tiny_clip(seed: int = 0, embed_dim: int = 32, image_size: int = 32,
              device: str | torch.device = "cpu") -> ClipModel:
    """An open_clip CLIP at tiny sizes with random weights (seeded) and the real tokenizer; no download."""
    vision = open_clip.model.CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=image_size)
    text = open_clip.model.CLIPTextCfg(context_length=77, vocab_size=TINY_VOCAB, width=32, heads=2, layers=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    return ClipModel(model, open_clip.tokenize, name=f"tiny-clip-{seed}", device=device, tiny=True)
