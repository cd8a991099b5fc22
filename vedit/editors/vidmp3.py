"""VidMP3: motion-preserved video editing with pose and position priors (MotionGuide on AnimateDiff).

One edit, top to bottom:

1. preprocessing: VAE latents of the source frames; per frame the MotionGuide input, i.e. the
   correspondence map (the first frame's subject pixels colour-coded by their coordinates and
   carried to every frame by SD-DINO nearest neighbours in the first frame, from the backbone's
   SD 1.5 UNet and DINOv2: vedit/estimators/correspondence.py) times the subject-masked depth map
   (Depth Anything V2).
2. tuning: SD 1.5 inflated with the AnimateDiff motion modules (`UNetMotionModel`), spatial
   self-attention made sparse-causal (frame i attends to frame 1 and frame i-1, Tune-A-Video),
   MotionGuide vectors added to the value input of every temporal self-attention,
   `V = W_V(z + lambda * g)`. Trained on the frames it will edit with the epsilon loss and the
   source prompt; trainable: MotionGuide, W_Q of the spatial self- and cross-attention, W_V of the
   motion modules.
3. inversion: DDIM inversion of the source latents with the tuned model (source prompt, no guidance).
4. sampling: DDIM from the inverted latents with the target prompt, classifier-free guidance and
   the same MotionGuide input.

The clip is the task's video: tuned, inverted and edited frames are the same frames. The paper's
clip (16 frames at stride 4 from the start, after VideoSwap) is a data option for every method:
`protocol=vidmp3_clip` (conf/protocol/). Longer videos run in overlapping windows of `window`
frames (vedit/ops/windows.py): every UNet call sees one window, with sparse-causal attention
anchored on the video's first frame in every window (the first window records that frame's inputs
to each spatial self-attention at each step; the later windows attend to them); the noise
predictions of overlapping frames are averaged with pyramid weights at every inversion and sampling
step; every window gets the paper's `tune_steps` tuning iterations (interleaved across windows).
Noise schedule: AnimateDiff's (linear betas; configs/inference/inference-v2.yaml).

Choices the paper leaves open (its appendix with the MotionGuide design is not public):
- Correspondence colours are the frame-1 subject coordinates normalised to the subject's bounding
  box, (u, v, 1): the same motion at another size gives the same colours; the constant third
  channel makes the product carry the segmented depth itself. Depth is divided by the video's
  maximum depth (larger = nearer), so depth changes between frames survive.
- MotionGuide works at a fixed 64x64 resolution: conv 3x3 (-> 32) SiLU, conv 3x3 stride 2
  (-> 64) SiLU, concatenation of a 2-D positional encoding (x, y and sin/cos at 2 frequencies),
  conv 3x3 (-> 128) SiLU, all without bias; the positional encoding is masked by the subject so
  that pixels outside it stay exactly zero and `mean / alpha` is the mean over the subject. The
  final zero-initialised linear layer is one per channel width of the temporal layers
  (320/640/1280 in SD 1.5), shared by the layers of that width.
- Subject masks come from `estimators.masks` (dataset annotations, a salient-object model, or
  none); without one the whole frame is the subject (alpha = 1). The result's info names the
  source (`mask_source`: dataset | gt | salient | none).
- Windows: 16 frames (AnimateDiff v1-5-2's training length; the paper's clip), overlap 4. A tuning
  iteration on a later window first runs the first window without gradients on the same noisy
  latents to record the anchor (the anchor carries no gradient there). `anchor: window` anchors
  each window on its own first frame, `tune_iterations: total` splits `tune_steps` over the windows.
- Classifier-free guidance 7.5 (the paper does not state it; AnimateDiff's default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vedit.editors import params as P
from vedit.editors.base import Editor, EditorError, PhaseTimer
from vedit.ops.attention import (SDPA_KERNELS, InjectedKVAttnProcessor, attend, attention_processors,
                                 self_attention_layers)
from vedit.estimators.correspondence import DINO_MODEL, DINO_SIZE, SD_SIZE
from vedit.ops.ddim import DDIM, classifier_free_guidance
from vedit.ops.windows import WEIGHTINGS, blend_windows, temporal_windows, window_weights
from vedit.registry import EDITORS
from vedit.task import EditResult, EditTask

GUIDE_INPUTS = ("multiply", "concat", "correspondence", "depth", "off")
BETA_SCHEDULES = ("linear", "scaled_linear")
TUNE_ITERATIONS = ("per_window", "total")
ANCHORS = ("video", "window")
DEPTHS = ("depth_anything", "estimators")
CORRESPONDENCES = ("sd_dino", "flow")
GUIDE_CHANNELS = {"multiply": 3, "concat": 4, "correspondence": 3, "depth": 1}


# ----------------------------------------------------------------------------- MotionGuide input

def correspondence_colours(corr: torch.Tensor, mask0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour-code frame 1's subject by its coordinates and carry the colours to every frame.

    corr: (T, 2, H, W) pixel coordinates in frame 0, NaN where none; mask0: (1, H, W) frame 0's
    subject. Returns colours (T, 3, H, W) = (u, v, 1) with (u, v) the frame-0 coordinates
    normalised to the subject's bounding box, zero where the pixel has no correspondence into the
    subject, and that validity (T, 1, H, W).
    """
    _, _, h, w = corr.shape
    ys, xs = torch.nonzero(mask0[0] > 0.5, as_tuple=True)
    if xs.numel() == 0:
        raise EditorError("vidmp3: the subject mask of the first frame is empty; MotionGuide needs a subject there")
    x0, x1, y0, y1 = xs.min().item(), xs.max().item(), ys.min().item(), ys.max().item()
    cx, cy = corr[:, 0:1], corr[:, 1:2]
    finite = torch.isfinite(cx) & torch.isfinite(cy)
    ix = cx.nan_to_num(-1).round().long()
    iy = cy.nan_to_num(-1).round().long()
    inside = finite & (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    flat = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).view(corr.shape[0], -1)
    in_subject = (mask0.reshape(-1)[flat] > 0.5).view_as(inside)
    valid = (inside & in_subject).float()
    u = ((cx.nan_to_num(0) - x0) / max(x1 - x0, 1)).clamp(0, 1)
    v = ((cy.nan_to_num(0) - y0) / max(y1 - y0, 1)).clamp(0, 1)
    return torch.cat([u, v, torch.ones_like(u)], 1) * valid, valid


def guide_input(mode: str, corr: torch.Tensor | None, depth: torch.Tensor | None,
                mask: torch.Tensor) -> torch.Tensor:
    """The MotionGuide input maps (T, C, H, W) for `mode` (see GUIDE_INPUTS); zero outside the subject."""
    colours = valid = seg_depth = None
    if mode in ("multiply", "concat", "correspondence"):
        colours, valid = correspondence_colours(corr.float(), mask[:1].float()[0])
        colours = colours * mask
    if mode in ("multiply", "concat", "depth"):
        d = depth.float().clamp_min(0)
        seg_depth = d / d.amax().clamp_min(1e-8) * mask
    if mode == "multiply":
        return colours * seg_depth
    if mode == "concat":
        return torch.cat([colours, seg_depth], 1)
    if mode == "correspondence":
        return colours
    if mode == "depth":
        return seg_depth
    raise ValueError(f"guide_input={mode!r}; choose one of {GUIDE_INPUTS}")


def positional_encoding(h: int, w: int, frequencies: tuple[int, ...] = (1, 2)) -> torch.Tensor:
    """(2 + 4 * len(frequencies), h, w): x, y in [-1, 1] and their sin/cos at each frequency."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    chans = [x, y]
    for k in frequencies:
        chans += [torch.sin(math.pi * k * x), torch.cos(math.pi * k * x),
                  torch.sin(math.pi * k * y), torch.cos(math.pi * k * y)]
    return torch.stack(chans)


class MotionGuide(nn.Module):
    """Per-frame motion vectors from (correspondence x depth) maps, invariant to the subject's size.

    convs without bias -> concat positional encoding (masked by the subject) -> conv -> spatial mean
    divided by alpha (the subject's fraction of the frame) -> zero-initialised linear per width.
    """

    def __init__(self, in_channels: int, widths: list[int], resolution: int = 64, hidden: int = 32,
                 features: int = 128) -> None:
        super().__init__()
        self.resolution = resolution
        self.encode = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.SiLU(),
            nn.Conv2d(hidden, 2 * hidden, 3, stride=2, padding=1, bias=False), nn.SiLU(),
        )
        pe = positional_encoding(resolution // 2, resolution // 2)
        self.register_buffer("pos", pe, persistent=False)
        self.fuse = nn.Sequential(nn.Conv2d(2 * hidden + pe.shape[0], features, 3, padding=1, bias=False), nn.SiLU())
        self.out = nn.ModuleDict({str(c): nn.Linear(features, c, bias=False) for c in sorted(set(widths))})
        for lin in self.out.values():
            nn.init.zeros_(lin.weight)

    def features(self, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """maps (T, C, H, W), subject mask (T, 1, H, W) -> pooled features (T, features)."""
        size = (self.resolution, self.resolution)
        x = F.interpolate(maps, size=size, mode="area")
        m = F.interpolate(mask, size=(self.resolution // 2,) * 2, mode="area")
        x = self.encode(x)
        x = self.fuse(torch.cat([x, self.pos.to(x.dtype).expand(x.shape[0], -1, -1, -1) * m], 1))
        alpha = m.mean(dim=(1, 2, 3)).clamp_min(1.0 / m[0].numel())
        return x.mean(dim=(2, 3)) / alpha[:, None]

    def forward(self, maps: torch.Tensor, mask: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per channel width c: (T, c) vectors for the temporal attention layers of that width."""
        feats = self.features(maps, mask)
        return {int(c): lin(feats) for c, lin in self.out.items()}


# ----------------------------------------------------------------------------- attention processors

@dataclass
class GuideState:
    """What the processors read during one UNet call: frames per clip, the MotionGuide vectors and
    the sparse-causal anchor: "clip" (the clip's own first frame), "record" (the same, kept per
    layer in `anchors`: the window that holds the video's first frame) or "kept" (the kept one)."""

    num_frames: int = 1
    weight: float = 0.0
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)  # width -> (frames, width)
    anchor: str = "clip"
    anchors: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (batch, tokens, C)


def sparse_causal_kv(state: GuideState):
    """K/V source for spatial self-attention: frame i sees [anchor; frame i-1] (frame 1 sees itself
    twice); the anchor is the clip's first frame, or the video's kept by `state` (see GuideState)."""

    def kv(name: str, x: torch.Tensor) -> torch.Tensor:
        f = state.num_frames
        clips = x.view(-1, f, *x.shape[1:])  # (batch, frames, tokens, C)
        prev = (torch.arange(f, device=x.device) - 1).clamp_min(0)
        if state.anchor == "kept":
            first = state.anchors[name].to(x.dtype)[:, None]
        else:
            first = clips[:, :1]
            if state.anchor == "record":
                state.anchors[name] = first[:, 0].detach()
        return torch.cat([first.expand_as(clips), clips[:, prev]], dim=2).flatten(0, 1)

    return kv


class MotionGuideAttnProcessor:
    """Temporal self-attention of a motion module with `V = W_V(z + weight * g)`.

    The motion module lays its input out as (batch * H * W, frames, C); g is one vector per frame
    (frames, C), so it broadcasts over the batch (both guidance branches) and spatial positions.
    """

    def __init__(self, name: str, state: GuideState) -> None:
        self.name = name
        self.state = state

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError(f"{self.name}: MotionGuide injection expects a motion module's self-attention")
        g = self.state.vectors.get(hidden_states.shape[-1])
        value_in = hidden_states
        if g is not None and self.state.weight != 0:
            if g.shape[0] != hidden_states.shape[1]:
                raise ValueError(f"{self.name}: {g.shape[0]} MotionGuide vectors for {hidden_states.shape[1]} frames")
            value_in = hidden_states + self.state.weight * g.to(hidden_states.dtype)
        return attend(attn, hidden_states, hidden_states, value_in)


def temporal_attention_layers(unet: nn.Module) -> list[str]:
    """Names of the motion modules' temporal self-attentions (attn1 and attn2 of each block)."""
    return [n for n, _ in unet.named_modules() if "motion_modules" in n and n.endswith(("attn1", "attn2"))]


def trainable_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    """W_Q of the spatial self- and cross-attention, W_V of the motion modules' temporal attention."""
    out = {}
    for name, p in unet.named_parameters():
        spatial_q = ".attentions." in name and (".attn1.to_q." in name or ".attn2.to_q." in name)
        motion_v = "motion_modules" in name and (".attn1.to_v." in name or ".attn2.to_v." in name)
        if spatial_q or motion_v:
            out[name] = p
    return out


def build_motion_unet(backbone) -> nn.Module:
    """SD 1.5 UNet inflated with the backbone's motion adapter, on the backbone's device and dtype."""
    from diffusers import UNetMotionModel

    if backbone.motion_adapter is None:
        raise EditorError(f"vidmp3 needs the sd15-animatediff backbone family (motion adapter); "
                          f"got family {backbone.family!r}: set method.family=sd15-animatediff")
    with torch.device(backbone.device):
        unet = UNetMotionModel.from_unet2d(backbone.unet, backbone.motion_adapter)
    return unet.to(device=backbone.device, dtype=backbone.dtype).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- the editor

@EDITORS.register("vidmp3")
class VidMP3Editor(Editor):
    name = "vidmp3"
    estimators_used = ("flow", "depth", "depth_anything_model", "masks", "salient_model")
    SPEED_PARAMS = ("gradient_checkpointing", "vae_batch", "attention_kernels")
    PARAMS = {  # checked before any model is built
        "steps": P.integer(1), "guidance_scale": P.number(), "guide_weight": P.number(),
        "guide_input": P.choice(*GUIDE_INPUTS), "motion_guide": P.boolean(), "tune_steps": P.integer(0),
        "tune_lr": P.number(0, low_open=True),
        "guide_resolution": P.integer(8), "gradient_checkpointing": P.boolean(), "vae_batch": P.integer(1),
        "attention_kernels": P.subset(*SDPA_KERNELS, optional=True), "beta_schedule": P.choice(*BETA_SCHEDULES),
        "set_alpha_to_one": P.boolean(), "tune_iterations": P.choice(*TUNE_ITERATIONS),
        "anchor": P.choice(*ANCHORS), "depth": P.choice(*DEPTHS), "correspondence": P.choice(*CORRESPONDENCES),
        "sd_size": P.integer(8), "dino_size": P.integer(14),
    }

    def __init__(self, backbone, estimators=None, steps: int = 50, guidance_scale: float = 7.5,
                 guide_weight: float = 0.1, guide_input: str = "multiply", motion_guide: bool = True,
                 tune_steps: int = 100, tune_lr: float = 5e-4, window: int = 16, window_overlap: int = 4,
                 window_weighting: str = "pyramid", guide_resolution: int = 64,
                 gradient_checkpointing: bool = False, vae_batch: int = 8,
                 attention_kernels: Sequence[str] | None = None, beta_schedule: str = "linear",
                 set_alpha_to_one: bool = True, tune_iterations: str = "per_window", anchor: str = "video",
                 depth: str = "depth_anything", correspondence: str = "sd_dino", dino_model: str = DINO_MODEL,
                 sd_size: int = SD_SIZE, dino_size: int = DINO_SIZE) -> None:
        super().__init__(backbone, estimators)
        if guide_input not in GUIDE_INPUTS:
            raise ValueError(f"vidmp3: guide_input={guide_input!r}; choose one of {GUIDE_INPUTS}")
        if window < 2 or not 0 <= window_overlap < window or tune_steps < 0 or steps < 1:
            raise ValueError(f"vidmp3: window={window} must be >= 2, window_overlap={window_overlap} in "
                             f"[0, window), tune_steps={tune_steps} >= 0, steps={steps} >= 1")
        if window_weighting not in WEIGHTINGS:
            raise ValueError(f"vidmp3: window_weighting={window_weighting!r}; choose one of {WEIGHTINGS}")
        self.steps, self.guidance_scale = steps, guidance_scale
        self.guide_weight, self.guide_input = guide_weight, guide_input
        self.use_guide = motion_guide and guide_input != "off"
        self.tune_steps, self.tune_lr = tune_steps, tune_lr
        self.window, self.window_overlap, self.window_weighting = window, window_overlap, window_weighting
        self.guide_resolution, self.gradient_checkpointing = guide_resolution, gradient_checkpointing
        self.vae_batch = vae_batch
        self.attention_kernels = None if attention_kernels is None else list(attention_kernels)
        self.check_params({"beta_schedule": beta_schedule, "tune_iterations": tune_iterations, "anchor": anchor,
                           "depth": depth, "correspondence": correspondence, "sd_size": sd_size,
                           "dino_size": dino_size})
        self.beta_schedule, self.set_alpha_to_one = beta_schedule, bool(set_alpha_to_one)
        self.tune_iterations, self.anchor, self.depth = tune_iterations, anchor, depth
        self.correspondence, self.dino_model = correspondence, dino_model
        self.sd_size, self.dino_size = sd_size, dino_size
        self._unet = None

    # -- model pieces -------------------------------------------------------------------------

    @property
    def unet(self) -> nn.Module:
        """The inflated UNet, built once per editor; tuning changes are undone after every edit."""
        if self._unet is None:
            self._unet = build_motion_unet(self.backbone)
        return self._unet

    def scheduler(self):
        """AnimateDiff's noise schedule (configs/inference/inference-v2.yaml, the v1-5-2 motion module's,
        and configs/training/v1/training.yaml: `linear` betas 0.00085-0.012, steps_offset 1; built
        with DDIMScheduler(**kwargs), i.e. set_alpha_to_one=True) on the backbone's other settings."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config({**self.backbone.scheduler_config, "beta_schedule": self.beta_schedule,
                                          "set_alpha_to_one": self.set_alpha_to_one})

    @property
    def max_frames(self) -> int:
        return int(self.unet.config.motion_max_seq_length)

    def processors(self, state: GuideState) -> dict[str, object]:
        """Sparse-causal spatial self-attention; MotionGuide injection in the temporal attention."""
        kv = sparse_causal_kv(state)
        procs: dict[str, object] = {n: InjectedKVAttnProcessor(n, kv) for n in self_attention_layers(self.unet, "all")}
        if self.use_guide:
            procs.update({n: MotionGuideAttnProcessor(n, state) for n in temporal_attention_layers(self.unet)})
        return procs

    def make_guide(self, seed: int) -> MotionGuide:
        widths = [self.unet.get_submodule(n).to_v.in_features for n in temporal_attention_layers(self.unet)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            guide = MotionGuide(GUIDE_CHANNELS[self.guide_input], widths, resolution=self.guide_resolution)
        return guide.to(self.device)

    def _autocast(self):
        dtype = self.backbone.dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype in (torch.float16, torch.bfloat16))

    def eps(self, latents: torch.Tensor, t: torch.Tensor | int, text: torch.Tensor) -> torch.Tensor:
        """latents (B, T, 4, h, w), text (B, 77, D) -> predicted noise (B, T, 4, h, w) in float32."""
        f = latents.shape[1]
        with self._autocast():
            out = self.unet(latents.permute(0, 2, 1, 3, 4).to(self.backbone.dtype), t,
                            encoder_hidden_states=text.repeat_interleave(f, dim=0)).sample
        return out.permute(0, 2, 1, 3, 4).float()

    def windows(self, num_frames: int) -> list[tuple[int, int]]:
        return temporal_windows(num_frames, self.window, self.window_overlap)

    def anchor_mode(self, start: int, num_windows: int) -> str:
        """The sparse-causal anchor of the window starting at `start` (GuideState.anchor): with
        `anchor: video` and several windows, the first window keeps its first frame (the video's)
        for the others; else every window anchors on its own first frame."""
        if self.anchor == "window" or num_windows == 1:
            return "clip"
        return "record" if start == 0 else "kept"

    def eps_video(self, latents: torch.Tensor, t: torch.Tensor | int, text: torch.Tensor, state: GuideState,
                  vectors: dict[int, torch.Tensor]) -> torch.Tensor:
        """Noise prediction for a whole video (B, T, 4, h, w): one UNet call per window, overlapping
        frames averaged with the window weights; `vectors` are the MotionGuide vectors of all T frames.
        Windows run in order, so the first one (frame 0) records the anchor the later ones read."""
        windows = self.windows(latents.shape[1])

        def window_eps(start: int, end: int) -> torch.Tensor:
            state.num_frames, state.anchor = end - start, self.anchor_mode(start, len(windows))
            state.vectors = {c: v[start:end] for c, v in vectors.items()}
            return self.eps(latents[:, start:end], t, text)

        weights = window_weights(self.window, self.window_weighting)
        try:
            return blend_windows(window_eps, latents.shape[1], windows, weights, dim=1)
        finally:
            state.anchor = "clip"
            state.anchors.clear()

    # -- inputs -------------------------------------------------------------------------------

    def check_inputs(self, task: EditTask) -> None:
        super().check_inputs(task)
        if self.window > self.max_frames:
            raise EditorError(f"vidmp3: window={self.window} frames; the AnimateDiff motion module takes at most "
                              f"{self.max_frames} frames per call: set method.params.window <= {self.max_frames}")

    def guide_maps(self, task: EditTask) -> tuple[torch.Tensor, torch.Tensor, str]:
        """MotionGuide input maps (T, C, H, W), the subject mask and its source, on the device."""
        mask, source = self.estimators.subject_mask(task)
        mask = (mask.float() > 0.5).float()
        if not mask[0].any():
            raise EditorError(f"vidmp3: the subject mask ({source}) of video {task.video.id!r} is empty in the "
                              "first frame; MotionGuide needs the subject there: try another estimators.masks "
                              "(none: the whole frame)")
        corr = None
        if self.guide_input != "depth":  # the paper's SD-DINO on the (untuned) SD 1.5 UNet, or chained flow
            corr = self.estimators.correspondence(task, self.correspondence, backbone=self.backbone,
                                                  prompt=task.source_prompt, dino_model=self.dino_model,
                                                  sd_size=self.sd_size, dino_size=self.dino_size)
        depth = None
        if self.guide_input != "correspondence":
            if self.depth == "depth_anything":  # the paper's: ground truth where the dataset has it, else DA V2
                depth = self.estimators.depth(task, method="gt" if "depth" in task.side else "depth_anything")
            else:
                depth = self.estimators.depth(task, model=self.backbone.depth_estimator)
        maps = guide_input(self.guide_input, corr, depth, mask)
        return maps.to(self.device), mask.to(self.device), source

    # -- phases -------------------------------------------------------------------------------

    def tune_schedule(self, num_frames: int, rng: torch.Generator | None = None) -> list[tuple[int, int]]:
        """The window of each tuning iteration. per_window: `tune_steps` iterations for every window
        the edit runs on (the paper's 100 per 16-frame clip), interleaved (1, 2, .., k, 1, 2, ..) so no
        window is tuned last; total: `tune_steps` in all, each on a uniformly drawn window."""
        windows = self.windows(num_frames)
        if len(windows) == 1 or self.tune_iterations == "per_window":
            return windows * self.tune_steps
        return [windows[int(k)] for k in torch.randint(len(windows), (self.tune_steps,), generator=rng)]

    def tune(self, latents: torch.Tensor, text: torch.Tensor, state: GuideState, guide: MotionGuide | None,
             maps: torch.Tensor | None, mask: torch.Tensor | None, generator: torch.Generator,
             window_rng: torch.Generator | None = None) -> torch.Tensor:
        """One-shot tuning on latents (T, 4, h, w), one window per iteration; returns the losses (CPU).

        A video that fits in one window is tuned whole every iteration. With `anchor: video`, an
        iteration on a window after the first first runs the first window without gradients on the
        same noisy latents (the video's noise at the iteration's timestep) to record frame 0's
        anchor, as sampling does. No host synchronisation per iteration: the window is drawn on the
        CPU, the timestep and noise on the device, and the fused (CUDA) or foreach Adam and the
        GradScaler keep their checks on the device.
        """
        params = list(trainable_parameters(self.unet).values()) + (list(guide.parameters()) if guide else [])
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.backbone.dtype == torch.float16)
        fused = self.device.type == "cuda" and all(p.dtype == torch.float32 for p in params)
        opt = torch.optim.Adam(params, lr=self.tune_lr, fused=fused or None, foreach=None if fused else True)
        alphas = self.scheduler().alphas_cumprod.to(self.device, torch.float32)
        windows = self.windows(latents.shape[0])
        losses = []
        if self.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        try:
            for start, end in self.tune_schedule(latents.shape[0], window_rng):
                t = torch.randint(0, alphas.numel(), (1,), device=self.device, generator=generator)
                noise = torch.randn(latents.shape, device=self.device, generator=generator)
                a = alphas[t].view(1, 1, 1, 1)
                noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
                state.anchor = self.anchor_mode(start, len(windows))
                if state.anchor == "kept":
                    first = windows[0]
                    with torch.no_grad():
                        state.anchor, state.num_frames = "record", first[1] - first[0]
                        if guide is not None:
                            state.vectors = guide(maps[:first[1]], mask[:first[1]])
                        self.eps(noisy[None, :first[1]], t, text)
                    state.anchor = "kept"
                state.num_frames = end - start
                if guide is not None:
                    state.vectors = guide(maps[start:end], mask[start:end])
                pred = self.eps(noisy[None, start:end], t, text)[0]
                loss = F.mse_loss(pred, noise[start:end])
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                losses.append(loss.detach())
        finally:
            state.anchor = "clip"
            state.anchors.clear()
            if self.gradient_checkpointing:
                self.unet.disable_gradient_checkpointing()
        return torch.stack(losses).cpu() if losses else torch.zeros(0)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.backbone.decode_latents(latents[i:i + self.vae_batch]).cpu()
                          for i in range(0, latents.shape[0], self.vae_batch)])

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.backbone.encode_images(frames[i:i + self.vae_batch]).float()
                          for i in range(0, frames.shape[0], self.vae_batch)])

    def _edit(self, task: EditTask) -> EditResult:
        self.check_inputs(task)
        bb, timer = self.backbone, PhaseTimer(self.backbone.device)
        state = GuideState(weight=self.guide_weight)
        generator = torch.Generator(self.device).manual_seed(task.seed)
        window_rng = torch.Generator().manual_seed(task.seed)
        with timer.phase("preprocessing"):
            latents = self._encode(task.video.frames)  # (T, 4, h, w) float32
            text = bb.encode_prompt(["", task.source_prompt, task.target_prompt])
            uncond, source, target = text[:1], text[1:2], text[2:3]
            maps = mask = guide = None
            mask_source = "none"  # no MotionGuide, no subject mask
            if self.use_guide:
                maps, mask, mask_source = self.guide_maps(task)
                guide = self.make_guide(task.seed)
        saved = {name: p.data for name, p in trainable_parameters(self.unet).items()}
        try:
            with attention_processors(self.unet, self.processors(state)):
                with timer.phase("tuning"):
                    master = torch.float32 if bb.dtype in (torch.float16, torch.bfloat16) else bb.dtype
                    for p in trainable_parameters(self.unet).values():  # fp32 master copies, originals kept aside
                        p.data = p.data.to(master, copy=True)
                        p.requires_grad_(True)
                    try:
                        losses = self.tune(latents, source, state, guide, maps, mask, generator, window_rng)
                    except torch.OutOfMemoryError as e:
                        hint = "" if self.gradient_checkpointing else "method.params.gradient_checkpointing=true or "
                        raise EditorError(f"vidmp3: tuning on video {task.video.id!r} ran out of GPU memory; set "
                                          f"{hint}a smaller method.params.window") from e
                with torch.no_grad():
                    vectors = guide(maps, mask) if guide is not None else {}
                    with timer.phase("inversion"):
                        ddim = DDIM(self.scheduler(), self.steps)
                        x_t = ddim.invert(
                            latents, lambda x, t, i: self.eps_video(x[None], t, source, state, vectors)[0])[0]
                    with timer.phase("sampling"):
                        cfg_text = torch.cat([uncond, target])

                        def eps_cfg(x, t, i):
                            eps = self.eps_video(torch.stack([x, x]), t, cfg_text, state, vectors)
                            return classifier_free_guidance(eps, self.guidance_scale)[0]

                        edited = ddim.sample(x_t, eps_cfg)
                        frames = self._decode(edited)
        finally:
            for name, p in trainable_parameters(self.unet).items():
                p.requires_grad_(False)
                p.grad = None
                p.data = saved[name]
        return timer.result(frames, windows=[list(w) for w in self.windows(latents.shape[0])],
                            tune_iterations=len(losses),
                            mask_source=mask_source,
                            tune_loss_first=float(losses[0]) if len(losses) else None,
                            tune_loss_last=float(losses[-1]) if len(losses) else None)
