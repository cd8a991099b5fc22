"""Rerender-A-Video's released-code rules (issue 27), each on constructed inputs: Canny on RGB, the occlusion
rule, the propagation guides, the Poisson blend, the shared pixel-reference noise."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import shared_path
from vedit.estimators.edges import canny_edges
from vedit.ops import propagation
from vedit.ops.blend import _gradients, released_poisson, rgb_to_lab
from vedit.ops.propagation import inpaint_telea, propagate_keyframes, released_edges
from vedit.ops.warp import occlusion_masks, pixel_grid, rerender_occlusion


def annotator_canny(rgb: np.ndarray, low: int, high: int) -> np.ndarray:
    """ControlNet's annotator (annotator/canny/__init__.py, the one the released code imports): cv2.Canny
    straight on the 8-bit RGB image."""
    return cv2.Canny(rgb, low, high)


# ----------------------------------------------------------------------------- Canny

def test_canny_sees_an_isoluminant_colour_edge_that_grey_misses():
    frame = torch.zeros(1, 3, 32, 32)
    frame[0, 0, :, :16] = 1.0  # red: luminance 0.299
    frame[0, 1, :, 16:] = 0.299 / 0.587  # green of the same luminance
    grey = cv2.cvtColor((frame[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY)
    assert np.ptp(grey) <= 1 and cv2.Canny(grey, 50, 100).sum() == 0  # no edge in grey
    edges = canny_edges(frame, 50, 100)[0, 0]
    assert edges[:, 15:17].all(dim=1).sum() == 0 and edges[:, 15:17].any(dim=1).all()  # one column per row
    assert edges[:, :14].sum() == 0 and edges[:, 18:].sum() == 0


def test_canny_equals_the_annotator_on_a_real_frame():
    folder = shared_path("data", "davis-mini", "JPEGImages", "480p")
    for clip in sorted(p for p in folder.iterdir() if p.is_dir())[:2]:
        rgb = cv2.cvtColor(cv2.imread(str(sorted(clip.glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB)
        ours = canny_edges(torch.from_numpy(rgb).permute(2, 0, 1)[None], 50, 100)[0, 0].numpy()
        expected = annotator_canny(rgb, 50, 100) > 0
        assert expected.mean() > 0.01 and np.array_equal(ours > 0, expected), clip.name
        grey = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 50, 100) > 0
        assert not np.array_equal(grey, expected)  # the two rules do differ on real frames


# ----------------------------------------------------------------------------- occlusion

def constant_flows(h: int, w: int, dx: float, error: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward flow (dx, 0) everywhere, backward flow (-dx + error, 0): |f + b(p + f)| = error inside."""
    fwd = torch.zeros(1, 2, h, w)
    fwd[:, 0] = dx
    bwd = torch.zeros(1, 2, h, w)
    bwd[:, 0] = -dx + error
    return fwd, bwd


def test_released_occlusion_rule_at_its_threshold():
    """f = (10, 0), b = (-10 + e, 0): |f + b(p + f)| = e there, against 0.01 (|f(p)| + |b(p)|) + 0.5 in
    [0.693, 0.7]: an error of 0.68 px passes, 0.71 px is occluded; Sundaram's squared rule passes both."""
    h, w = 4, 40
    error = torch.zeros(h, w)
    error[:, 12:20], error[:, 20:30] = 0.68, 0.71
    fwd, bwd = constant_flows(h, w, 10.0, error)
    occ_fwd, occ_bwd = rerender_occlusion(fwd, bwd)
    assert occ_fwd.shape == occ_bwd.shape == (1, 1, h, w)
    # forward: column x reads b at x + 10 (0.68 for x in 2..9, 0.71 for 10..19); x >= 30 leaves the frame,
    # where b reads zeros and |f| = 10 is over the bound
    expected_fwd = torch.zeros(w, dtype=torch.bool)
    expected_fwd[10:20] = expected_fwd[30:] = True
    # backward: column x reads f at x - 10 + e (its own error e); x < 10 leaves the frame
    expected_bwd = torch.zeros(w, dtype=torch.bool)
    expected_bwd[20:30] = expected_bwd[:10] = True
    assert torch.equal(occ_fwd[0, 0] > 0, expected_fwd.expand(h, w))
    assert torch.equal(occ_bwd[0, 0] > 0, expected_bwd.expand(h, w))
    sundaram_fwd, sundaram_bwd = occlusion_masks(fwd, bwd)
    assert sundaram_fwd[0, 0, :, :30].sum() == 0 and sundaram_bwd[0, 0, :, 10:].sum() == 0


def test_rerender_editor_recomputes_occlusion_by_the_released_rule():
    from vedit.backbones import build_backbone
    from vedit.editors.rerender import RerenderEditor

    backbone = build_backbone("tiny", "sd15-controlnet", dtype="float32")
    fwd, bwd = constant_flows(8, 40, 10.0, torch.full((8, 40), 0.71))
    flows = {"flow_fwd": fwd, "flow_bwd": bwd, "occ_fwd": torch.zeros(1, 1, 8, 40), "occ_bwd": torch.zeros(1, 1, 8, 40)}
    released = RerenderEditor(backbone)._with_occlusion(flows)
    assert torch.equal(released["occ_bwd"], rerender_occlusion(fwd, bwd)[1]) and released["occ_bwd"].any()
    assert RerenderEditor(backbone, occlusion="estimator")._with_occlusion(flows) is flows


# ----------------------------------------------------------------------------- propagation guides

def test_edge_guide_is_the_released_filter_on_every_channel():
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, 12, 14, generator=g) * 255).round()
    kernel = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=np.float32)
    hwc = image[0].permute(1, 2, 0).numpy().astype(np.uint8)
    expected = cv2.filter2D(hwc, -1, kernel)  # uint8 in, uint8 out: saturated to 0..255, reflect-101 borders
    ours = released_edges(image / 255)[0].permute(1, 2, 0).numpy() * 255
    assert ours.shape == (12, 14, 3) and np.abs(ours - expected).max() < 1e-3
    dot = torch.zeros(1, 3, 5, 5)
    dot[0, 1, 2, 2] = 0.2
    edges = released_edges(dot)
    assert edges[0, 1, 2, 2] == pytest.approx(0.8) and edges.sum() == pytest.approx(0.8)  # neighbours clip to 0


def test_guides_are_warped_nearest_and_their_holes_inpainted():
    h, w = 16, 20
    coords = pixel_grid(h, w)
    image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    flow = torch.full((1, 2, h, w), 0.4)  # nearest: every pixel reads itself
    holes = torch.zeros(1, 1, h, w)
    holes[0, 0, 5:9, 6:12] = 1
    pos, temporal = propagation._warp_guides(coords, image, flow, holes, "nearest_inpaint")
    outside = holes[0, 0] == 0
    assert torch.equal(pos[0][:, outside], coords[0][:, outside])
    assert torch.equal(temporal[0][:, outside], image[0][:, outside])
    # holes filled as OpenCV's TELEA does (radius 30): the temporal guide on its 8-bit image, as the released
    # code's guide files; the positional guide per coordinate in float
    mask = holes[0, 0].numpy().astype(np.uint8)
    eight_bit = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    expected = cv2.inpaint(eight_bit, mask, 30, cv2.INPAINT_TELEA).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(temporal[0][:, ~outside].numpy(), expected[:, ~outside.numpy()], atol=1e-6)
    for c in range(2):
        expected = cv2.inpaint(np.ascontiguousarray(coords[0, c].numpy()), mask, 30, cv2.INPAINT_TELEA)
        np.testing.assert_allclose(pos[0, c].numpy(), expected, atol=1e-4)
    assert (pos[0] - coords[0]).abs()[:, ~outside].max() < 2.0  # a ramp's holes are filled with about the ramp
    bilinear = propagation._warp_guides(coords, image, flow, holes, "bilinear")
    torch.testing.assert_close(bilinear[0][..., :-1, :-1], (coords + 0.4)[..., :-1, :-1])  # interpolated, no inpainting
    assert torch.equal(inpaint_telea(image, torch.zeros_like(holes)), image)


def test_propagation_guides_by_default_and_by_switch(monkeypatch):
    seen = []

    def record(guides, style, *args, **kwargs):
        seen.append((guides, kwargs["target_mask"]))
        b, _, h, w = style.shape
        return style, torch.zeros(b, h, w), None

    monkeypatch.setattr(propagation, "guided_synthesis", record)
    t, h, w = 3, 12, 12
    frames = torch.rand(t, 3, h, w, generator=torch.Generator().manual_seed(2))
    still, occ = torch.zeros(t - 1, 2, h, w), torch.zeros(t - 1, 1, h, w)
    propagate_keyframes(frames, [0, 2], frames[[0, 2]], still, still, occ, occ)
    edge, temporal = seen[0][0][1], seen[0][0][3]
    assert edge.target.shape[1] == 3 and torch.equal(edge.target, released_edges(frames[[1, 1]]))
    assert temporal.masked is False  # the released binary gets the temporal guide everywhere
    assert seen[0][0][2].weight == pytest.approx(2 * 2 / 3)  # (row, col, 0): EbSynth splits 2 over 3 channels
    seen.clear()
    propagate_keyframes(frames, [0, 2], frames[[0, 2]], still, still, occ, occ, edge_guide="luminance",
                        temporal_mask=True, pos_guide="xy")
    assert seen[0][0][1].target.shape[1] == 1 and seen[0][0][3].masked is True and seen[0][0][2].weight == 2.0


# ----------------------------------------------------------------------------- Poisson blending

def released_least_squares(blend_lab: np.ndarray, first: np.ndarray, second: np.ndarray, choose: np.ndarray,
                           weights=(2.5, 0.5, 0.5)) -> np.ndarray:
    """The released poisson_fusion's system, solved densely: per Lab channel, rows w * (u_p - u_q) = w * g
    (g the selected result's difference, clipped to the 8-bit Lab equivalent of +-100) and u_p = blend_p."""
    c, h, w = blend_lab.shape
    clip = np.array([100 * 100 / 255, 100, 100])
    out = np.empty_like(blend_lab)
    for ch in range(c):
        rows, rhs = [], []
        for y in range(h):
            for x in range(w):
                for dy, dx in ((1, 0), (0, 1)):
                    if y + dy < h and x + dx < w:
                        src = second if choose[y, x] else first
                        r = np.zeros(h * w)
                        r[y * w + x], r[(y + dy) * w + x + dx] = weights[ch], -weights[ch]
                        g = np.clip(src[ch, y, x] - src[ch, y + dy, x + dx], -clip[ch], clip[ch])
                        rows.append(r)
                        rhs.append(weights[ch] * g)
        rows.extend(np.eye(h * w))
        rhs.extend(blend_lab[ch].ravel())
        out[ch] = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0].reshape(h, w)
    return out


def test_poisson_blend_solves_the_released_least_squares_problem():
    g = torch.Generator().manual_seed(3)
    first, second, blend = (0.2 + 0.6 * torch.rand(3, 1, 3, 6, 7, generator=g, dtype=torch.float64)).unbind(0)
    choose = torch.rand(1, 1, 6, 7, generator=g) > 0.5
    ours = rgb_to_lab(released_poisson(blend, first, second, choose))[0].numpy()
    expected = released_least_squares(rgb_to_lab(blend)[0].numpy(), rgb_to_lab(first)[0].numpy(),
                                      rgb_to_lab(second)[0].numpy(), choose[0, 0].numpy())
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_poisson_blend_where_gradients_match_gives_the_source():
    g = torch.Generator().manual_seed(4)
    source = 0.3 + 0.4 * torch.rand(1, 3, 10, 12, generator=g, dtype=torch.float64)
    choose = torch.rand(1, 1, 10, 12, generator=g) > 0.5
    torch.testing.assert_close(released_poisson(source, source, source, choose), source)
    gx, gy = _gradients(rgb_to_lab(source))
    assert gx.abs().max() > 1  # not a flat image


# ----------------------------------------------------------------------------- pixel-reference noise

def test_every_key_frame_gets_the_same_reference_noise():
    from vedit.backbones import build_backbone
    from vedit.editors import rerender
    from vedit.estimators import Estimators
    from vedit.task import EditTask
    from vedit.video import Video

    backbone = build_backbone("tiny", "sd15-controlnet", dtype="float32")
    frames = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    still, occ = torch.zeros(2, 2, 32, 32), torch.zeros(2, 1, 32, 32)
    side = {"flow_fwd": still, "flow_bwd": still, "occ_fwd": occ, "occ_bwd": occ}
    task = EditTask(Video(frames, 8.0, "still"), "a", "b", seed=3, side=side)
    for mode in ("shared", "per_key"):
        noises = []
        original = rerender._Sampler.pixel_fusion

        def spy(self, key, *args, _original=original):
            fusion = _original(self, key, *args)
            noises.append(torch.stack([fusion.noise[i] for i in sorted(fusion.noise)]))
            return fusion

        rerender._Sampler.pixel_fusion = spy
        try:
            rerender.RerenderEditor(backbone, Estimators(), steps=4, key_interval=1,
                                    pixel_fusion={"period": [0.25, 1.0], "reference_noise": mode}).edit(task)
        finally:
            rerender._Sampler.pixel_fusion = original
        assert len(noises) == 2 and noises[0].shape[0] == 2  # key frames 1 and 2, fusion steps 2 and 3
        assert torch.equal(noises[0], noises[1]) == (mode == "shared")
        assert not torch.equal(noises[0][0], noises[0][1])  # a fresh draw per step, as the released sampler


def test_rerender_ebsynth_preset_is_the_binarys_call():
    """video_blend.py runs the EbSynth binary with -searchvoteiters 12 -patchmatchiters 6, its default style
    weight 1 and full patches (no PCA), down to a short side of 2 * 5 + 1 px."""
    import yaml
    from pathlib import Path

    conf = Path(__file__).parents[1] / "conf" / "method"
    preset = yaml.safe_load((conf / "rerender_ebsynth.yaml").read_text())["params"]["propagation"]
    base = yaml.safe_load((conf / "rerender.yaml").read_text())["params"]["propagation"]
    assert preset == {"style_weight": 1.0, "search_vote_iters": 12, "coarsest_side": 11, "feature_dims": None}
    assert base["iterations"] == 6 and base["patch_size"] == 5
