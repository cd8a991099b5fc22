"""V2VBench's Video Text Alignment: ViCLIP (Wang et al. 2023, InternVid) as V2VBench runs it.

V2VBench (wenhao728/awesome-diffusion-v2v, `v2vbench/viclip_text_alignment.py` with its copy of
InternVideo's ViCLIP code in `third_party/viclip/`) scores an edit with ViCLIP-L/14 from
`ViClip-InternVid-10M-FLT.pth`:

- frames: every 3rd frame from the first (`load_video(stride=3)`; its 24-frame videos give 8). The
  vision tower adds one learned temporal embedding per frame and has 8 of them, so it takes exactly
  8 frames (a single frame gets their mean; other counts fail in V2VBench's code);
- each frame: PIL bicubic resize of the shortest side to 224, torchvision centre crop 224, OpenAI
  CLIP mean/std (`clip_image_transform(224)`);
- text: CLIP's BPE with a context of 32 tokens (longer prompts truncated, the end token kept last),
  CLIP's text transformer, the end token's feature, the projection;
- score: the cosine of the L2-normalised video and text embeddings, raw (V2VBench's `range()` is
  (0, 1), higher is better; its leaderboard prints it as is, about 0.25).

Architecture. The vision tower is CLIP ViT-L/14 (QuickGELU, class token, ln_pre, ln_post, proj) with
the patch embedding applied to each frame (the released Conv3d has temporal kernel 1), a temporal
embedding added to every patch token of its frame, and joint attention over one class token and the
T x 256 patch tokens. It is open_clip's `VisionTransformer` with that embedding step replaced; the
text tower is open_clip's `TextTransformer` (context 32, QuickGELU, end-token pooling). With one frame
and zero temporal embeddings the vision tower is open_clip's image tower (tested).

Released checkpoint (`torch.load(file)["model"]`) to these modules:
- `vision_encoder.conv1.weight` (W, 3, 1, p, p) -> (W, 3, p, p): the temporal kernel of 1 squeezed;
- `temp` (the contrastive temperature of training; the score does not use it) is dropped;
- every other `vision_encoder.*` / `text_encoder.*` key as it is: ViCLIP's module names are open_clip's.
Widths, depths, patch and frame counts are read from the checkpoint's shapes; heads are width / 64
(CLIP's head width, as ViCLIP-L/14 and -B/16 have it).
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, TextTransformer, VisionTransformer
from torch import nn

from vedit.metrics.base import Metric, MetricError
from vedit.metrics.clip import _prompt
from vedit.metrics.hub import load_or_explain
from vedit.metrics.preprocess import ImagePreprocess
from vedit.registry import METRICS
from vedit.task import EditTask

VICLIP_MODEL = "OpenGVLab/ViCLIP"  # the Hub repo holding InternVid's released ViCLIP-L/14 checkpoint
VICLIP_FILE = "ViClip-InternVid-10M-FLT.pth"
SAMPLING = ("stride", "uniform")
HEAD_WIDTH = 64


@dataclass(frozen=True)
class ViClipConfig:
    """ViCLIP's sizes; the defaults are ViCLIP-L/14 as InternVid released it."""

    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1024
    vision_layers: int = 24
    num_frames: int = 8
    embed_dim: int = 768
    text_width: int = 768
    text_layers: int = 12
    context_length: int = 32
    vocab_size: int = 49408

    @property
    def vision_heads(self) -> int:
        return max(1, self.vision_width // HEAD_WIDTH)

    @property
    def text_heads(self) -> int:
        return max(1, self.text_width // HEAD_WIDTH)


VICLIP_L14 = ViClipConfig()
TINY_VICLIP = ViClipConfig(image_size=32, patch_size=8, vision_width=128, vision_layers=2, embed_dim=32,
                           text_width=64, text_layers=2)


class ViClipVision(VisionTransformer):
    """ViCLIP's video tower: `forward(video)` with video (B, T, 3, H, W) -> (B, embed_dim), T = 1 or num_frames."""

    def __init__(self, config: ViClipConfig = VICLIP_L14) -> None:
        super().__init__(image_size=config.image_size, patch_size=config.patch_size, width=config.vision_width,
                         layers=config.vision_layers, heads=config.vision_heads, mlp_ratio=4.0,
                         output_dim=config.embed_dim, act_layer=QuickGELU)
        self.num_frames = config.num_frames
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, config.num_frames, config.vision_width))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[:2]
        if t not in (1, self.num_frames):
            raise ValueError(f"ViCLIP's vision tower takes 1 or {self.num_frames} frames, got {t}")
        x = self.conv1(video.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B*T, N, W)
        x = x + self.positional_embedding[1:].to(x.dtype)
        temporal = self.temporal_positional_embedding
        if t == 1:  # ViCLIP's single-frame path: the mean of the temporal embeddings
            temporal = temporal.mean(1, keepdim=True)
        x = x.unflatten(0, (b, t)) + temporal.to(x.dtype)[:, :, None]  # (B, T, N, W)
        x = x.transpose(1, 2).flatten(1, 2)  # tokens patch-major, frame-minor, as ViCLIP orders them
        cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(b, 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1))
        x = self.transformer(x)
        pooled, _ = self._pool(x)
        return pooled @ self.proj


class ViClip(nn.Module):
    """ViCLIP: `vision_encoder` (ViClipVision) and `text_encoder` (open_clip TextTransformer), named as released."""

    def __init__(self, config: ViClipConfig = VICLIP_L14) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = ViClipVision(config)
        self.text_encoder = TextTransformer(context_length=config.context_length, vocab_size=config.vocab_size,
                                            width=config.text_width, heads=config.text_heads,
                                            layers=config.text_layers, output_dim=config.embed_dim,
                                            act_layer=QuickGELU, pool_type="argmax")

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) normalised frames -> (B, embed_dim), unnormalised."""
        return self.vision_encoder(video)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, context_length) token ids -> (B, embed_dim), unnormalised."""
        return self.text_encoder(tokens)


def viclip_state_from_released(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released checkpoint's state dict in `ViClip`'s keys (see the module docstring)."""
    out = {}
    for key, value in state.items():
        if key == "temp":
            continue
        if key == "vision_encoder.conv1.weight" and value.ndim == 5:
            if value.shape[2] != 1:
                raise ValueError(f"{key} has a temporal kernel of {value.shape[2]}; ViCLIP-L/14's is 1")
            value = value[:, :, 0]
        out[key] = value
    return out


def _layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def viclip_config_from_state(state: Mapping[str, torch.Tensor]) -> ViClipConfig:
    """The sizes of the model a state dict (released or `ViClip` keys) belongs to, read from its shapes."""
    conv = state["vision_encoder.conv1.weight"]
    grid = round((state["vision_encoder.positional_embedding"].shape[0] - 1) ** 0.5)
    tokens = state["text_encoder.token_embedding.weight"]
    return ViClipConfig(
        image_size=grid * conv.shape[-1], patch_size=conv.shape[-1], vision_width=conv.shape[0],
        vision_layers=_layers(state, "vision_encoder.transformer.resblocks."),
        num_frames=state["vision_encoder.temporal_positional_embedding"].shape[1],
        embed_dim=state["vision_encoder.proj"].shape[1], text_width=tokens.shape[1],
        text_layers=_layers(state, "text_encoder.transformer.resblocks."),
        context_length=state["text_encoder.positional_embedding"].shape[0], vocab_size=tokens.shape[0])


def viclip_preprocess(image_size: int = 224) -> ImagePreprocess:
    """V2VBench's `clip_image_transform(image_size)`: torchvision Resize (PIL bicubic, shortest side) and
    CenterCrop, ToTensor, OpenAI CLIP mean/std."""
    return ImagePreprocess(size=image_size, crop=(image_size, image_size), mean=open_clip.OPENAI_DATASET_MEAN,
                           std=open_clip.OPENAI_DATASET_STD, resample="bicubic", reference="open_clip")


def sample_frames(num_frames: int, sampling: str = "stride", stride: int = 3, model_frames: int = 8) -> list[int]:
    """Indices of the frames ViCLIP sees. "stride": every `stride`-th frame from the first (V2VBench's
    `load_video(stride=3)`); "uniform": InternVideo's demo rule (`frames2tensor`), every
    (num_frames // model_frames)-th frame, the first `model_frames` of them."""
    if sampling == "stride":
        return list(range(0, num_frames, stride))
    if sampling == "uniform":
        if num_frames < model_frames:
            raise ValueError(f"uniform sampling needs at least {model_frames} frames, got {num_frames}")
        return list(range(0, num_frames, num_frames // model_frames))[:model_frames]
    raise ValueError(f"sampling {sampling!r}: choose one of {', '.join(SAMPLING)}")


def alignment_score(video_embedding: torch.Tensor, text_embedding: torch.Tensor) -> float:
    """V2VBench's score: cos(video, text) of the two (D,) embeddings, in float32 as V2VBench computes it."""
    v = F.normalize(video_embedding.float().flatten(), dim=0)
    t = F.normalize(text_embedding.float().flatten(), dim=0)
    return float(v @ t)


class ViClipEncoder:
    """A ViClip with V2VBench's preprocessing and tokenizer: `video_embedding(frames)`, `text_embedding(prompt)`."""

    def __init__(self, model: ViClip, name: str, device: str | torch.device = "cpu", tiny: bool = False) -> None:
        self.model = model.eval().to(device)
        self.config: ViClipConfig = model.config
        self.name, self.device, self.tiny = name, torch.device(device), tiny
        self.preprocessing = viclip_preprocess(self.config.image_size)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """CLIP BPE ids (N, context_length): start token, text, end token; truncated with the end token last."""
        return open_clip.tokenize(list(texts), context_length=self.config.context_length)

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        return self.model.encode_text(self.tokenize([prompt]).to(self.device))[0].float().cpu()

    @torch.no_grad()
    def video_embedding(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) uint8 or float in [0, 1], T = 1 or the model's frame count -> (embed_dim,)."""
        dtype = next(self.model.parameters()).dtype
        x = self.preprocessing(frames).to(self.device, dtype)[None]
        return self.model.encode_video(x)[0].float().cpu()


def read_viclip_state(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ViCLIP checkpoint: a `.safetensors` file, or a torch file (`{"model": state}` as
    released, or the state itself) read with weights_only: no pickled objects are executed."""
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise MetricError(
            f"ViCLIP checkpoint {str(file)!r} holds pickled objects besides tensors, which vedit does not load "
            f"(torch.load weights_only): save its tensors alone (torch.save(ckpt['model'], path)) where you trust "
            f"the file, or give a .safetensors file") from None
    except Exception as e:  # noqa: BLE001 - torch and safetensors raise several types for unreadable files
        raise MetricError(f"cannot read ViCLIP checkpoint {str(file)!r}: {type(e).__name__}: {e}") from e
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MetricError(f"ViCLIP checkpoint {str(file)!r} is not a state dict (nor {{'model': state dict}})")
    return state


def _checkpoint_file(source: str, filename: str) -> Path:
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise MetricError(f"ViCLIP folder {source!r} has no {filename} (metrics.options.viclip_text.filename)")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(source, filename))


def load_viclip(source: str = VICLIP_MODEL, filename: str = VICLIP_FILE,
                device: str | torch.device = "cpu") -> ViClipEncoder:
    """ViCLIP from a Hub repo id (its `filename` in the Hugging Face cache; HF_HUB_OFFLINE is honoured),
    a folder holding `filename`, or a checkpoint file."""
    file = load_or_explain("ViCLIP", source, "viclip_text.model", lambda: _checkpoint_file(source, filename))
    state = read_viclip_state(file)
    try:
        config = viclip_config_from_state(state)
    except KeyError as e:
        raise MetricError(f"ViCLIP checkpoint {str(file)!r} has no {e.args[0]}: not a ViCLIP checkpoint") from None
    with torch.device("meta"):
        model = ViClip(config)
    try:
        mapped = viclip_state_from_released(state)
        model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True, assign=True)
    except (RuntimeError, ValueError) as e:
        raise MetricError(f"ViCLIP checkpoint {str(file)!r}: {e}") from e
    model.text_encoder.attn_mask = model.text_encoder.build_causal_mask()  # a buffer, not in the state dict
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise MetricError(f"ViCLIP checkpoint {str(file)!r} leaves some of the model's tensors unset")
    return ViClipEncoder(model, name=f"{source}" if Path(source).expanduser().exists() else f"{source}/{filename}",
                         device=device)


def _init_temporal(model: ViClip) -> ViClip:
    # ViCLIP starts its temporal embeddings at zero; random ones make tests see the frame order
    nn.init.normal_(model.vision_encoder.temporal_positional_embedding, std=0.02)
    return model


def tiny_viclip(seed: int = 0, device: str | torch.device = "cpu") -> ViClipEncoder:
    """ViClip at tiny sizes (`TINY_VICLIP`) with random weights (seeded); no download. Values are meaningless."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _init_temporal(ViClip(TINY_VICLIP))
    return ViClipEncoder(model, name=f"tiny-viclip-{seed}", device=device, tiny=True)


def random_viclip(seed: int = 0, device: str | torch.device = "cpu") -> ViClipEncoder:
    """ViCLIP-L/14 at its real size with random weights (seeded): the compute of the real model, for timing."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _init_temporal(ViClip(VICLIP_L14))
    return ViClipEncoder(model, name=f"random ViCLIP-L/14 (seed {seed})", device=device, tiny=True)


@METRICS.register("viclip_text")
class ViClipText(Metric):
    """V2VBench's Video Text Alignment: cos(ViCLIP video embedding, target prompt embedding).

    `model`: a Hub repo id holding `filename`, a folder holding it, a checkpoint file, "tiny"
    (`tiny_viclip`, tests) or "random" (ViCLIP-L/14 with random weights, timing). `sampling` /
    `stride`: which frames the model sees (`sample_frames`; V2VBench: "stride", 3). `otherwise`: what a
    video gets whose stride sampling does not give the model's 8 frames (V2VBench's code fails there,
    so no V2VBench number exists to match): "uniform" (InternVideo's demo rule) or "error". The model
    loads on the first call."""

    name = "viclip_text"
    prompts_needed = ("target_prompt",)
    higher_is_better = True

    def __init__(self, model: str = VICLIP_MODEL, filename: str = VICLIP_FILE, sampling: str = "stride",
                 stride: int = 3, otherwise: str = "uniform", device: str | torch.device = "cpu",
                 encoder: ViClipEncoder | None = None) -> None:
        if otherwise not in ("uniform", "error"):
            raise MetricError(f"metrics.options.viclip_text.otherwise {otherwise!r}: choose uniform or error")
        if sampling not in SAMPLING:
            raise MetricError(f"metrics.options.viclip_text.sampling {sampling!r}: choose one of {', '.join(SAMPLING)}")
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise MetricError(f"metrics.options.viclip_text.stride must be a positive integer, got {stride!r}")
        self.model_id, self.filename, self.sampling, self.stride = model, filename, sampling, stride
        self.otherwise = otherwise
        self.device, self._encoder = device, encoder
        if encoder is not None:
            self._name = encoder.name
        elif model in ("tiny", "random"):
            self._name = f"{model}-viclip"
        else:
            self._name = model if os.path.exists(os.path.expanduser(model)) else f"{model}/{filename}"
        frames = (f"frames 0, {stride}, {2 * stride}, ... (V2VBench's stride {stride}; where that is not 8 frames: "
                  f"{'InternVideo demo rule' if otherwise == 'uniform' else 'an error'})" if sampling == "stride" else
                  "8 frames by InternVideo's demo rule (every T//8-th frame, the first 8)")
        self.convention = (f"raw cosine in [-1, 1] of the L2-normalised ViCLIP video embedding and target-prompt "
                           f"embedding (CLIP BPE, 32 tokens); {frames}, the model takes 8 (1 frame: the mean temporal "
                           f"embedding); each frame 8-bit PIL bicubic shortest-side resize to 224, centre crop 224 "
                           f"(torchvision), OpenAI CLIP mean/std; {self._name}")

    @property
    def encoder(self) -> ViClipEncoder:
        if self._encoder is None:
            if self.model_id == "tiny":
                self._encoder = tiny_viclip(device=self.device)
            elif self.model_id == "random":
                self._encoder = random_viclip(device=self.device)
            else:
                self._encoder = load_viclip(self.model_id, self.filename, self.device)
        return self._encoder

    def models(self, task: EditTask) -> dict[str, Any]:
        tiny = self.model_id in ("tiny", "random") or (self._encoder is not None and self._encoder.tiny)
        return {"viclip": self._name, "viclip_tiny": tiny}

    def config(self, task: EditTask) -> dict[str, Any]:
        return {**super().config(task), "model": self._name, "sampling": self.sampling,
                "stride": self.stride if self.sampling == "stride" else None,
                "otherwise": self.otherwise if self.sampling == "stride" else None}

    def frame_indices(self, edited: torch.Tensor, task: EditTask) -> list[int]:
        """The frames the model sees, or a MetricError naming the video and the options that fit it."""
        n = 8 if self._encoder is None else self._encoder.config.num_frames
        total = int(edited.shape[0])
        try:
            idx = sample_frames(total, self.sampling, self.stride, n)
        except ValueError as e:
            raise MetricError(f"{self.name}: video {task.video.id!r}: {e}") from None
        if len(idx) not in (1, n) and self.otherwise == "uniform" and total >= n:
            return sample_frames(total, "uniform", model_frames=n)
        if len(idx) not in (1, n):
            lo, hi = (n - 1) * self.stride + 1, n * self.stride
            raise MetricError(
                f"{self.name}: video {task.video.id!r} has {total} frames; frames 0, {self.stride}, ... are "
                f"{len(idx)}, and ViCLIP takes {n} (one temporal embedding each; V2VBench's code fails on other "
                f"counts). Score videos of {lo}-{hi} frames (V2VBench's have 24), set "
                f"metrics.options.viclip_text.stride, or otherwise: uniform (InternVideo's demo rule)")
        return idx

    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        self.check_frames(edited, task)
        prompt = _prompt(task, "target_prompt", self.name)
        encoder = self.encoder
        idx = self.frame_indices(edited, task)
        video = encoder.video_embedding(edited[idx])
        return {self.name: alignment_score(video, encoder.text_embedding(prompt))}
