"""V2VBench's Video Quality: DOVER (Wu et al., "Exploring Video Quality Assessment on User Generated
Contents from Aesthetic and Technical Perspectives", ICCV 2023), as `v2vbench/dover_score.py` runs it.

Per edited video (all frames, as stored: 8-bit RGB, 0-255):
- technical view: 3 clips of 32 frames. Clip k starts at frame `(T // 3) * k` and takes every 2nd frame
  (indices wrap modulo T; a random start offset only when T // 3 > 64). Each frame is cut into a 7 x 7
  grid of cells (`H // 7` px high), and from each cell one 32 x 32 fragment is kept, at a random offset
  inside the cell (drawn per clip), spliced into a 224 x 224 frame. A frame smaller than 224 px is first
  bilinearly upsampled so that its short side is 224, while the grid keeps the size before upsampling
  (DOVER's own order).
- aesthetic view: 32 frames, frame `(T // 32) * i` for i < 32 (so a video of fewer than 32 frames
  gives frame 0 thirty-two times), each bilinearly resized to 224 x 224 (aspect ratio lost; no
  antialiasing, torchvision's tensor Resize as V2VBench's torch 1.13 runs it).
- both views normalised with ImageNet mean/std in 0-255 units; the technical branch (fragment Swin-T)
  and the aesthetic branch (ConvNeXt-3D tiny) each give one score, the mean of their head's output.
- the reported number is V2VBench's `fuse_results` (v2vbench/dover_utils.py):
  `sigmoid((t - 0.1107) / 0.07355 * 0.6104 + (a + 0.08285) / 0.03774 * 0.3896)`, in (0, 1), higher
  is better. DOVER's own `evaluate_one_video.py --fusion` subtracts the aesthetic mean (`a - 0.08285`):
  `fusion: dover` selects that; V2VBench's `+` shifts its logit by +1.71 for every video.

V2VBench draws the fragment offsets (and, for long videos, the clip offsets) from the unseeded global
RNGs; here they come from `seed` (a torch Generator for the fragments, a NumPy RandomState for the clips,
drawn in V2VBench's order), so a score is reproducible and equals V2VBench's run after
`torch.manual_seed(seed); np.random.seed(seed)`.

This is vedit's own code, written from the paper and the released layout (VQAssessment/DOVER is under
the S-Lab License 1.0, non-commercial, since its commit f1ddc96); no weights ship with vedit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vedit.metrics.base import Metric, MetricError
from vedit.metrics.dover_models import DOVER_ARCH, TINY_ARCH, DoverArch, DoverModel, relative_position_index
from vedit.metrics.hub import load_or_explain
from vedit.registry import METRICS
from vedit.task import EditTask
from vedit.video import to_uint8

DOVER_MODEL = "teowu/DOVER"  # the Hub repo V2VBench's doc/install.sh clones (DOVER README: its weights, Nov 2023)
DOVER_FILE = "DOVER.pth"
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
# (mean, std, weight) per branch, technical then aesthetic
FUSIONS = {
    "v2vbench": ((0.1107, 0.07355, 0.6104), (-0.08285, 0.03774, 0.3896)),  # v2vbench/dover_utils.py: (a + 0.08285)
    "dover": ((0.1107, 0.07355, 0.6104), (0.08285, 0.03774, 0.3896)),  # DOVER evaluate_one_video.py: (a - 0.08285)
}


@dataclass(frozen=True)
class DoverViews:
    """DOVER's sampling: `data.technical`, `data.aesthetic` of V2VBench's third_party/dover/config.yaml."""

    fragments: tuple[int, int] = (7, 7)
    fragment_size: tuple[int, int] = (32, 32)
    technical_clip_len: int = 32
    technical_interval: int = 2
    technical_clips: int = 3
    aesthetic_size: tuple[int, int] = (224, 224)
    aesthetic_clip_len: int = 32
    aesthetic_interval: int = 2
    aesthetic_t_frag: int = 32


DOVER_VIEWS = DoverViews()
TINY_VIEWS = DoverViews(fragments=(2, 2), fragment_size=(16, 16), technical_clip_len=4, technical_interval=1,
                        technical_clips=2, aesthetic_size=(32, 32), aesthetic_clip_len=4, aesthetic_interval=1,
                        aesthetic_t_frag=4)


# --- views ---------------------------------------------------------------------------------------------------

def segment_indices(num_frames: int, length: int, segments: int, interval: int, rng: np.random.RandomState,
                    clips: int = 1) -> np.ndarray:
    """DOVER's frame sampler: `segments` runs of `length` frames `interval` apart, run s starting at
    `(num_frames // segments) * s` (+ a random offset when the segment is longer than the run),
    repeated `clips` times; indices modulo `num_frames`."""
    out = []
    for _ in range(clips):
        seg = num_frames // segments
        starts = np.arange(segments) * seg
        if seg > length * interval:
            starts = starts + rng.randint(0, seg - length * interval, size=segments)
        out.append((np.arange(length)[None, :] * interval + starts[:, None]).reshape(-1))
    return np.mod(np.concatenate(out), num_frames)


def technical_indices(num_frames: int, views: DoverViews, rng: np.random.RandomState) -> np.ndarray:
    return segment_indices(num_frames, views.technical_clip_len, views.technical_clips, views.technical_interval, rng)


def aesthetic_indices(num_frames: int, views: DoverViews, rng: np.random.RandomState) -> np.ndarray:
    return segment_indices(num_frames, views.aesthetic_clip_len // views.aesthetic_t_frag, views.aesthetic_t_frag,
                           views.aesthetic_interval, rng)


def fragment_offsets(height: int, width: int, fragments: tuple[int, int], size: tuple[int, int], segments: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, column, temporal segment) offset of each fragment inside its grid cell: uniform in
    [0, cell - size) where the cell is larger than the fragment, else 0 (rows drawn before columns)."""
    shape = (fragments[0], fragments[1], segments)
    offsets = []
    for extent, n, s in ((height, fragments[0], size[0]), (width, fragments[1], size[1])):
        cell = extent // n
        offsets.append(torch.randint(cell - s, shape, generator=generator) if cell > s
                       else torch.zeros(shape, dtype=torch.long))
    return offsets[0], offsets[1]


def spatial_fragments(video: torch.Tensor, fragments: tuple[int, int], size: tuple[int, int], aligned: int,
                      generator: torch.Generator) -> torch.Tensor:
    """(C, T, H, W) 0-255 (uint8 or float) -> float (C, T, fragments * size) of spliced fragments; one offset
    per fragment per `aligned` frames."""
    c, t, h, w = video.shape
    out_h, out_w = fragments[0] * size[0], fragments[1] * size[1]
    ratio = min(h / out_h, w / out_w)
    if ratio < 1:  # upsampled; the grid below keeps the original (h, w), as DOVER computes it
        video = F.interpolate(video.float() / 255.0, scale_factor=1 / ratio, mode="bilinear") * 255.0
    if t % aligned:
        raise ValueError(f"{t} frames are not a multiple of the clip length {aligned}")
    video = video.contiguous()  # the many small crops below copy ~8x faster from contiguous memory
    rows = [min(h // fragments[0] * i, h - size[0]) for i in range(fragments[0])]
    cols = [min(w // fragments[1] * j, w - size[1]) for j in range(fragments[1])]
    off_h, off_w = fragment_offsets(h, w, fragments, size, t // aligned, generator)
    out = video.new_zeros(c, t, out_h, out_w)
    for i, r in enumerate(rows):
        for j, q in enumerate(cols):
            for s in range(t // aligned):
                y, x = r + int(off_h[i, j, s]), q + int(off_w[i, j, s])
                out[:, s * aligned:(s + 1) * aligned, i * size[0]:(i + 1) * size[0], j * size[1]:(j + 1) * size[1]] = \
                    video[:, s * aligned:(s + 1) * aligned, y:y + size[0], x:x + size[1]]
    return out.float()  # uint8 frames are spliced before the (exact) conversion: 1/10 of the copying


def resized_view(video: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """(C, T, H, W) -> (C, T, *size): bilinear, align_corners=False, as torchvision's tensor Resize."""
    return F.interpolate(video.transpose(0, 1), size=size, mode="bilinear", align_corners=False,
                         antialias=antialias).transpose(0, 1)


def normalise(view: torch.Tensor, clips: int) -> torch.Tensor:
    """(C, T, H, W) 0-255 -> (clips, C, T / clips, H, W), ImageNet mean/std."""
    mean = torch.tensor(MEAN, dtype=view.dtype, device=view.device).view(3, 1, 1, 1)
    std = torch.tensor(STD, dtype=view.dtype, device=view.device).view(3, 1, 1, 1)
    v = (view - mean) / std
    return v.reshape(v.shape[0], clips, -1, *v.shape[2:]).transpose(0, 1)


def dover_views(frames: torch.Tensor, views: DoverViews = DOVER_VIEWS, seed: int = 0,
                antialias: bool = False) -> dict[str, torch.Tensor]:
    """(T, 3, H, W) uint8 frames -> {"technical": (clips, 3, L, h, w), "aesthetic": (1, 3, L, h', w')}."""
    rng = np.random.RandomState(seed)
    t_idx = technical_indices(frames.shape[0], views, rng)
    a_idx = aesthetic_indices(frames.shape[0], views, rng)
    generator = torch.Generator().manual_seed(seed)

    def video(idx: np.ndarray) -> torch.Tensor:
        return frames[torch.from_numpy(idx.astype(np.int64))].permute(1, 0, 2, 3)  # C, T, H, W

    technical = spatial_fragments(video(t_idx), views.fragments, views.fragment_size, views.technical_clip_len,
                                  generator)
    aesthetic = resized_view(video(a_idx).float(), views.aesthetic_size, antialias)
    return {"technical": normalise(technical, views.technical_clips), "aesthetic": normalise(aesthetic, 1)}


def fuse(technical: float, aesthetic: float, fusion: str = "v2vbench") -> float:
    """The overall score in (0, 1): sigmoid of the weighted standardised branch scores (`FUSIONS`)."""
    if fusion not in FUSIONS:
        raise MetricError(f"dover: unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    (tm, ts, tw), (am, as_, aw) = FUSIONS[fusion]
    x = (technical - tm) / ts * tw + (aesthetic - am) / as_ * aw
    return 1.0 / (1.0 + math.exp(-x))


# --- weights ---------------------------------------------------------------------------------------------------

def dover_to_vedit(state: dict[str, torch.Tensor], model: DoverModel) -> dict[str, torch.Tensor]:
    """DOVER.pth's keys -> DoverModel's: the same names, less Swin's `relative_position_index` buffers
    (computed here from the window; a stored one that differs means another architecture)."""
    out = {}
    for key, value in state.items():
        if key.endswith(".relative_position_index"):
            try:
                window = model.get_submodule(key.removesuffix(".relative_position_index")).window
            except AttributeError:  # not a module of this network: load_state_dict names it
                continue
            expected = relative_position_index(window)
            # another window size shows in the bias tables' shapes too; load_state_dict reports those
            if value.shape == expected.shape and not torch.equal(value.long().cpu(), expected):
                raise MetricError(f"DOVER checkpoint: {key} is not the index of a {window} window")
            continue
        out[key] = value
    return out


def vedit_to_dover(model: DoverModel) -> dict[str, torch.Tensor]:
    """DoverModel's weights in DOVER.pth's layout (the buffers it stores included)."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_bias_table"):
            state[f"{name}.relative_position_index"] = relative_position_index(module.window)
    return state


def dover_file(source: str) -> Path:
    """A local DOVER.pth (or a folder holding one), else `DOVER.pth` of the Hub repo `source` from the cache."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / DOVER_FILE).is_file():
            return path / DOVER_FILE
        raise MetricError(f"DOVER folder {source!r} has no {DOVER_FILE}")
    if source.endswith((".pth", ".pt")) or source.startswith(("/", ".", "~")):
        raise MetricError(f"DOVER checkpoint {source!r} does not exist; give the path of DOVER.pth (or its folder) "
                          f"in metrics.options.dover.model, or the Hub id {DOVER_MODEL}")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(source, DOVER_FILE))


def load_dover(source: str = DOVER_MODEL, device: str | torch.device = "cpu",
               arch: DoverArch = DOVER_ARCH) -> DoverModel:
    """DOVER's released weights (a plain state dict, read with weights_only=True) in a DoverModel."""
    file = load_or_explain("DOVER", source, "dover.model", lambda: dover_file(source))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise MetricError(f"DOVER checkpoint {str(file)!r} is not a plain state dict: {type(e).__name__}: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model = DoverModel(arch)
    try:
        model.load_state_dict(dover_to_vedit(state, model))
    except RuntimeError as e:
        raise MetricError(f"DOVER checkpoint {str(file)!r} does not fit DOVER's architecture (swin_tiny_grpb + "
                          f"conv_tiny, divided heads): {e}") from e
    return model.eval().to(device)


def built_dover(arch: DoverArch, seed: int = 0, device: str | torch.device = "cpu") -> DoverModel:
    """A DoverModel with seeded random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DoverModel(arch)
    return model.eval().to(device)


@METRICS.register("dover")
class DoverScore(Metric):
    """V2VBench's Video Quality: DOVER's fused overall score in (0, 1), plus its two branch scores.

    `model`: Hub id (`teowu/DOVER`, file DOVER.pth, from the Hugging Face cache), a local DOVER.pth or a
    folder holding one; "tiny" (tiny widths and views, seeded random weights: tests) or "random" (DOVER's
    full size, random weights: timing). `fusion`: "v2vbench" (as V2VBench reports it) or "dover" (DOVER's
    evaluate_one_video.py). `seed`: the fragment and clip offsets. The model loads on the first call."""

    name = "dover"
    higher_is_better = True

    def __init__(self, model: str = DOVER_MODEL, fusion: str = "v2vbench", seed: int = 0, antialias: bool = False,
                 device: str | torch.device = "cpu", network: DoverModel | None = None,
                 views: DoverViews | None = None) -> None:
        if fusion not in FUSIONS:
            raise MetricError(f"dover: unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        self.model_id, self.fusion, self.seed, self.antialias = model, fusion, int(seed), bool(antialias)
        self.device, self._network = torch.device(device), network
        tiny = model == "tiny" or (network is not None and network.arch != DOVER_ARCH)
        self.views = views or (TINY_VIEWS if tiny else DOVER_VIEWS)
        self.tiny = tiny
        self._name = (f"custom {type(network).__name__}" if network is not None
                      else {"tiny": "tiny-dover-0", "random": "random DOVER"}.get(model, model))
        v = self.views
        self.convention = (
            f"DOVER overall score in (0, 1), {fusion} fusion of the technical and aesthetic branch scores; technical "
            f"view {v.technical_clips} clips x {v.technical_clip_len} frames (frame step {v.technical_interval}) of "
            f"{v.fragments[0]}x{v.fragments[1]} fragments of {v.fragment_size[0]} px, aesthetic view "
            f"{v.aesthetic_t_frag} frames resized to {v.aesthetic_size[0]}x{v.aesthetic_size[1]}"
            f"{' (antialiased)' if antialias else ''}; fragment offsets from seed {seed}; {self._name}")

    @property
    def network(self) -> DoverModel:
        if self._network is None:
            if self.model_id == "tiny":
                self._network = built_dover(TINY_ARCH, device=self.device)
            elif self.model_id == "random":
                self._network = built_dover(DOVER_ARCH, device=self.device)
            else:
                self._network = load_dover(self.model_id, self.device)
        return self._network

    def models(self, task: EditTask) -> dict[str, Any]:
        # `*_tiny` marks weights that are not the real ones (tables flag those rows): random ones too
        return {"dover": self._name, "dover_tiny": self.tiny or self.model_id == "random"}

    def config(self, task: EditTask) -> dict[str, Any]:
        return {**super().config(task), "model": self._name, "fusion": self.fusion, "seed": self.seed,
                "antialias": self.antialias}

    @torch.no_grad()
    def scores(self, edited: torch.Tensor, task: EditTask) -> tuple[float, float]:
        """(technical, aesthetic) branch scores of the edited frames."""
        self.check_frames(edited, task)
        h, w = edited.shape[-2:]
        fh, fw = self.views.fragment_size
        if h < fh or w < fw:
            raise MetricError(f"dover: frames of video {task.video.id!r} are {h}x{w}; DOVER's fragments need at "
                              f"least {fh}x{fw} px")
        views = dover_views(to_uint8(edited).cpu(), self.views, self.seed, self.antialias)  # on CPU, as V2VBench
        net = self.network
        dtype = next(net.parameters()).dtype
        t, a = net(views["technical"].to(self.device, dtype), views["aesthetic"].to(self.device, dtype))
        return float(t), float(a)

    def __call__(self, edited: torch.Tensor, task: EditTask) -> dict[str, float]:
        t, a = self.scores(edited, task)
        if not (math.isfinite(t) and math.isfinite(a)):
            raise MetricError(f"dover: the scores of video {task.video.id!r} are not finite ({t}, {a})")
        return {self.name: fuse(t, a, self.fusion), f"{self.name}_technical": t, f"{self.name}_aesthetic": a}
