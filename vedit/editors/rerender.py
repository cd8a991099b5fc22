"""`rerender`: Rerender-A-Video (Yang et al., SIGGRAPH Asia 2023), zero-shot video-to-video translation.

Key frames (every `key_interval`-th frame, plus the last frame so that every other frame lies
between two key frames) are translated one after the other with SD 1.5 + ControlNet (Canny or HED
edges), DDIM, classifier-free guidance, starting from the input frame's latent noised to
`x0_strength` (SDEdit: denoising starts at step int(steps * (1 - x0_strength))). Every key frame
uses the same seeded noise. The prompt is the target prompt followed by `added_prompt`, the
unconditional branch uses `negative_prompt` (the released code's strings). The hierarchical
cross-frame constraints (paper Sec. 4.1, Fig. 4b), each a switch with its period given as
fractions of the schedule, each end inclusive or not as the released code compares it
(`period_steps`, `PERIOD_ENDS`; at 20 steps: shape fusion 0..2, pixel fusion 11..15, AdaIN 16..19):

- cross-frame attention (all steps): in every decoder self-attention layer the keys/values come
  from [first key frame; previous key frame] at the same step and guidance branch (the current
  frame is excluded); the first key frame uses plain self-attention and its inputs are recorded.
- shape-aware fusion, period (0, 0.1): the predicted x0 outside occlusion is replaced by the first
  key frame's predicted x0 at the same step, warped by the flow to the first frame (divided by 8
  for latents). With x0_strength < 0.9 the period ends before the start step, so it does nothing:
  that is the paper's default behaviour and is kept.
- pixel-aware fusion, period (0.5, 0.8): the frame is first sampled without it (the direct
  result); the first and previous key-frame outputs warped to this frame fill the non-occluded
  pixels and the direct result the rest (Eq. 10); that pixel reference is encoded with the
  fidelity-oriented encoder (`vedit.ops.vae`) and, at each step of the period, the latent is
  pulled toward the noised reference outside occlusion (Eq. 11, structure-guided inpainting) with
  weight `mask_strength` 0.5; the latent's noise direction is rescaled to keep its noise level
  (sqrt(1 - w^2), times `inner_strength` 0.9 in the flat interior of the mask).
  The direct and fused passes are identical until the period starts, so the fused pass resumes
  from the direct pass's latent at that step (`reuse_direct_pass`; off = run both in full).
- colour (AdaIN), period (0.8, 1.0): the predicted x0 is matched to the first key frame's
  per-channel mean and std at the same step.

Flow between key frames (`key_flow`): `direct` (default, as the paper and released code) estimates
the flow from key frame k straight to the first key frame and to the previous key frame
(`Estimators.flow_between`); `chained` composes the adjacent-frame flows instead
(`vedit.ops.warp.chain_to_first`), occluded where the chain breaks. Occlusion (`occlusion`) is the
released code's forward-backward rule (`vedit.ops.warp.rerender_occlusion`, plain norms) recomputed from
the flows, for key frames and propagation alike ("estimator": the estimator's own masks). Occlusion
masks are dilated (9x9) and blurred (Gaussian, kernel 9, sigma 18) before blending, as in the reference
implementation. The pixel reference is noised with the same noise for every key frame (the released
code reseeds before each; `pixel_fusion.reference_noise`), and its fidelity-oriented encoding rejects
latent cells by the released rule (`pixel_fusion.fidelity_mask`, `vedit.ops.vae`).

Colour correction (off by default): the inputs' Lab histograms are matched to a translation of frame
0 from pure noise (paper Sec. 5.4), then the input's luminosity is put back (`restore_luminosity`, as
the released code's luminosity blend does).

Schedules: `sequential` is the loop above, one key frame and one guidance pair per UNet call.
`wavefront` (default) runs the same per-frame arithmetic with independent work batched into one
UNet+ControlNet call (per-row timesteps and control images): key frame n's step s reads the
first and previous key frames' step-s features, so its direct pass runs one step behind key
frame n-1, and its fused pass starts once its direct pass and key frame n-1 are finished (sharing
calls with key frame n+1's direct pass). `wavefront_plan` lists the calls; see its docstring. On CUDA the
calls are replayed from CUDA graphs, one per call shape (`sampling_graphs`, `WavefrontGraphs`): the same frames.

Non-key frames come from `vedit.ops.propagation.propagate_keyframes` (EbSynth-style guided patch
synthesis and temporal-aware blending).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from vedit.editors import params as P
from vedit.editors.base import Editor, EditorError, PhaseTimer, round_up
from vedit.ops.attention import (SDPA_KERNELS, InjectedKVAttnProcessor, attention_processors, sdpa_kernels,
                                 self_attention_layers)
from vedit.ops.cuda_graphs import Captured, capture
from vedit.ops.ddim import DDIM, classifier_free_guidance
from vedit.ops.propagation import EDGE_GUIDES, GUIDE_WARPS, POS_GUIDES, key_chains, propagate_keyframes
from vedit.ops.transfer import to_device
from vedit.ops.vae import MASK_RULES, backbone_fidelity_encode
from vedit.ops.warp import backward_warp, chain_to_first, pixel_grid, rerender_occlusion, resize_flow
from vedit.registry import EDITORS
from vedit.task import EditResult, EditTask

SCHEDULES = ("wavefront", "sequential")
KEY_FLOWS = ("direct", "chained")
OCCLUSIONS = ("released", "estimator")
ADDED_PROMPT = "best quality, extremely detailed"
NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
                   "cropped, worst quality, low quality")
PROPAGATION_PARAMS = set(inspect.signature(propagate_keyframes).parameters) - {
    "source", "key_indices", "key_outputs", "flow_fwd", "flow_bwd", "occ_fwd", "occ_bwd", "chain_batch", "cuda_graphs",
    "device", "seed"}
# The released code's EbSynth binary call (video_blend.py): 12 search/vote iterations per level with the
# style term at weight 1 (its default), pyramid down to a short side of 2 * patch_size + 1 = 11 px.
# (start inclusive, end inclusive) per period, as the released code compares steps with steps * period
PERIOD_ENDS = {"shape_fusion": (True, True), "pixel_fusion": (False, False), "color_adain": (True, True)}
SHAPE_FUSION = {"enabled": True, "period": (0.0, 0.1)}
PIXEL_FUSION = {"enabled": True, "period": (0.5, 0.8), "mask_strength": 0.5, "inner_strength": 0.9,
                "smooth_boundary": True, "fidelity_threshold": 0.25, "fidelity_mask": "released",
                "reference_noise": "shared"}
REFERENCE_NOISE = ("shared", "per_key")
COLOR_ADAIN = {"enabled": True, "period": (0.8, 1.0)}


# ----------------------------------------------------------------------------- building blocks

def period_steps(period: tuple[float, float] | list[float], steps: int,
                 ends: tuple[bool, bool] = (True, True)) -> range:
    """Step indices i with steps * p0 <= i <= steps * p1, each end inclusive or exclusive per `ends`.

    The released code's comparisons: shape fusion and AdaIN include both ends, pixel fusion excludes
    both (20 steps, (0.5, 0.8): 11..15)."""
    lo, hi = period[0] * steps, period[1] * steps
    first = math.ceil(lo - 1e-6) if ends[0] else math.floor(lo + 1e-6) + 1
    last = math.floor(hi + 1e-6) if ends[1] else math.ceil(hi - 1e-6) - 1
    return range(first, last + 1)


def start_step(x0_strength: float, steps: int) -> int:
    """SDEdit start: x0_strength 0.75 of 20 steps starts at step int(20 * 0.25) = 5."""
    return min(int(steps * (1.0 - x0_strength) + 1e-6), steps - 1)


def adain(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Match x's per-sample, per-channel mean and (population) std to ref's."""
    dims = tuple(range(2, x.ndim))
    mx, sx = x.mean(dims, keepdim=True), x.std(dims, keepdim=True, correction=0)
    mr, sr = ref.mean(dims, keepdim=True), ref.std(dims, keepdim=True, correction=0)
    return (x - mx) / sx.clamp_min(1e-6) * sr + mr


def soften_occlusion(occ: torch.Tensor, dilate: int = 9, blur_kernel: int = 9, sigma: float = 18.0) -> torch.Tensor:
    """Occlusion (N, 1, H, W) in {0, 1} -> soft mask: 1 on occluded pixels, fading out around them."""
    grown = F.max_pool2d(occ, kernel_size=dilate, stride=1, padding=dilate // 2)
    return (TF.gaussian_blur(grown, [blur_kernel, blur_kernel], [sigma, sigma]) + occ).clamp(0, 1)


def pixel_reference(direct: torch.Tensor, warped_first: torch.Tensor, warped_prev: torch.Tensor,
                    occ_first: torch.Tensor, occ_prev: torch.Tensor) -> torch.Tensor:
    """Eq. 10: warped first output where visible from the first frame, else the warped previous
    output where visible from the previous frame, else the direct result (soft occlusion masks)."""
    fill = occ_prev * direct + (1 - occ_prev) * warped_prev
    return occ_first * fill + (1 - occ_first) * warped_first


def cell_min(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Downsample a [0, 1] mask to latent cells, keeping a cell's smallest value."""
    return 1 - F.max_pool2d(1 - mask, kernel_size=factor)


def flat_region(mask: torch.Tensor) -> torch.Tensor:
    """1 where a mask has no 3x3 gradient (the interior of its regions), 0 along its edges."""
    kx = torch.tensor([[-1.0, 0, 1], [-1, 0, 1], [-1, 0, 1]], dtype=mask.dtype, device=mask.device)
    kernels = torch.stack([kx, kx.T])[:, None]
    grad = F.conv2d(F.pad(mask, (1, 1, 1, 1), mode="replicate"), kernels).abs().sum(1, keepdim=True)
    return (grad == 0).to(mask.dtype)


def inpainting_rescale(weight: torch.Tensor, inner_strength: float, smooth_boundary: bool) -> torch.Tensor:
    """Scale of the latent's noise direction after blending with weight w toward a noised reference.

    Blending two independently noised latents lowers the noise level; sqrt(1 - w^2) restores it
    (times inner_strength for a little extra detail). Along mask edges (smooth_boundary) the plain
    linear blend 1 - w is kept so the seam does not get extra noise.
    """
    rescale = torch.maximum(1 - weight, (1 - weight ** 2).sqrt() * inner_strength)
    if smooth_boundary:
        flat = flat_region(weight)
        rescale = flat * rescale + (1 - flat) * (1 - weight)
    return rescale


def key_frame_indices(num_frames: int, key_interval: int) -> list[int]:
    """0, K, 2K, ... and the last frame."""
    keys = list(range(0, num_frames, key_interval))
    return keys if keys[-1] == num_frames - 1 else keys + [num_frames - 1]


def chained_flow(flow_bwd: torch.Tensor, occ_bwd: torch.Tensor, src: int,
                 dst: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow (1, 2, H, W) from frame src to an earlier frame dst (pixel p of src sits at p + flow in
    dst), chained over adjacent backward flows, and its occlusion (1, 1, H, W): 1 where the chain
    breaks."""
    return flow_from_correspondence(chain_to_first(flow_bwd[dst:src], occ_bwd[dst:src])[-1:])


def flow_from_correspondence(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2, H, W) coordinates in another frame (NaN where none) -> (flow, occlusion)."""
    occ = torch.isnan(coords[:, :1]).float()
    return torch.nan_to_num(coords - pixel_grid(*coords.shape[-2:], coords.dtype, coords.device), nan=0.0), occ


def match_colour(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Histogram-match (T, 3, H, W) images to a (3, H', W') reference, per channel in Lab."""
    def lab(img: torch.Tensor) -> np.ndarray:
        return cv2.cvtColor(img.permute(1, 2, 0).float().cpu().numpy(), cv2.COLOR_RGB2Lab)

    q = np.linspace(0, 1, 256)
    ref_q = np.quantile(lab(reference).reshape(-1, 3), q, axis=0)
    out = []
    for img in images:
        x = lab(img)
        src_q = np.quantile(x.reshape(-1, 3), q, axis=0)
        for c in range(3):
            x[..., c] = np.interp(x[..., c], src_q[:, c], ref_q[:, c])
        out.append(torch.from_numpy(cv2.cvtColor(x, cv2.COLOR_Lab2RGB)).permute(2, 0, 1))
    return torch.stack(out).clamp(0, 1)


def restore_luminosity(images: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """The luminosity blend mode (W3C compositing SetLum/ClipColor): `images`' hue and saturation with
    `originals`' luminosity (0.299 R + 0.587 G + 0.114 B). (T, 3, H, W) in [0, 1]."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)

    def lum(x: torch.Tensor) -> torch.Tensor:
        return (x * weights).sum(1, keepdim=True)

    out = images + (lum(originals) - lum(images))
    l, low, high = lum(out), out.amin(1, keepdim=True), out.amax(1, keepdim=True)
    out = torch.where(low < 0, l + (out - l) * l / (l - low).clamp_min(1e-12), out)
    out = torch.where(high > 1, l + (out - l) * (1 - l) / (high - l).clamp_min(1e-12), out)
    return out.clamp(0, 1)


class KeyFrameAttention:
    """K/V source for cross-frame attention: records the current frame's attention inputs per
    step, and serves [first key frame; previous key frame] inputs recorded at the same step."""

    def __init__(self) -> None:
        self.first: dict[int, dict[str, torch.Tensor]] = {}
        self.prev: dict[int, dict[str, torch.Tensor]] = {}
        self.current: dict[int, dict[str, torch.Tensor]] = {}
        self.use_refs = False
        self._recording: dict[str, torch.Tensor] = {}
        self._refs: dict[str, torch.Tensor] = {}

    def begin_step(self, i: int) -> None:
        self._recording = self.current.setdefault(i, {})
        if self.use_refs:
            first, prev = self.first[i], self.prev[i]
            # [first; first] attends exactly like [first]: skip the copy for the second key frame
            self._refs = first if prev is first else {n: torch.cat([first[n], prev[n]], dim=1) for n in first}

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        self._recording[name] = x
        return self._refs[name] if self.use_refs else x

    def finish_frame(self, is_first: bool) -> None:
        if is_first:
            self.first = self.current
        self.prev, self.current, self.use_refs = self.current, {}, True


class WavefrontAttention:
    """K/V source for a batched call of several key-frame passes (2 rows each, [uncond; cond]).

    Features are kept per (key frame position, step) from the pass that the sequential loop would
    leave in place (the fused pass where it runs, else the direct pass). Row group j of a call at
    step s of key frame n attends to: itself (n = 0), the first key frame (n = 1, as the sequential
    loop does for [first; first]), or [first; key frame n-1] (n >= 2). When a call mixes K/V
    lengths, the shorter ones are doubled ([a; a] attends like [a], up to rounding) so that one
    attention call serves the whole batch; `fixed_length` doubles them in every call, so that the
    K/V length never varies (one attention shape per batch size).
    """

    def __init__(self, fixed_length: bool = False) -> None:
        self.features: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self._rows: list[tuple[int, int, bool]] = []
        self.fixed_length = fixed_length
        self.static: StaticKV | None = None  # set while a call is captured into a CUDA graph
        self.layout: dict[str, tuple[torch.Size, torch.dtype]] | None = None  # when set, each layer's input shape

    def begin_call(self, rows: list[tuple[int, int, bool]]) -> None:
        """rows: per row group (key frame position, step, whether to record its features)."""
        self._rows = rows

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.static is not None:
            return self.static(name, x)
        if self.layout is not None:
            self.layout[name] = (x.shape, x.dtype)
        single = len(self._rows) == 1
        firsts, seconds = [], []
        for j, (n, i, record) in enumerate(self._rows):
            own = x[2 * j: 2 * j + 2]
            if record:
                self.features.setdefault((n, i), {})[name] = own if single else own.clone()  # a view pins the batch
            firsts.append(own if n == 0 else self.features[(0, i)][name])
            seconds.append(self.features[(n - 1, i)][name] if n >= 2 else None)
        if all(s is None for s in seconds) and not self.fixed_length:
            return x if single and self._rows[0][0] == 0 else torch.cat(firsts)
        seconds = [f if s is None else s for f, s in zip(firsts, seconds)]
        return torch.cat([torch.cat(firsts), torch.cat(seconds)], dim=1)

    def release(self, n: int) -> None:
        for k in [k for k in self.features if k[0] == n]:
            del self.features[k]

    def fill(self, static: StaticKV, rows: list[tuple[int, int, bool]]) -> None:
        """Before a graph replay: the K/V this call reads, as `__call__` would serve it (fixed length)."""
        for mask, values in ((static.first_is_own, [n == 0 for n, _, _ in rows]),
                             (static.second_is_first, [n < 2 for n, _, _ in rows])):
            mask.copy_(to_device(torch.tensor(values).repeat_interleave(2).view(-1, 1, 1), mask.device))
        for name, (first, second) in static.buffers.items():
            for j, (n, i, _) in enumerate(rows):
                if n > 0:
                    first[2 * j: 2 * j + 2].copy_(self.features[(0, i)][name])
                if n >= 2:
                    second[2 * j: 2 * j + 2].copy_(self.features[(n - 1, i)][name])

    def record(self, static: StaticKV, rows: list[tuple[int, int, bool]]) -> None:
        """After a graph replay: keep the features of the rows that record (copies: the next replay overwrites)."""
        for name, own in static.inputs.items():
            for j, (n, i, keep) in enumerate(rows):
                if keep:
                    self.features.setdefault((n, i), {})[name] = own[2 * j: 2 * j + 2].clone()


class StaticKV:
    """`WavefrontAttention`'s K/V in a form a CUDA graph can capture: per layer (`layout`: its input's shape and
    dtype), buffers for the first and previous key frames' features (filled before each replay) and row masks
    choosing the layer's own input instead; always the fixed length [first; previous]. The same values as the
    eager path. The buffers are made before the capture: made inside it, replays gave wrong frames (H200)."""

    def __init__(self, rows: int, device: torch.device, layout: dict[str, tuple[torch.Size, torch.dtype]]) -> None:
        self.first_is_own = torch.zeros(rows, 1, 1, dtype=torch.bool, device=device)
        self.second_is_first = torch.zeros(rows, 1, 1, dtype=torch.bool, device=device)
        self.buffers = {name: (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                        for name, (shape, dtype) in layout.items()}
        self.inputs: dict[str, torch.Tensor] = {}  # each layer's input, as the graph writes it

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        first, second = self.buffers[name]
        self.inputs[name] = x
        first = torch.where(self.first_is_own, x, first)
        return torch.cat([first, torch.where(self.second_is_first, first, second)], dim=1)


class WavefrontGraphs:
    """The wavefront's UNet + ControlNet calls replayed from CUDA graphs (`sampling_graphs`), one per call shape.

    A shape's first call in the process runs eagerly: it pays the kernels' first-call set-up, which a capture
    should not record, and notes each attention layer's input shape. Its second call is captured and replayed,
    later ones replay. Cross-frame attention runs in its capturable form (`StaticKV`): the features a call
    reads are copied into the graph's buffers before the replay, the ones it records copied out after. Held
    by the editor, so the graphs (and their shared memory pool) serve every later cell of the process.
    """

    def __init__(self) -> None:
        self.layouts: dict[tuple, dict] = {}  # per call shape: its attention layers' input shapes
        self.captured: dict[tuple, Captured] = {}
        self.pool: tuple | None = None

    def __call__(self, sampler: _Sampler, inputs: list[torch.Tensor], rows: list[tuple[int, int, bool]]) -> torch.Tensor:
        """`sampler.forward(*inputs)` with `sampler.wave_attention` serving `rows`; the output is the graph's
        own tensor, overwritten by the next replay."""
        attention, key = sampler.wave_attention, tuple((v.shape, v.dtype) for v in inputs)
        if key not in self.layouts:
            attention.begin_call(rows)
            attention.layout = self.layouts[key] = {}
            try:
                return sampler.forward(*inputs)
            finally:
                attention.layout = None
        entry = self.captured.get(key)
        if entry is None:
            attention.static = static = StaticKV(inputs[0].shape[0], inputs[0].device, self.layouts[key])
            try:
                entry = self.captured[key] = capture(sampler.forward, inputs, self.pool)
            finally:
                attention.static = None
            entry.keep, self.pool = static, entry.graph.pool()
        attention.fill(entry.keep, rows)
        out = entry.replay(inputs)
        attention.record(entry.keep, rows)
        return out


Pass = tuple[int, bool, int]  # (key frame position, fused pass?, step)


def is_final_pass(n: int, fused: bool, i: int, fused_begin: int | None) -> bool:
    """Whether key frame n's direct or fused pass at step i is the one the sequential loop keeps
    (its features and x0 are what later key frames read)."""
    return fused == (fused_begin is not None and n > 0 and i >= fused_begin)


def wavefront_plan(num_keys: int, start: int, steps: int, fused_begin: int | None, cross_frame: bool,
                   first_steps: set[int], max_keys: int | None = None) -> list[list[Pass]]:
    """The batched UNet calls of the wavefront schedule, each a list of (key position, fused, step).

    Key frame n at step s needs, from earlier calls: key frame 0's step s (its attention features,
    and its x0 where `first_steps` holds s: shape fusion / AdaIN) and, with cross-frame attention,
    key frame n-1's step s from the pass that is final there (the fused pass from `fused_begin` on,
    None = no fused pass). Its fused pass starts once its direct pass and key frame n-1 are done
    (the pixel reference needs both outputs). Every call takes all passes that are ready, lowest
    key frame first (the critical path), at most `max_keys` of them.
    """
    def ready(n: int, i: int) -> bool:
        if n == 0:
            return True
        if (cross_frame or i in first_steps) and (0, i) not in done:
            return False
        return not (cross_frame and n >= 2 and (n - 1, i) not in done)

    active: dict[tuple[int, bool], int] = {(n, False): start for n in range(num_keys)}
    done: set[tuple[int, int]] = set()
    finished: set[int] = set()
    waiting: list[int] = []  # direct pass done, fused pass not started
    calls: list[list[Pass]] = []
    while active:
        batch = sorted(lane for lane, i in active.items() if ready(lane[0], i))[:max_keys]
        if not batch:
            raise RuntimeError("rerender: wavefront schedule stalled (a bug)")
        calls.append([(n, fused, active[(n, fused)]) for n, fused in batch])
        for n, fused in batch:
            i = active.pop((n, fused))
            if is_final_pass(n, fused, i, fused_begin):
                done.add((n, i))
            if i + 1 < steps:
                active[(n, fused)] = i + 1
            elif fused or fused_begin is None or n == 0:
                finished.add(n)
            else:
                waiting.append(n)
        for n in [n for n in waiting if n - 1 in finished]:
            waiting.remove(n)
            active[(n, True)] = fused_begin
    return calls


@dataclass
class KeyFrame:
    """What the sampler needs for one key frame."""

    index: int
    control: torch.Tensor  # (2, 3, H, W) for both guidance branches
    is_first: bool
    shape_flow: torch.Tensor | None = None  # latent flow (float32) to the first key frame
    shape_keep: torch.Tensor | None = None  # 1 where the first frame's x0 replaces this frame's


@dataclass
class PixelFusion:
    ref_latent: torch.Tensor
    weight: torch.Tensor  # (1, 1, h, w)
    rescale: torch.Tensor
    noise: dict[int, torch.Tensor]  # step -> seeded noise for the reference

    def blend(self, x: torch.Tensor, direction: torch.Tensor, alpha: float, i: int) -> torch.Tensor:
        """Eq. 11 at step i: x_t pulled toward the reference noised to alpha; `direction` is the
        noise part sqrt(1 - alpha) * eps of x_t."""
        noised = math.sqrt(alpha) * self.ref_latent + math.sqrt(1 - alpha) * self.noise[i]
        w = self.weight
        return w * noised + (1 - w) * (x - direction) + self.rescale * direction


@dataclass
class _Lane:
    """One pass (direct or fused) of one key frame in the wavefront: its latent between steps."""

    key: KeyFrame
    x: torch.Tensor
    direction: torch.Tensor
    fusion: PixelFusion | None = None
    saved: tuple[torch.Tensor, torch.Tensor] | None = None  # direct pass: (x, direction) where the fused pass resumes


# ----------------------------------------------------------------------------- the editor

def _switch(name: str, defaults: dict, given: dict | None) -> dict:
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise EditorError(f"rerender: {name} has unknown keys {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(given or {})}


@EDITORS.register("rerender")
class RerenderEditor(Editor):
    name = "rerender"
    estimators_used = ("flow", "edges")
    SPEED_PARAMS = ("schedule", "reuse_direct_pass", "sampling_batch_size", "batch_multiple", "attention_kernels",
                    "sampling_graphs", "propagation_batch", "propagation_graphs")
    PARAMS = {  # checked before any model is built
        "steps": P.integer(1), "guidance_scale": P.number(), "x0_strength": P.number(0, 1, low_open=True),
        "key_interval": P.integer(1), "control": P.choice("canny", "hed"), "canny_low": P.number(0),
        "canny_high": P.number(0), "control_scale": P.number(0), "cross_frame_attention": P.boolean(),
        "attention_layers": P.layers("decoder", "all"),
        "shape_fusion": P.fields({"enabled": P.boolean(), "period": P.period()}),
        "pixel_fusion": P.fields({"enabled": P.boolean(), "period": P.period(), "mask_strength": P.number(0, 1),
                                  "inner_strength": P.number(0, 1), "smooth_boundary": P.boolean(),
                                  "fidelity_threshold": P.number(0), "fidelity_mask": P.choice(*MASK_RULES),
                                  "reference_noise": P.choice(*REFERENCE_NOISE)}),
        "color_adain": P.fields({"enabled": P.boolean(), "period": P.period()}),
        "color_correction": P.boolean(), "reuse_direct_pass": P.boolean(), "schedule": P.choice(*SCHEDULES),
        "occlusion": P.choice(*OCCLUSIONS),
        "sampling_batch_size": P.integer(1, optional=True), "batch_multiple": P.integer(1, optional=True),
        "attention_kernels": P.subset(*SDPA_KERNELS, optional=True), "propagation_batch": P.integer(1, optional=True),
        "sampling_graphs": P.boolean(), "propagation_graphs": P.boolean(),
        "propagation": P.fields({"patch_size": P.integer(1), "iterations": P.integer(1),
                                 "uniformity": P.number(0), "poisson": P.boolean(), "edge_guide": P.choice(*EDGE_GUIDES),
                                 "guide_warp": P.choice(*GUIDE_WARPS), "temporal_mask": P.boolean(),
                                 "pos_guide": P.choice(*POS_GUIDES)}, strict=False),
    }

    def __init__(self, backbone, estimators=None, steps: int = 20, guidance_scale: float = 7.5,
                 x0_strength: float = 0.75, key_interval: int = 10, control: str = "canny",
                 canny_low: int = 50, canny_high: int = 100, control_scale: float = 0.7,
                 cross_frame_attention: bool = True, attention_layers: str | list[str] = "decoder",
                 shape_fusion: dict | None = None, pixel_fusion: dict | None = None,
                 color_adain: dict | None = None, color_correction: bool = False,
                 reuse_direct_pass: bool = True, propagation: dict | None = None, schedule: str = "wavefront",
                 sampling_batch_size: int | None = None, batch_multiple: int | None = 2,
                 attention_kernels: Sequence[str] | None = ("flash", "efficient", "math"),
                 sampling_graphs: bool = True, propagation_batch: int | None = None, propagation_graphs: bool = True,
                 added_prompt: str = ADDED_PROMPT,
                 negative_prompt: str = NEGATIVE_PROMPT, key_flow: str = "direct", occlusion: str = "released") -> None:
        super().__init__(backbone, estimators)
        if not 0.0 < x0_strength <= 1.0:
            raise EditorError(f"rerender: x0_strength={x0_strength} must be in (0, 1] (1 = start from pure noise)")
        if int(key_interval) < 1:
            raise EditorError(f"rerender: key_interval={key_interval} must be a positive integer")
        if control not in ("canny", "hed"):
            raise EditorError(f"rerender: control={control!r} is unknown; use 'canny' or 'hed'")
        if schedule not in SCHEDULES:
            raise EditorError(f"rerender: schedule={schedule!r} is unknown; use one of {SCHEDULES}")
        if key_flow not in KEY_FLOWS:
            raise EditorError(f"rerender: key_flow={key_flow!r} is unknown; use one of {KEY_FLOWS}")
        if occlusion not in OCCLUSIONS:
            raise EditorError(f"rerender: occlusion={occlusion!r} is unknown; use one of {OCCLUSIONS}")
        if sampling_batch_size is not None and int(sampling_batch_size) < 1:
            raise EditorError(f"rerender: sampling_batch_size={sampling_batch_size} must be >= 1 (or null = no limit)")
        if batch_multiple is not None and int(batch_multiple) < 1:
            raise EditorError(f"rerender: batch_multiple={batch_multiple} must be >= 1 (or null = no padding)")
        self.steps, self.guidance_scale, self.x0_strength = steps, guidance_scale, x0_strength
        self.key_interval, self.control, self.canny = int(key_interval), control, (canny_low, canny_high)
        self.control_scale = control_scale
        self.cross_frame_attention, self.attention_layers = cross_frame_attention, attention_layers
        self.shape_fusion = _switch("shape_fusion", SHAPE_FUSION, shape_fusion)
        self.pixel_fusion = _switch("pixel_fusion", PIXEL_FUSION, pixel_fusion)
        self.color_adain = _switch("color_adain", COLOR_ADAIN, color_adain)
        self.color_correction, self.reuse_direct_pass = color_correction, reuse_direct_pass
        self.propagation = dict(propagation or {})
        unknown = set(self.propagation) - PROPAGATION_PARAMS
        if unknown:
            raise EditorError(f"rerender: propagation has unknown keys {sorted(unknown)}; known: {sorted(PROPAGATION_PARAMS)}")
        self.schedule = schedule
        self.sampling_batch_size = None if sampling_batch_size is None else int(sampling_batch_size)
        self.batch_multiple = None if batch_multiple is None else int(batch_multiple)
        self.attention_kernels = None if attention_kernels is None else list(attention_kernels)
        self.sampling_graphs = bool(sampling_graphs)
        self.wavefront_graphs = WavefrontGraphs()
        self.propagation_batch = None if propagation_batch is None else int(propagation_batch)
        self.propagation_graphs = bool(propagation_graphs)
        self.added_prompt, self.negative_prompt, self.key_flow = added_prompt or "", negative_prompt or "", key_flow
        self.occlusion = occlusion

    @torch.no_grad()
    def warmup(self, size: tuple[int, int], num_frames: int = 2) -> None:
        """The backbone's models; with the wavefront schedule, one UNet + ControlNet call with cross-frame
        attention at each batch shape an edit of `num_frames` frames at `size` makes; then one propagation of
        a 3-frame constant clip (keys 0 and 2, still flows). Constant inputs; nothing is kept."""
        super().warmup(size, num_frames)
        dev, bb = self.device, self.backbone
        if self.schedule == "wavefront":
            latent = torch.zeros(1, 4, *(v // bb.vae_scale for v in size), device=dev, dtype=bb.dtype)
            sampler = _Sampler(self, DDIM(bb.scheduler(), self.steps), bb.encode_prompt(["", ""]), latent, 0)
            key = KeyFrame(index=0, control=torch.zeros(2, 3, *size, device=dev, dtype=bb.dtype), is_first=True)
            keys = key_frame_indices(num_frames, self.key_interval_for(num_frames))
            i = sampler.start
            with sdpa_kernels(self.attention_kernels), attention_processors(bb.unet, self.processors(sampler.wave_attention)):
                for count in sorted({round_up(len(call), self.batch_multiple) for call in sampler.plan(len(keys))}):
                    # first-key-frame rows: K/V [own; own], the length every call's attention has
                    sampler.wavefront_call([_Lane(key, latent, latent)] * count, [(0, i, False)] * count, [i] * count)
        frames, still = torch.full((3, 3, *size), 0.5, device=dev), torch.zeros(2, 2, *size, device=dev)
        occluded = torch.zeros(2, 1, *size, device=dev)
        propagate_keyframes(frames, [0, 2], frames[[0, 2]], still, still, occluded, occluded,
                            cuda_graphs=self.propagation_graphs, **self.propagation)

    def constraint_steps(self) -> dict[str, list[int]]:
        """The DDIM steps at which each constraint runs (empty when switched off): its period's steps
        (ends per PERIOD_ENDS) from the SDEdit start step on."""
        start = start_step(self.x0_strength, self.steps)
        windows = {"cross_frame_attention": list(range(start, self.steps)) if self.cross_frame_attention else []}
        for name, ends in PERIOD_ENDS.items():
            switch = getattr(self, name)
            windows[name] = [i for i in period_steps(switch["period"], self.steps, ends)
                             if start <= i < self.steps] if switch["enabled"] else []
        return windows

    def prompts(self, task: EditTask) -> tuple[str, str]:
        """(prompt, negative prompt) of key-frame translation: the target prompt + ', ' + added_prompt."""
        prompt = task.target_prompt if not self.added_prompt else f"{task.target_prompt}, {self.added_prompt}"
        return prompt, self.negative_prompt

    # -- inputs

    def key_interval_for(self, num_frames: int) -> int:
        """key_interval clamped to the clip: at most T - 1, so that the first and last frames are keys."""
        return max(1, min(self.key_interval, num_frames - 1))

    def processors(self, source) -> dict[str, InjectedKVAttnProcessor]:
        """Cross-frame attention's processors (none when it is off), reading K/V from `source`."""
        if not self.cross_frame_attention:
            return {}
        return {n: InjectedKVAttnProcessor(n, source) for n in self_attention_layers(self.backbone.unet, self.attention_layers)}

    def _flows(self, task: EditTask) -> dict[str, torch.Tensor]:
        try:
            flows = self.estimators.flow(task)
        except EditorError:
            raise  # the estimators' own errors name the video and the way out
        except Exception as e:  # noqa: BLE001 - any estimator failure is reported with the video named
            raise EditorError(
                f"rerender: optical flow for video {task.video.id!r} failed ({type(e).__name__}: {e}); "
                "check the flow estimator (estimators.flow=raft|dis|gt) or give the dataset's ground-truth flow"
            ) from e
        t, _, h, w = task.video.frames.shape
        for key, channels in (("flow_fwd", 2), ("flow_bwd", 2), ("occ_bwd", 1)):
            value = flows.get(key) if isinstance(flows, dict) else None
            if value is None or tuple(value.shape) != (t - 1, channels, h, w):
                got = None if value is None else tuple(value.shape)
                raise EditorError(f"rerender: the flow estimator gave {key}={got} for video {task.video.id!r}; "
                                  f"expected {(t - 1, channels, h, w)}")
        return self._with_occlusion(flows)

    def _with_occlusion(self, flows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`flows` with occ_fwd / occ_bwd by the `occlusion` rule: "released" recomputes them from the flows
        (`vedit.ops.warp.rerender_occlusion`), "estimator" keeps the estimator's (or the dataset's)."""
        if self.occlusion == "estimator":
            return flows
        occ_fwd, occ_bwd = rerender_occlusion(flows["flow_fwd"], flows["flow_bwd"])
        return {**flows, "occ_fwd": occ_fwd, "occ_bwd": occ_bwd}

    # -- the edit

    @torch.no_grad()
    def _edit(self, task: EditTask) -> EditResult:
        self.check_inputs(task)
        bb, timer = self.backbone, PhaseTimer(self.backbone.device)
        frames = task.video.frames
        t_count, _, height, width = frames.shape
        key_interval = self.key_interval_for(t_count)
        keys = key_frame_indices(t_count, key_interval)
        prompt, negative = self.prompts(task)
        with timer.phase("preprocessing"):
            if self.control == "hed":
                edges = self.estimators.edges(task, kind="hed")
            else:
                edges = self.estimators.edges(task, kind="canny", low=self.canny[0], high=self.canny[1])
            flow_estimator = self.estimators.flow_method_for(task)
            flows = self._flows(task)
            key_flows = self._key_flows(task, keys, flows)
            text = bb.encode_prompt([negative, prompt])  # [uncond; cond]
        ddim = DDIM(bb.scheduler(), self.steps)
        latent_size = (height // bb.vae_scale, width // bb.vae_scale)
        gen = torch.Generator("cpu").manual_seed(task.seed)
        noise = torch.randn((1, 4, *latent_size), generator=gen).to(bb.device, bb.dtype)
        sampler = _Sampler(self, ddim, text, noise, task.seed)
        wavefront = self.schedule == "wavefront"
        processors = self.processors(sampler.wave_attention if wavefront else sampler.attention)
        control = edges.float().expand(-1, 3, -1, -1)
        with timer.phase("sampling"):
            inputs = frames
            if self.color_correction:
                inputs = restore_luminosity(match_colour(frames, sampler.free_sample(control[:1])[0]), frames)
            with attention_processors(bb.unet, processors):
                translate = sampler.translate_keys_wavefront if wavefront else sampler.translate_keys
                outputs = translate(keys, inputs, control, key_flows)
        with timer.phase("propagation"):
            result = self._propagate(task, keys, outputs, flows)
        if not torch.isfinite(result).all():
            raise EditorError(f"rerender: the output for video {task.video.id!r} contains NaN/inf; "
                              "run the backbone in float32 or bfloat16 instead of float16")
        return timer.result(result, key_indices=keys, key_interval=key_interval, schedule=self.schedule,
                            unet_calls=sampler.unet_calls, prompt=prompt, negative_prompt=negative,
                            flow_estimator=flow_estimator, key_flow=self.key_flow,
                            constraint_steps=self.constraint_steps())

    def _key_flows(self, task: EditTask, keys: list[int], flows: dict) -> list[tuple]:
        """Per key frame after the first: ((flow, occlusion) to the first key frame, (flow, occlusion)
        to the previous one), on the editor's device; `key_flow` says direct or chained."""
        if self.key_flow == "direct":
            pairs = sorted({(keys[0], k) for k in keys[1:]} | {(a, b) for a, b in zip(keys, keys[1:])})
            direct = self._with_occlusion(self.estimators.flow_between(task, pairs))
            at = {pair: n for n, pair in enumerate(pairs)}

            def pair(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
                n = at[(a, b)]
                return (direct["flow_bwd"][n:n + 1].to(self.device), direct["occ_bwd"][n:n + 1].to(self.device))

            return [None] + [(pair(keys[0], k), pair(keys[n], k)) for n, k in enumerate(keys[1:])]
        bwd, occ = flows["flow_bwd"].to(self.device), flows["occ_bwd"].to(self.device)
        to_first = chain_to_first(bwd, occ)
        return [None] + [(flow_from_correspondence(to_first[k:k + 1]), chained_flow(bwd, occ, k, keys[n]))
                         for n, k in enumerate(keys[1:])]

    def _propagate(self, task: EditTask, keys: list[int], outputs: torch.Tensor, flows: dict) -> torch.Tensor:
        frames = task.video.frames
        if len(keys) == frames.shape[0]:
            return outputs.cpu()
        dev = self.device
        side = {k: flows[k].to(dev) for k in ("flow_fwd", "flow_bwd", "occ_fwd", "occ_bwd")}
        params = {"seed": task.seed, "chain_batch": self.propagation_batch, "cuda_graphs": self.propagation_graphs,
                  **self.propagation}
        try:
            return propagate_keyframes(frames.to(dev), keys, outputs.to(dev).float(), **side, **params).cpu()
        except torch.OutOfMemoryError as e:
            chains = self.propagation_batch or len(key_chains(keys, frames.shape[0]))
            raise EditorError(f"rerender: propagating {frames.shape[0]} frames of video {task.video.id!r} ran out of "
                              f"GPU memory with {chains} chains per synthesis call; set "
                              "method.params.propagation_batch to fewer (e.g. 4), and "
                              "method.params.propagation_graphs=false: the same frames, less memory") from e


class _Sampler:
    """The key-frame loop of one edit: DDIM with the hierarchical cross-frame constraints."""

    def __init__(self, editor: RerenderEditor, ddim: DDIM, text: torch.Tensor, noise: torch.Tensor, seed: int) -> None:
        self.ed, self.bb, self.ddim = editor, editor.backbone, ddim
        self.text, self.noise, self.seed = text, noise, seed
        self.timesteps = ddim.timesteps.to(self.bb.device)
        self.start = start_step(editor.x0_strength, ddim.num_steps)
        windows = editor.constraint_steps()
        self.shape_steps = set(windows["shape_fusion"])
        self.adain_steps = set(windows["color_adain"])
        self.pixel_steps = windows["pixel_fusion"]
        self.resume_at = self.pixel_steps[0] if self.pixel_steps else None  # where a fused pass resumes its direct one
        self.fused_begin = None if self.resume_at is None else self.resume_at if editor.reuse_direct_pass else self.start
        self.attention = KeyFrameAttention()
        self.wave_attention = WavefrontAttention(fixed_length=bool(editor.batch_multiple))
        self.first_x0: dict[int, torch.Tensor] = {}
        self.unet_calls = 0

    # -- model

    def eps(self, x: torch.Tensor, i: int, control: torch.Tensor) -> torch.Tensor:
        bb, t = self.bb, self.timesteps[i]
        self.unet_calls += 1
        x2 = torch.cat([x, x])
        down, mid = bb.controlnet(x2, t, encoder_hidden_states=self.text, controlnet_cond=control,
                                  conditioning_scale=self.ed.control_scale, return_dict=False)
        out = bb.unet(x2, t, encoder_hidden_states=self.text, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid).sample
        return classifier_free_guidance(out, self.ed.guidance_scale)

    def wavefront_call(self, lanes: list[_Lane], rows: list[tuple[int, int, bool]], steps: list[int]) -> list[torch.Tensor]:
        """Guided noise of several key-frame passes in one UNet+ControlNet call, each at its own step
        (rows [uncond, cond] per pass, as `eps` lays out one pass); `rows` as `WavefrontAttention.begin_call`.

        Padded with copies of the last pass to a multiple of `batch_multiple` passes (dropped after the
        call): a few batch shapes instead of one per call size, each costing kernel set-up."""
        count = len(lanes)
        pad = round_up(count, self.ed.batch_multiple) - count
        rows = rows + [rows[-1][:2] + (False,)] * pad
        lanes, steps = lanes + [lanes[-1]] * pad, steps + [steps[-1]] * pad
        inputs = [torch.cat([torch.cat([lane.x, lane.x]) for lane in lanes]),
                  to_device(self.ddim.timesteps[steps], self.bb.device).repeat_interleave(2),
                  self.text.repeat(len(lanes), 1, 1), torch.cat([lane.key.control for lane in lanes])]
        self.unet_calls += 1
        if self.ed.sampling_graphs and self.ed.batch_multiple and self.bb.device.type == "cuda":
            out = self.ed.wavefront_graphs(self, inputs, rows)
        else:
            self.wave_attention.begin_call(rows)
            out = self.forward(*inputs)
        return [classifier_free_guidance(o, self.ed.guidance_scale) for o in out.split(2)][:count]

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        """ControlNet + UNet on rows x at per-row timesteps t: the UNet's output."""
        bb = self.bb
        down, mid = bb.controlnet(x, t, encoder_hidden_states=text, controlnet_cond=control,
                                  conditioning_scale=self.ed.control_scale, return_dict=False)
        return bb.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid).sample

    def alphas(self, i: int) -> tuple[float, float]:
        return self.ddim.alpha(int(self.ddim.timesteps[i])), self.ddim.alpha(self.ddim.prev_t(i))

    # -- loops

    def denoise(self, x: torch.Tensor, direction: torch.Tensor, begin: int, control: torch.Tensor,
                key: KeyFrame | None = None, fusion: PixelFusion | None = None, save_at: int | None = None):
        """DDIM steps begin..end on latent x; `direction` is the noise part of x (from the step
        before). key=None samples without any constraint. Returns (clean latent, (x, direction) as
        they were at step `save_at` before its update)."""
        saved = None
        for i in range(begin, self.ddim.num_steps):
            a_t, a_prev = self.alphas(i)
            if fusion is not None and i in fusion.noise:
                x = fusion.blend(x, direction, a_t, i)
            if i == save_at:
                saved = (x, direction)
            if key is not None and self.ed.cross_frame_attention:
                self.attention.begin_step(i)
            eps = self.eps(x, i, control)
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            if key is not None:
                x0 = self.constrain_x0(x0, i, key)
            direction = math.sqrt(1 - a_prev) * eps
            x = math.sqrt(a_prev) * x0 + direction
        return x, saved

    def constrain_x0(self, x0: torch.Tensor, i: int, key: KeyFrame) -> torch.Tensor:
        if key.is_first:
            self.first_x0[i] = x0
            return x0
        if i in self.shape_steps:
            # nearest sampling as the reference implementation; float32 keeps grid positions exact
            warped = backward_warp(self.first_x0[i].float(), key.shape_flow, mode="nearest").to(x0.dtype)
            x0 = key.shape_keep * warped + (1 - key.shape_keep) * x0
        if i in self.adain_steps:
            x0 = adain(x0, self.first_x0[i])
        return x0

    def free_sample(self, control: torch.Tensor) -> torch.Tensor:
        """Translate one frame from pure noise without constraints (the colour-correction reference)."""
        control = control.to(self.bb.device, self.bb.dtype).repeat(2, 1, 1, 1)
        x, _ = self.denoise(self.noise, torch.zeros_like(self.noise), 0, control)
        return self.bb.decode_latents(x).cpu()

    def key_frame(self, n: int, k: int, inputs: torch.Tensor, control: torch.Tensor,
                  key_flows: list[tuple]) -> tuple[KeyFrame, torch.Tensor]:
        """Key frame at position n (video frame k) and its SDEdit start latent."""
        bb = self.bb
        key = KeyFrame(index=k, control=control[k:k + 1].to(bb.device, bb.dtype).repeat(2, 1, 1, 1), is_first=n == 0)
        latent = bb.encode_images(inputs[k:k + 1])
        if n > 0:
            self.prepare_shape_fusion(key, *key_flows[n][0], latent.shape[-2:])
        a_start = self.alphas(self.start)[0]
        return key, math.sqrt(a_start) * latent + math.sqrt(1 - a_start) * self.noise

    def translate_keys(self, keys: list[int], inputs: torch.Tensor, control: torch.Tensor,
                       key_flows: list[tuple]) -> torch.Tensor:
        bb = self.bb
        outputs = []
        for n, k in enumerate(keys):
            key, x = self.key_frame(n, k, inputs, control, key_flows)
            direction = torch.zeros_like(x)
            if key.is_first:
                x, _ = self.denoise(x, direction, self.start, key.control, key)
                out = bb.decode_latents(x)
            else:
                to_first, to_prev = key_flows[n]
                out = self.translate_with_pixel_fusion(key, x, direction, outputs[0], outputs[-1], to_first, to_prev)
            self.attention.finish_frame(key.is_first)
            outputs.append(out)
        return torch.cat(outputs)

    def plan(self, num_keys: int) -> list[list[Pass]]:
        """The wavefront's calls for `num_keys` key frames (`wavefront_plan`)."""
        return wavefront_plan(num_keys, self.start, self.ddim.num_steps, self.fused_begin, self.ed.cross_frame_attention,
                              self.shape_steps | self.adain_steps, self.ed.sampling_batch_size)

    def translate_keys_wavefront(self, keys: list[int], inputs: torch.Tensor, control: torch.Tensor,
                                 key_flows: list[tuple]) -> torch.Tensor:
        """The sequential loop's arithmetic, run as `wavefront_plan` batches it."""
        bb, steps, last = self.bb, self.ddim.num_steps, len(keys) - 1
        resume_at, fused_begin = self.resume_at, self.fused_begin
        plan = self.plan(len(keys))
        starts = [self.key_frame(n, k, inputs, control, key_flows) for n, k in enumerate(keys)]
        lanes = {(n, False): _Lane(key, x, torch.zeros_like(x)) for n, (key, x) in enumerate(starts)}
        outputs: dict[int, torch.Tensor] = {}
        for call in plan:
            batch = [lanes[(n, fused)] if (n, fused) in lanes else self.fused_lane(lanes, n, starts[n], outputs, key_flows[n])
                     for n, fused, _ in call]
            rows = []
            for lane, (n, fused, i) in zip(batch, call):
                if lane.fusion is not None and i in lane.fusion.noise:
                    lane.x = lane.fusion.blend(lane.x, lane.direction, self.alphas(i)[0], i)
                if n > 0 and not fused and i == resume_at:
                    lane.saved = (lane.x, lane.direction)
                rows.append((n, i, is_final_pass(n, fused, i, fused_begin) and (n == 0 or n < last)))
            eps_all = self.wavefront_call(batch, rows, [i for _, _, i in call])
            for lane, (n, fused, i), eps in zip(batch, call, eps_all):
                a_t, a_prev = self.alphas(i)
                x0 = self.constrain_x0((lane.x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t), i, lane.key)
                lane.direction = math.sqrt(1 - a_prev) * eps
                lane.x = math.sqrt(a_prev) * x0 + lane.direction
                if i + 1 == steps and (fused or fused_begin is None or n == 0):  # key frame n is done
                    outputs[n] = bb.decode_latents(lanes.pop((n, fused)).x)
                    if n >= 2:
                        self.wave_attention.release(n - 1)  # key frame n was its last reader
        return torch.cat([outputs[n] for n in range(len(keys))])

    def fused_lane(self, lanes: dict, n: int, start: tuple[KeyFrame, torch.Tensor], outputs: dict[int, torch.Tensor],
                   flows: tuple) -> _Lane:
        """The fused pass of key frame n, from its finished direct pass (resumed, or restarted) and the
        outputs of the first and previous key frames."""
        key, x_start = start
        direct_lane = lanes.pop((n, False))
        fusion = self.pixel_fusion(key, self.bb.decode_latents(direct_lane.x), outputs[0], outputs[n - 1], *flows)
        x, direction = direct_lane.saved if self.ed.reuse_direct_pass else (x_start, torch.zeros_like(x_start))
        lanes[(n, True)] = _Lane(key, x, direction, fusion)
        return lanes[(n, True)]

    def prepare_shape_fusion(self, key: KeyFrame, flow: torch.Tensor, occ: torch.Tensor, latent_size) -> None:
        dev, dt = self.bb.device, self.bb.dtype
        key.shape_flow = resize_flow(flow, latent_size).to(dev, torch.float32)
        key.shape_keep = cell_min(1 - soften_occlusion(occ), self.bb.vae_scale).to(dev, dt)

    def translate_with_pixel_fusion(self, key: KeyFrame, x: torch.Tensor, direction: torch.Tensor,
                                    first_out: torch.Tensor, prev_out: torch.Tensor, to_first, to_prev) -> torch.Tensor:
        bb = self.bb
        if not self.pixel_steps:
            x, _ = self.denoise(x, direction, self.start, key.control, key)
            return bb.decode_latents(x)
        direct, saved = self.denoise(x, direction, self.start, key.control, key, save_at=self.resume_at)
        fusion = self.pixel_fusion(key, bb.decode_latents(direct), first_out, prev_out, to_first, to_prev)
        if self.ed.reuse_direct_pass:
            x, _ = self.denoise(*saved, self.resume_at, key.control, key, fusion)
        else:
            x, _ = self.denoise(x, direction, self.start, key.control, key, fusion)
        return bb.decode_latents(x)

    def reference_noise(self, index: int) -> torch.Tensor:
        """(steps of the fusion period, *latent shape): the noise of the pixel reference at each fusion step.
        "shared": the same for every key frame (the released code reseeds before each); "per_key": seeded
        per key frame (video frame `index`)."""
        offset = index if self.ed.pixel_fusion["reference_noise"] == "per_key" else 0
        gen = torch.Generator("cpu").manual_seed(self.seed * 1_000_003 + offset)
        return torch.randn((len(self.pixel_steps), *self.noise.shape), generator=gen)

    def pixel_fusion(self, key: KeyFrame, direct: torch.Tensor, first_out: torch.Tensor, prev_out: torch.Tensor,
                     to_first, to_prev) -> PixelFusion:
        bb, cfg = self.bb, self.ed.pixel_fusion
        dev = direct.device
        (flow_f, occ_f), (flow_p, occ_p) = to_first, to_prev
        soft_f, soft_p = soften_occlusion(occ_f).to(dev), soften_occlusion(occ_p).to(dev)
        reference = pixel_reference(direct, backward_warp(first_out, flow_f.to(dev)),
                                    backward_warp(prev_out, flow_p.to(dev)), soft_f, soft_p)
        keep = 1 - soften_occlusion(occ_f * occ_p)
        weight = cfg["mask_strength"] * cell_min(keep, bb.vae_scale)
        rescale = inpainting_rescale(weight, cfg["inner_strength"], cfg["smooth_boundary"])
        noise = dict(zip(self.pixel_steps, self.reference_noise(key.index).to(dev, bb.dtype)))
        ref_latent = backbone_fidelity_encode(bb, reference, cfg["fidelity_threshold"], cfg["fidelity_mask"])
        return PixelFusion(ref_latent, weight.to(dev, bb.dtype), rescale.to(dev, bb.dtype), noise)
