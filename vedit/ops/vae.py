"""Fidelity-oriented image encoding (Rerender-A-Video, Sec. 4.1.3, Eq. 8-9).

Every encode/decode round trip of the SD autoencoder loses a little information, and the loss of
one round is close to the loss of the next. Encoding twice predicts it, so it can be compensated:

    x_r  = E(I)          x_rr = E(D(x_r))
    E*(I) = x_r + M * (x_r - x_rr)

M (latent resolution) keeps the compensation only where it does not create artefacts: where
D(x_r + (x_r - x_rr)) stays within `threshold` mean absolute error of I (per pixel, averaged over
colour channels, in [-1, 1] units); the rejected area is dilated by one latent cell. How a latent
cell reads its pixels (`MASK_RULES`): "released" (the released code: the error map sampled bilinearly
at the latent size, which reads the centre 2x2 pixels of each 8x8 cell; any of them over rejects the
cell) or "any_pixel" (ours: any of the cell's pixels over rejects it; stricter where bad pixels are
scattered).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Encode = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) in [0, 1] -> latents (B, C, h, w)
Decode = Callable[[torch.Tensor], torch.Tensor]  # latents -> images in [0, 1]
MASK_RULES = ("released", "any_pixel")


def compensation_mask(images: torch.Tensor, compensated_decoded: torch.Tensor, latent_size: tuple[int, int],
                      threshold: float = 0.25, rule: str = "released") -> torch.Tensor:
    """(B, 1, h, w) float: 1 where the compensated latent decodes within `threshold` of `images`.

    The error is the per-pixel mean over channels of |D(x_r + (x_r - x_rr)) - I| in [-1, 1] units
    (twice the [0, 1] difference). A latent cell is rejected when its bilinear sample of the over-threshold
    map is non-zero (rule "released") or when any of its pixels is over (rule "any_pixel"), and the
    rejected cells are dilated by one cell (3x3).
    """
    if rule not in MASK_RULES:
        raise ValueError(f"compensation_mask: rule={rule!r} is not one of {MASK_RULES}")
    images = images.to(compensated_decoded.device).float()
    err = 2.0 * (compensated_decoded.float() - images).abs().mean(dim=1, keepdim=True)
    bad = (err > threshold).float()
    if rule == "released":
        bad = (F.interpolate(bad, size=latent_size, mode="bilinear", align_corners=False) > 0).float()
    else:
        bad = F.adaptive_max_pool2d(bad, latent_size)
    bad = F.max_pool2d(bad, kernel_size=3, stride=1, padding=1)
    return 1.0 - bad


def fidelity_encode(images: torch.Tensor, encode: Encode, decode: Decode, threshold: float = 0.25,
                    rule: str = "released") -> torch.Tensor:
    """E*(I) = E(I) + M * (E(I) - E(D(E(I)))) for images (B, 3, H, W) in [0, 1]; M by `compensation_mask`."""
    x_r = encode(images)
    x_rr = encode(decode(x_r))
    delta = x_r - x_rr
    mask = compensation_mask(images, decode(x_r + delta), tuple(x_r.shape[-2:]), threshold, rule)
    return x_r + mask.to(x_r) * delta


def backbone_fidelity_encode(backbone, images: torch.Tensor, threshold: float = 0.25,
                             rule: str = "released") -> torch.Tensor:
    """`fidelity_encode` with a Backbone's VAE (posterior means, scaled latents)."""
    return fidelity_encode(images, backbone.encode_images, backbone.decode_latents, threshold, rule)
