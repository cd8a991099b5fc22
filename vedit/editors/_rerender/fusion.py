"""Rerender's cross-frame constraints on pixels and colours: AdaIN, occlusion softening, the pixel
reference and its structure-guided inpainting (paper Sec. 4.1), colour correction."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF



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
