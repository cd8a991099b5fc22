"""Temporal-aware blending of two propagated results (Rerender-A-Video Sec. 4.2.2, as its released code runs it).

A frame between key frames a (earlier) and b (later) has two results, propagated from a and from b,
each with a per-pixel patch error. With `w` the temporal weight of a's result (`temporal_weight`):

1. Selection (`select_temporal`, the released code's rule): per pixel take b's result where
   (1 - w) E_a >= w E_b, and keep every pixel that chose b in the previous frame choosing b, the
   choice carried along the flow. (`select_by_error`, the plain lower error, is the alternative.)
2. Contrast-preserving blend (`meanstd_blend`, the released code's): each result normalised to zero
   mean and unit std per Lab channel, blended with weights w and 1 - w, and the blend given the
   per-channel mean and std of the selected image. `histogram_blend` (ours, opt-in) matches the
   linear blend's full Lab histograms to the selected image instead.
3. Screened Poisson blending toward the selected image's gradients (`released_poisson`: in Lab with the
   released code's weights, solved by `poisson_blend`); on by default in `propagate_keyframes`, as the
   released pipeline runs it (rerender.py passes video_blend.py -ps unless -nps).
`error_aware_weight` (ours, opt-in) tilts w per pixel toward the lower error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vedit.ops.warp import backward_warp, outside_frame

_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64)
_EPS, _KAPPA = 216 / 24389, 24389 / 27


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (B, 3, H, W) in [0, 1] -> CIE Lab (L in [0, 100]), D65 white."""
    lin = torch.where(rgb > 0.04045, ((rgb.clamp_min(0) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(rgb), lin) / _WHITE.to(rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1 / 3), (_KAPPA * xyz + 16) / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_lab` (out-of-gamut values are clamped to [0, 1])."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    xyz = torch.where(f ** 3 > _EPS, f ** 3, (116 * f - 16) / _KAPPA) * _WHITE.to(lab).view(1, 3, 1, 1)
    lin = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB_TO_XYZ).to(lab), xyz).clamp(0, 1)
    return torch.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin).clamp(0, 1)


def select_by_error(first_error: torch.Tensor, second_error: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool, True where `second` has the lower error. Errors (B, H, W)."""
    return (second_error < first_error)[:, None]


def temporal_weight(offset: int, interval: int) -> float:
    """Weight of the earlier key frame's result `offset` frames after it, key frames `interval` apart.

    The released code's: (K - j) / (K - 1), so 1 next to the earlier key frame but 1 / (K - 1), not 0,
    next to the later one."""
    return 1.0 - (offset - 1) / max(interval - 1, 1)


def select_temporal(first_error: torch.Tensor, second_error: torch.Tensor, first_weight: list[float],
                    flow_bwd: torch.Tensor) -> torch.Tensor:
    """The released code's selection over the frames between two key frames, in time order.

    Errors (N, H, W) of the results from the earlier (`first`) and later key frame, `first_weight` the N
    temporal weights, `flow_bwd` (N, 2, H, W) from each frame to the one before it (the first entry
    unused). Frame n takes the later result where (1 - w) E_first >= w E_second (always where w = 0,
    never where w = 1), or where frame n - 1 took it at the pixel the flow leads to (nearest).
    Returns (N, 1, H, W) bool, True = the later key frame's result.
    """
    masks: list[torch.Tensor] = []
    for n, w in enumerate(first_weight):
        if w >= 1.0:
            mask = torch.zeros_like(first_error[n:n + 1, None], dtype=torch.bool)
        elif w <= 0.0:
            mask = torch.ones_like(first_error[n:n + 1, None], dtype=torch.bool)
        else:
            mask = ((1 - w) * first_error[n] >= w * second_error[n])[None, None]
        if masks:
            flow = flow_bwd[n:n + 1]
            carried = backward_warp(masks[-1].to(flow.dtype), flow, mode="nearest") > 0.5
            mask = mask | (carried & ~outside_frame(flow))
        masks.append(mask)
    return torch.cat(masks)


def error_aware_weight(first_weight: torch.Tensor | float, first_error: torch.Tensor, second_error: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """Per-pixel weight of `first` (B, 1, H, W): the temporal weight tilted toward the lower error.

    w' = w e^(-E1/tau) / (w e^(-E1/tau) + (1 - w) e^(-E2/tau)); tau -> inf gives the temporal weight w
    (scalar or (B,)), tau -> 0 the per-pixel selection of `select_by_error`. Errors (B, H, W).
    """
    weight = torch.as_tensor(first_weight, dtype=first_error.dtype, device=first_error.device)
    weight = weight.view(-1, 1, 1).clamp(1e-6, 1 - 1e-6)
    logit = torch.log(weight / (1 - weight)) + (second_error - first_error) / temperature
    return torch.sigmoid(logit)[:, None]


def histogram_match(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Exact per-channel histogram matching: the output has `reference`'s values, in `image`'s order."""
    flat, ref = image.flatten(2), reference.flatten(2)
    order = flat.argsort(dim=-1)
    out = torch.empty_like(flat)
    out.scatter_(-1, order, ref.sort(dim=-1).values)
    return out.view_as(image)


def _weight(first_weight: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    weight = torch.as_tensor(first_weight, dtype=like.dtype, device=like.device)
    return weight.view(-1, 1, 1, 1) if weight.ndim == 1 else weight


def histogram_blend(first: torch.Tensor, second: torch.Tensor, first_weight: torch.Tensor | float,
                    reference: torch.Tensor) -> torch.Tensor:
    """Contrast-preserving blend of two RGB images (B, 3, H, W) in [0, 1] (ours, opt-in).

    `first_weight` (scalar or (B,) or (B, 1, H, W)) weighs `first`; the linear blend's Lab histogram
    is matched exactly to `reference` (the selected combination).
    """
    weight = _weight(first_weight, first)
    linear = weight * rgb_to_lab(first) + (1 - weight) * rgb_to_lab(second)
    return lab_to_rgb(histogram_match(linear, rgb_to_lab(reference)))


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, correction=0).clamp_min(1e-6)
    return (x - mean) / std, mean, std


def meanstd_blend(first: torch.Tensor, second: torch.Tensor, first_weight: torch.Tensor | float,
                  reference: torch.Tensor) -> torch.Tensor:
    """The released code's contrast-preserving blend of two RGB images (B, 3, H, W) in [0, 1].

    Per Lab channel: standardise each input (zero mean, unit std), blend with `first_weight` (scalar,
    (B,) or (B, 1, H, W)), then give the blend `reference`'s mean and std. The blend of two
    uncorrelated images has less than unit std; the last step restores the contrast.
    """
    weight = _weight(first_weight, first)
    mixed = weight * _standardise(rgb_to_lab(first))[0] + (1 - weight) * _standardise(rgb_to_lab(second))[0]
    _, mean, std = _standardise(rgb_to_lab(reference))
    lab = _standardise(mixed)[0] * std + mean
    low = torch.tensor([0.0, -128.0, -128.0], dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
    high = torch.tensor([100.0, 127.0, 127.0], dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
    return lab_to_rgb(torch.maximum(torch.minimum(lab, high), low))  # the 8-bit Lab range the released code clips to


def _gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences with a zero last column/row (Neumann boundary)."""
    gx = F.pad(image[..., :, 1:] - image[..., :, :-1], (0, 1))
    gy = F.pad(image[..., 1:, :] - image[..., :-1, :], (0, 0, 0, 1))
    return gx, gy


def poisson_blend(image: torch.Tensor, grad_x: torch.Tensor, grad_y: torch.Tensor,
                  screen: float = 0.1) -> torch.Tensor:
    """Screened Poisson: argmin_u |grad u - g|^2 + screen |u - image|^2, solved exactly with a DCT (via FFT
    of the mirrored image, i.e. Neumann boundaries). Inputs (B, C, H, W); gradients as `_gradients`."""
    h, w = image.shape[-2:]
    div = grad_x - F.pad(grad_x[..., :, :-1], (1, 0)) + grad_y - F.pad(grad_y[..., :-1, :], (0, 0, 1, 0))
    rhs = screen * image - div
    mirrored = torch.cat([rhs, rhs.flip(-2)], dim=-2)
    mirrored = torch.cat([mirrored, mirrored.flip(-1)], dim=-1)
    fy = torch.fft.fftfreq(2 * h, device=image.device, dtype=image.dtype).view(-1, 1)
    fx = torch.fft.fftfreq(2 * w, device=image.device, dtype=image.dtype).view(1, -1)
    laplace = (2 - 2 * torch.cos(2 * torch.pi * fy)) + (2 - 2 * torch.cos(2 * torch.pi * fx))
    solved = torch.fft.ifft2(torch.fft.fft2(mirrored) / (screen + laplace)).real
    return solved[..., :h, :w]


def released_poisson(image: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                     choose_second: torch.Tensor) -> torch.Tensor:
    """The released code's gradient blend: in Lab, gradients from the selected result (clipped to the
    8-bit Lab equivalent of +-100), weights 2.5 (L) and 0.5 (a, b) against 1 for the blended image."""
    lab = rgb_to_lab(image)
    scale = torch.tensor([100 / 255, 1.0, 1.0], dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
    (fx, fy), (sx, sy) = _gradients(rgb_to_lab(first)), _gradients(rgb_to_lab(second))
    gx = torch.where(choose_second, sx, fx).clamp(-100 * scale, 100 * scale)
    gy = torch.where(choose_second, sy, fy).clamp(-100 * scale, 100 * scale)
    screen = 1 / torch.tensor([2.5, 0.5, 0.5], dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1) ** 2
    return lab_to_rgb(poisson_blend(lab, gx, gy, screen))


BLEND_MODES = ("meanstd", "histogram", "select", "linear")


def blend_pair(first: torch.Tensor, second: torch.Tensor, first_weight: torch.Tensor | float,
               choose_second: torch.Tensor, mode: str = "meanstd", poisson: bool = False) -> torch.Tensor:
    """Blend two propagated results (B, 3, H, W) given the selection (B, 1, H, W) bool, True = `second`.

    mode: "meanstd" (the released code), "histogram" (ours), "select" (the selection itself) or
    "linear" (the plain weighted mean)."""
    selected = torch.where(choose_second, second, first)
    if mode == "meanstd":
        blended = meanstd_blend(first, second, first_weight, selected)
    elif mode == "histogram":
        blended = histogram_blend(first, second, first_weight, selected)
    elif mode == "select":
        blended = selected
    elif mode == "linear":
        weight = _weight(first_weight, first)
        blended = weight * first + (1 - weight) * second
    else:
        raise ValueError(f"blend_pair: mode={mode!r} is not one of {BLEND_MODES}")
    return released_poisson(blended, first, second, choose_second) if poisson else blended
