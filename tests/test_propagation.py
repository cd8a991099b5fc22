"""Key-frame propagation: constructed videos with exact flow, bad input, quality on synthetic scenes."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vedit.data.synthetic import stylised_clip
from vedit.errors import EditorError
from vedit.ops.propagation import key_chains, propagate_keyframes
from vedit.ops.warp import backward_warp, occlusion_masks
from vedit.video import frames_to_uint8


def panning_video(frames: int, size: int, step: tuple[int, int] = (2, 1), seed: int = 0):
    """Texture translating by an integer `step` per frame -> (frames, flow_fwd, flow_bwd), exact flows."""
    g = torch.Generator().manual_seed(seed)
    big = size + frames * max(abs(s) for s in step) + 8
    texture = sum(F.interpolate(torch.rand(1, 3, c, c, generator=g), size=(big, big), mode="bicubic",
                                align_corners=False) for c in (4, 8, 16)) / 3
    video = torch.cat([texture[..., t * step[1]:t * step[1] + size, t * step[0]:t * step[0] + size]
                       for t in range(frames)]).clamp(0, 1)
    # frame t (p) = texture(p + t * step): pixel p of frame t is at p - step in frame t+1.
    fwd = -torch.tensor(step, dtype=torch.float32).view(1, 2, 1, 1).expand(frames - 1, 2, size, size).contiguous()
    return video, fwd, -fwd


def stylise(frames: torch.Tensor) -> torch.Tensor:
    """Fixed per-frame stylisation: JET colour map of the luminance mixed with the colour, posterised."""
    out = []
    for img in frames_to_uint8(frames):
        mapped = cv2.cvtColor(cv2.applyColorMap(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        out.append(np.floor((0.6 * mapped + 0.4 * img) / 32) * 32 + 16)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((10 * torch.log10(1 / ((a - b) ** 2).mean(dim=(1, 2, 3)))).mean())


def test_chains_cover_every_non_key_frame_from_both_sides() -> None:
    chains = key_chains([2, 6], 9)
    seen = {(c.key, c.direction): c.targets for c in chains}
    assert seen == {(2, 1): [3, 4, 5], (2, -1): [1, 0], (6, 1): [7, 8], (6, -1): [5, 4, 3]}


def test_exact_flow_propagation_reproduces_stylisation() -> None:
    video, fwd, bwd = panning_video(6, 40)
    occ_fwd, occ_bwd = occlusion_masks(fwd, bwd)
    truth = stylise(video)
    keys = [0, 5]
    out = propagate_keyframes(video, keys, truth[keys], fwd, bwd, occ_fwd, occ_bwd, iterations=3, pyramid_levels=1)
    assert out.shape == video.shape
    torch.testing.assert_close(out[keys], truth[keys])  # key frames returned unchanged
    inner = (slice(1, 5), slice(None), slice(4, -4), slice(4, -4))  # away from the revealed border
    nearest = truth[[0, 0, 0, 5, 5, 5]]
    assert psnr(out[inner], truth[inner]) > 30
    assert psnr(out[inner], truth[inner]) > psnr(nearest[inner], truth[inner]) + 8


def test_single_key_frame_propagates_both_ways_on_static_video() -> None:
    video = panning_video(5, 32, step=(0, 0))[0]
    zeros = torch.zeros(4, 2, 32, 32)
    occ = torch.zeros(4, 1, 32, 32)
    style = 1 - video[2:3]
    out = propagate_keyframes(video, [2], style, zeros, zeros, occ, occ, iterations=2, pyramid_levels=1)
    for t in range(5):
        torch.testing.assert_close(out[t], style[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("options", [{}, {"style_weight": 1.0, "search_vote_iters": 2}])
def test_chain_batch_gives_the_same_frames_as_all_chains_at_once(options: dict) -> None:
    """Keys 0, 4, 9 of 12 frames make 5 chains of unequal lengths; in groups of 1 or 2 per synthesis call
    (random draws made for all of a step's chains and sliced) the frames are bit for bit those of one call."""
    video, fwd, bwd = panning_video(12, 24, seed=3)
    occ_fwd, occ_bwd = occlusion_masks(fwd, bwd)
    keys = [0, 4, 9]
    args = (video, keys, stylise(video)[keys], fwd, bwd, occ_fwd, occ_bwd)
    whole = propagate_keyframes(*args, iterations=2, seed=5, **options)
    for chain_batch in (1, 2):
        torch.testing.assert_close(propagate_keyframes(*args, iterations=2, seed=5, chain_batch=chain_batch,
                                                       **options), whole, rtol=0, atol=0)
    assert not torch.equal(propagate_keyframes(*args, iterations=2, seed=6, **options), whole)  # draws matter


@pytest.mark.parametrize("change, message", [
    (dict(key_indices=[3, 1]), "strictly increasing"),
    (dict(key_indices=[0, 9]), "key_indices"),
    (dict(key_outputs=torch.zeros(1, 3, 16, 16)), "key_outputs"),
    (dict(flow_fwd=None), "flow_fwd"),
    (dict(occ_bwd=torch.zeros(3, 1, 8, 8)), "occ_bwd"),
    (dict(patch_size=4), "patch_size"),
    (dict(blend="poisson"), "blend"),
    (dict(chain_batch=0), "chain_batch"),
])
def test_bad_input_names_the_argument(change: dict, message: str) -> None:
    video = torch.rand(4, 3, 16, 16)
    args = dict(source=video, key_indices=[0, 3], key_outputs=video[[0, 3]], flow_fwd=torch.zeros(3, 2, 16, 16),
                flow_bwd=torch.zeros(3, 2, 16, 16), occ_fwd=torch.zeros(3, 1, 16, 16), occ_bwd=torch.zeros(3, 1, 16, 16))
    with pytest.raises(EditorError, match=message):
        propagate_keyframes(**{**args, **change})


def warp_error(video: torch.Tensor, side: dict) -> float:
    """Mean squared difference between frame t and frame t+1 warped back by the exact flow, visible pixels."""
    warped = backward_warp(video[1:], side["flow_fwd"])
    visible = 1 - side["occ_fwd"]
    return float((((warped - video[:-1]) ** 2).mean(1, keepdim=True) * visible).sum() / visible.sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_propagation_follows_the_scene_on_synthetic_clips(seed: int) -> None:
    """Key frames 0 and 10 of a moving synthetic scene; the painted texture can only be carried by correspondence.
    Measured (seeds 0/1/2, 64 px, defaults): +8.5/+8.9/+7.3 dB over repeating the nearest key frame. Warp error
    under the exact flow and occlusion (which covers the edge band, so the ground-truth stylisation scores ~1e-5,
    exact up to resampling): 5.9/5.8/4.1e-4 for the propagated video against 6.8/7.8/4.1e-3 for repeating the
    nearest key frame."""
    video, side, truth = stylised_clip(seed)
    keys, nonkey = [0, 10], list(range(1, 10))
    out = propagate_keyframes(video, keys, truth[keys], side["flow_fwd"], side["flow_bwd"], side["occ_fwd"],
                              side["occ_bwd"])
    nearest = truth[[0] * 6 + [10] * 5]
    gain = psnr(out[nonkey], truth[nonkey]) - psnr(nearest[nonkey], truth[nonkey])
    assert gain > 5.0, f"propagation gains only {gain:.2f} dB over repeating the nearest key frame"
    assert warp_error(truth, side) < 1e-4  # the reference is temporally consistent under this flow
    flicker, repeated = warp_error(out, side), warp_error(nearest, side)
    assert flicker < 1e-3 and flicker < 0.2 * repeated, f"warp error {flicker:.2e} (nearest key repeated: {repeated:.2e})"
