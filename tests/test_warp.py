"""Known-answer tests for vedit.ops.warp on constructed flows."""

import torch

from vedit.ops.warp import backward_warp, chain_to_first, occlusion_masks, pixel_grid, resize_flow


def ramp(h=16, w=20):
    """Image whose value is x + 100 y: bilinear sampling reproduces linear functions exactly."""
    g = pixel_grid(h, w, torch.float64)
    return (g[:, :1] + 100 * g[:, 1:]).clone()


def test_zero_flow_is_identity():
    img = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    out = backward_warp(img, torch.zeros(2, 2, 9, 11, dtype=torch.float64))
    torch.testing.assert_close(out, img)


def test_samples_at_p_plus_flow_in_pixels():
    img = ramp()
    flow = torch.zeros(1, 2, 16, 20, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = 2.25, -1.5  # dx, dy
    out = backward_warp(img, flow)
    # interior pixels (target inside the frame) read value (x + 2.25) + 100 (y - 1.5)
    expected = img + 2.25 - 150
    torch.testing.assert_close(out[..., 2:, :17], expected[..., 2:, :17])


def test_border_padding_clamps_outside_samples():
    img = ramp()
    flow = torch.zeros(1, 2, 16, 20, dtype=torch.float64)
    flow[:, 0] = 50.0
    out = backward_warp(img, flow)
    torch.testing.assert_close(out[0, 0, :, 0], img[0, 0, :, -1])


def test_bad_shapes_raise():
    import pytest

    with pytest.raises(ValueError, match="resize_flow"):
        backward_warp(torch.rand(1, 3, 8, 8), torch.zeros(1, 2, 4, 4))


def translation(h, w, dx, dy, n=1):
    f = torch.zeros(n, 2, h, w, dtype=torch.float64)
    f[:, 0], f[:, 1] = dx, dy
    return f


def test_consistent_translation_only_occludes_pixels_leaving_the_frame():
    occ_f, occ_b = occlusion_masks(translation(12, 16, 3.0, 0.0), translation(12, 16, -3.0, 0.0))
    # pixels x >= 13 move beyond x = 15.5; in the backward direction pixels x <= 2 come from outside
    assert occ_f[0, 0, :, 13:].eq(1).all() and occ_f[0, 0, :, :13].eq(0).all()
    assert occ_b[0, 0, :, :3].eq(1).all() and occ_b[0, 0, :, 3:].eq(0).all()


def test_disoccluded_strip_is_marked():
    # frame t: a foreground block at x in [4, 8) moves right by 4 px over a static background.
    h, w = 10, 24
    fwd = torch.zeros(1, 2, h, w, dtype=torch.float64)
    fwd[0, 0, :, 4:8] = 4.0
    bwd = torch.zeros(1, 2, h, w, dtype=torch.float64)
    bwd[0, 0, :, 8:12] = -4.0  # block now at [8, 12) came from 4 px left
    occ_f, occ_b = occlusion_masks(fwd, bwd)
    # background at x in [8, 12) in frame t is covered in t+1; in t+1 x in [4, 8) is uncovered
    assert occ_f[0, 0, :, 8:12].eq(1).all()
    assert occ_b[0, 0, :, 4:8].eq(1).all()
    assert occ_f[0, 0, :, :4].eq(0).all() and occ_f[0, 0, :, 13:].eq(0).all()
    assert occ_b[0, 0, :, 8:12].eq(0).all() and occ_b[0, 0, :, 13:].eq(0).all()


def test_threshold_uses_squared_norms_as_sundaram():
    # f = 1, b = -0.25: |f + b|^2 = 0.5625 > 0.01 (1 + 0.0625) + 0.5 = 0.5106 -> occluded;
    # b = -0.3: 0.49 < 0.5109 -> not (with plain norms both would be occluded: 0.75, 0.7 > 0.5125)
    fwd = translation(6, 6, 1.0, 0.0)
    occ_f, _ = occlusion_masks(fwd, translation(6, 6, -0.25, 0.0))
    assert occ_f[0, 0, :, :4].eq(1).all()
    occ_f, _ = occlusion_masks(fwd, translation(6, 6, -0.3, 0.0))
    assert occ_f[0, 0, :, :4].eq(0).all()


def test_chain_to_first_composes_translations():
    # frame t is frame 0 shifted right by 1 px per frame: pixel p of frame t came from p - t in frame 0
    bwd = translation(8, 12, -1.0, 0.0, n=3)
    corr = chain_to_first(bwd)
    grid = pixel_grid(8, 12, torch.float64)[0]
    assert corr.shape == (4, 2, 8, 12)
    torch.testing.assert_close(corr[0], grid)
    torch.testing.assert_close(corr[3][:, :, 3:], grid[:, :, :-3])  # (x - 3, y)
    assert torch.isnan(corr[3][:, :, :3]).all()  # came from outside frame 0


def test_chain_to_first_respects_occlusion():
    bwd = translation(6, 6, 0.0, 0.0, n=2)
    occ = torch.zeros(2, 1, 6, 6, dtype=torch.float64)
    occ[0, 0, 2, 2] = 1
    corr = chain_to_first(bwd, occ)
    assert torch.isnan(corr[1, :, 2, 2]).all() and torch.isnan(corr[2, :, 2, 2]).all()
    assert torch.isfinite(corr[2, :, 0, 0]).all()


def test_resize_flow_scales_vectors():
    flow = translation(8, 10, 2.0, -1.0)
    out = resize_flow(flow, (16, 40))
    assert out.shape == (1, 2, 16, 40)
    torch.testing.assert_close(out[:, 0], torch.full((1, 16, 40), 8.0, dtype=torch.float64))
    torch.testing.assert_close(out[:, 1], torch.full((1, 16, 40), -2.0, dtype=torch.float64))
