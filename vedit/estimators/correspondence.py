"""SD-DINO semantic correspondence to the first frame (Zhang et al., "A Tale of Two Features",
NeurIPS 2023; Junyi42/sd-dino), as VidMP3 uses it: per frame, every pixel's nearest neighbour among
frame 0's fused descriptors.

Descriptors, as the released pck_spair_pascal.py defaults compute them:
- SD: the frame padded to a centred square (black), resized to `sd_size` (960), VAE-encoded, noised
  to t = 100, one UNet pass; the outputs of the last layer of decoder blocks 0, 1, 2 (ODISE's
  decoder layers 2, 5, 8 in SD 1.5, before each upsampler), each reduced to 256 dimensions by a PCA
  fitted jointly on the pair (frame 0, frame t), upsampled and concatenated on the finest grid.
- DINOv2 (ViT-B/14 by default): the same square at `dino_size` (840, ImageNet normalisation), the
  tokens of the last block (before the final layer norm; SD-DINO's layer 11 "token" facet), a
  `dino_size / 14` grid.
- Each part L2-normalised per token, concatenated (weights 1, 1), the SD part resized to the DINO
  grid; nearest neighbour by L2 distance between the normalised descriptors.
Choices the released code leaves to ODISE: the UNet's text condition is the prompt given (ODISE
feeds an implicit caption of the image); the noise is one seeded draw shared by all frames; the PCA
is exact (torch.linalg.eigh) where SD-DINO calls the randomised torch.pca_lowrank.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vedit.errors import load_estimator_weights
from vedit.estimators.depth import IMAGENET_MEAN, IMAGENET_STD

DINO_MODEL = "facebook/dinov2-base"  # SD-DINO's default MODEL_SIZE=base
SD_SIZE, DINO_SIZE = 960, 840
TIMESTEP = 100
PCA_DIM = 256
SD_BLOCKS = (0, 1, 2)  # decoder blocks whose last layer is read (ODISE indices 2, 5, 8 in SD 1.5)


def load_dinov2(model_id: str = DINO_MODEL, device: str | torch.device = "cpu") -> torch.nn.Module:
    """transformers Dinov2Model from a Hub id or local path (HF_HUB_OFFLINE=1: local caches only);
    "random": the ViT-B/14 architecture with seeded random weights (benchmarks: the same compute),
    "tiny": a 2-layer, 16-wide one (tests)."""
    from transformers import Dinov2Config, Dinov2Model

    if model_id in ("random", "tiny"):
        small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = Dinov2Model(Dinov2Config(image_size=518, **(small if model_id == "tiny" else {})))
        return model.eval().to(device)
    model = load_estimator_weights(
        lambda: Dinov2Model.from_pretrained(model_id), "correspondence=sd_dino needs DINOv2 weights", model_id,
        "point method.params.dino_model at a local copy, or use method.params.correspondence=flow")
    return model.eval().to(device)


def square_layout(h: int, w: int, size: int) -> tuple[float, int, int, int, int]:
    """SD-DINO's resize: the longer side to `size`, aspect kept, centred on a black square.
    Returns (scale, resized h, resized w, top, left)."""
    scale = size / max(h, w)
    rh, rw = (size, round(w * scale)) if h >= w else (round(h * scale), size)
    return scale, rh, rw, (size - rh) // 2, (size - rw) // 2


def to_square(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(T, 3, H, W) in [0, 1] -> (T, 3, size, size) as `square_layout` places them."""
    _, rh, rw, top, left = square_layout(*frames.shape[-2:], size)
    out = frames.new_zeros(frames.shape[0], 3, size, size)
    out[:, :, top:top + rh, left:left + rw] = F.interpolate(frames, size=(rh, rw), mode="bicubic",
                                                            align_corners=False, antialias=True).clamp(0, 1)
    return out


@torch.no_grad()
def dino_tokens(frames: torch.Tensor, model: torch.nn.Module, size: int = DINO_SIZE, batch: int = 8) -> torch.Tensor:
    """(T, C, g, g) last-block tokens (before the final layer norm) of DINOv2 on the square frames."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    patch = int(model.config.patch_size)
    grid = size // patch
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for chunk in frames.split(batch):
        x = ((to_square(chunk.float(), size) - mean) / std).to(device, dtype)
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        tokens = hidden[:, -grid * grid:]  # drop the class (and any register) tokens
        out.append(tokens.transpose(1, 2).reshape(len(chunk), -1, grid, grid).float())
    return torch.cat(out)


def _decoder_taps(unet: torch.nn.Module) -> list[torch.nn.Module]:
    taps = []
    for b in SD_BLOCKS:
        block = unet.up_blocks[b]
        attentions = getattr(block, "attentions", None)
        taps.append(attentions[-1] if attentions is not None and len(attentions) else block.resnets[-1])
    return taps


@torch.no_grad()
def sd_decoder_features(frames: torch.Tensor, backbone, text: torch.Tensor, size: int = SD_SIZE,
                        timestep: int = TIMESTEP, seed: int = 0, batch: int = 4) -> list[torch.Tensor]:
    """The outputs (T, C_k, h_k, w_k) of the last layer of decoder blocks SD_BLOCKS for the square
    frames noised to `timestep` (one seeded noise for all frames), text (1, 77, D) the condition."""
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler.from_config(backbone.scheduler_config).alphas_cumprod
    a = float(alphas[timestep])
    seen: list[torch.Tensor] = []

    def keep(module, args, output):
        seen.append((output[0] if isinstance(output, tuple) else getattr(output, "sample", output)).float())

    handles = [m.register_forward_hook(keep) for m in _decoder_taps(backbone.unet)]
    noise = None
    out: list[list[torch.Tensor]] = [[] for _ in SD_BLOCKS]
    try:
        for chunk in frames.split(batch):
            latents = backbone.encode_images(to_square(chunk.float(), size)).float()
            if noise is None:
                g = torch.Generator().manual_seed(seed)
                noise = torch.randn(latents.shape[1:], generator=g).to(latents.device)
            noisy = a**0.5 * latents + (1 - a) ** 0.5 * noise
            seen.clear()
            t = torch.full((len(chunk),), timestep, device=latents.device)
            backbone.unet(noisy.to(backbone.dtype), t, encoder_hidden_states=text.expand(len(chunk), -1, -1))
            for k, feats in enumerate(seen):
                out[k].append(feats)
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(o) for o in out]


def pca_pair(a: torch.Tensor, b: torch.Tensor, dim: int = PCA_DIM) -> tuple[torch.Tensor, torch.Tensor]:
    """SD-DINO's co_pca: one PCA fitted on the tokens of both maps (C, h, w), each projected on its
    top `dim` components (exact; fewer when C or the tokens are fewer). Returns (dim', h, w) each."""
    c, h, w = a.shape
    x = torch.cat([a.reshape(c, -1), b.reshape(c, -1)], dim=1).T.double()  # (2hw, C)
    x = x - x.mean(dim=0, keepdim=True)
    k = min(dim, c, x.shape[0])
    _, vectors = torch.linalg.eigh(x.T @ x)
    y = (x @ vectors[:, -k:].flip(-1)).float().T  # components by decreasing variance
    return y[:, :h * w].reshape(k, h, w), y[:, h * w:].reshape(k, h, w)


def fuse(sd: list[tuple[torch.Tensor, torch.Tensor]], dino: tuple[torch.Tensor, torch.Tensor], grid: int
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptors (grid*grid, D) of frame 0 and frame t: per-layer co-PCA SD maps, coarser ones
    upsampled (bilinear) and all concatenated on the DINO grid, then [SD / |SD|, DINO / |DINO|]."""
    parts0, parts1 = [], []
    for a, b in sd:
        pa, pb = pca_pair(a, b)
        parts0.append(F.interpolate(pa[None], size=(grid, grid), mode="bilinear", align_corners=False)[0])
        parts1.append(F.interpolate(pb[None], size=(grid, grid), mode="bilinear", align_corners=False)[0])
    out = []
    for parts, d in ((parts0, dino[0]), (parts1, dino[1])):
        s = torch.cat(parts).flatten(1).T
        out.append(torch.cat([F.normalize(s, dim=-1), F.normalize(d.flatten(1).T, dim=-1)], dim=-1))
    return out[0], out[1]


def nearest_in_first(desc0: torch.Tensor, desc: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Index into desc0 (N0, D) of each row of desc (N, D) by L2 distance; `allowed` (N0,) bool
    restricts the targets (frame 0's cells inside the image)."""
    d = torch.cdist(desc.double(), desc0.double(), compute_mode="donot_use_mm_for_euclid_dist")
    if allowed is not None:
        d[:, ~allowed] = math.inf
    return d.argmin(dim=1)


def grid_to_pixels(h: int, w: int, size: int, grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a frame (h, w) laid out on the `size` square with a `grid` x `grid` token grid: each grid
    cell's centre in frame pixel coordinates (g*g, 2) as (x, y), whether some frame pixel falls in
    it (g*g,; cells of the padding are never matched), and the cell of each frame pixel (h*w,)."""
    scale, _, _, top, left = square_layout(h, w, size)
    cell = size / grid
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) * cell
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    x, y = (cx - left) / scale - 0.5, (cy - top) / scale - 0.5
    py = ((torch.arange(h, dtype=torch.float64) + 0.5) * scale + top) // cell
    px = ((torch.arange(w, dtype=torch.float64) + 0.5) * scale + left) // cell
    pixel_cell = (py.clamp(0, grid - 1)[:, None] * grid + px.clamp(0, grid - 1)[None]).long().flatten()
    inside = torch.zeros(grid * grid, dtype=torch.bool)
    inside[pixel_cell] = True
    return torch.stack([x.flatten(), y.flatten()], dim=1), inside, pixel_cell


def sd_dino_correspondence(frames: torch.Tensor, backbone, dino: torch.nn.Module, text: torch.Tensor,
                           sd_size: int = SD_SIZE, dino_size: int = DINO_SIZE, seed: int = 0) -> torch.Tensor:
    """(T, 2, H, W): for every pixel of every frame the (x, y) pixel coordinates in frame 0 of its
    SD-DINO nearest neighbour (a grid cell centre; pixels take their cell's match). Frame 0 maps to
    its own cell centres."""
    t, _, h, w = frames.shape
    dino_maps = dino_tokens(frames, dino, dino_size)
    grid = dino_maps.shape[-1]
    sd_maps = sd_decoder_features(frames, backbone, text, sd_size, seed=seed)
    centres, inside, pixel_cell = grid_to_pixels(h, w, dino_size, grid)
    inside = inside.to(dino_maps.device)
    out = torch.empty(t, 2, h, w)
    for f in range(t):
        if f == 0:
            match = torch.arange(grid * grid)
        else:
            desc0, desc = fuse([(m[0], m[f]) for m in sd_maps], (dino_maps[0], dino_maps[f]), grid)
            match = nearest_in_first(desc0, desc, inside).cpu()
        out[f] = centres[match][pixel_cell].T.reshape(2, h, w).float()
    return out
