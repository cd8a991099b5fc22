"""Rerender-A-Video key-frame translation on the tiny backbone (CPU, float64 where schedules are compared)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from vedit.backbones import build_backbone
from vedit.editors.params import ParamError
from vedit.errors import EditorError
from vedit.editors.rerender import (ADDED_PROMPT, NEGATIVE_PROMPT, PERIOD_ENDS, KeyFrameAttention, RerenderEditor,
                                    adain, chained_flow, inpainting_rescale, key_frame_indices, match_colour,
                                    period_steps, pixel_reference, restore_luminosity, soften_occlusion, start_step,
                                    StaticKV, WavefrontAttention, wavefront_plan)
from vedit.estimators import Estimators
from vedit.ops.warp import backward_warp, rerender_occlusion
from vedit.task import EditTask
from vedit.video import Video, VideoError

STEPS = 4  # start 1 at x0_strength 0.75; shape fusion step 0; pixel fusion step 3; AdaIN none (3.2 <= i <= 4)
ALL_ON = {"pixel_fusion": {"period": [0.25, 1.0]}, "color_adain": {"period": [0.75, 1.0]}}  # steps 2-3; step 3


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threading overhead dominates on 2 busy cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("tiny", "sd15-controlnet", dtype="float64")


def translating_video(num_frames: int = 3, size: int = 64, d: tuple[int, int] = (3, 1), seed: int = 0):
    """A window sliding over a textured canvas by d pixels per frame, with its exact flow and occlusion."""
    g = torch.Generator().manual_seed(seed)
    big = size + num_frames * max(d)
    canvas = torch.nn.functional.interpolate(torch.rand(1, 3, big // 8, big // 8, generator=g), size=(big, big),
                                             mode="bicubic", align_corners=False)[0].clamp(0, 1)
    canvas[:, big // 3: big // 2, big // 4: big // 2] = 0.95  # a bright block: Canny finds edges
    frames = torch.stack([canvas[:, t * d[1]: t * d[1] + size, t * d[0]: t * d[0] + size] for t in range(num_frames)])
    n = num_frames - 1
    flow_bwd = torch.tensor(d, dtype=torch.float32).view(1, 2, 1, 1).expand(n, 2, size, size).clone()
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    occ_bwd = ((xs + d[0] > size - 1) | (ys + d[1] > size - 1)).float().expand(n, 1, size, size).clone()
    occ_fwd = ((xs - d[0] < 0) | (ys - d[1] < 0)).float().expand(n, 1, size, size).clone()
    side = {"flow_fwd": -flow_bwd, "flow_bwd": flow_bwd, "occ_fwd": occ_fwd, "occ_bwd": occ_bwd}
    return Video(frames, fps=8.0, id="slide"), side


@pytest.fixture(scope="module")
def two_frames(backbone):
    """A two-key-frame task and its output with the default switches."""
    task = make_task(num_frames=2)
    return task, run(backbone, task)


def make_task(num_frames: int = 3, **kw) -> EditTask:
    video, side = translating_video(num_frames, **kw)
    return EditTask(video, "a textured wall", "a painting of a wall", seed=0, side=side)


def run(backbone, task: EditTask, **params) -> torch.Tensor:
    params = {"steps": STEPS, "key_interval": 1, **params}
    return RerenderEditor(backbone, Estimators(), **params).edit(task).frames


# ----------------------------------------------------------------------------- building blocks

def test_schedule_periods():
    """Each end inclusive or not as the released code compares step i with steps * p."""
    assert start_step(0.75, 20) == 5 and start_step(0.9, 20) == 2 and start_step(1.0, 20) == 0
    assert list(period_steps((0.0, 0.1), 20, PERIOD_ENDS["shape_fusion"])) == [0, 1, 2]
    assert list(period_steps((0.5, 0.8), 20, PERIOD_ENDS["pixel_fusion"])) == [11, 12, 13, 14, 15]
    assert list(period_steps((0.8, 1.0), 20, PERIOD_ENDS["color_adain"])) == list(range(16, 21))
    assert list(period_steps((0.52, 0.8), 20, (True, True))) == list(range(11, 17))  # 10.4 <= i <= 16
    assert key_frame_indices(8, 4) == [0, 4, 7] and key_frame_indices(9, 4) == [0, 4, 8]


def yaml_params() -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).parents[1] / "conf" / "method" / "rerender.yaml").read_text())["params"]


def test_constraint_steps_at_20_steps_with_the_default_periods(backbone):
    windows = RerenderEditor(backbone, **yaml_params()).constraint_steps()  # x0_strength 0.75: starts at step 5
    assert windows == RerenderEditor(backbone).constraint_steps()  # the code's defaults are the yaml's
    assert windows == {"cross_frame_attention": list(range(5, 20)), "shape_fusion": [],
                       "pixel_fusion": [11, 12, 13, 14, 15], "color_adain": [16, 17, 18, 19]}
    from_noise = RerenderEditor(backbone, x0_strength=1.0, color_adain={"enabled": False}).constraint_steps()
    assert from_noise["shape_fusion"] == [0, 1, 2] and from_noise["color_adain"] == []


def test_yaml_defaults_are_the_papers():
    """conf/method/rerender.yaml: the paper's periods, the released code's prompts, EbSynth's vote and the
    released code's blend; the propagation block names every parameter, with the function's defaults."""
    import inspect

    from vedit.ops.propagation import propagate_keyframes

    params = yaml_params()
    assert (params["steps"], params["x0_strength"], params["key_interval"]) == (20, 0.75, 10)
    assert params["shape_fusion"]["period"] == [0.0, 0.1] and params["pixel_fusion"]["period"] == [0.5, 0.8]
    assert params["color_adain"]["period"] == [0.8, 1.0]
    assert params["added_prompt"] == ADDED_PROMPT == "best quality, extremely detailed"
    assert params["negative_prompt"] == NEGATIVE_PROMPT and NEGATIVE_PROMPT.startswith("longbody, lowres")
    assert params["key_flow"] == "direct" and params["color_correction"] is False
    prop = params["propagation"]
    assert (prop["patch_size"], prop["uniformity"], prop["weights"]) == (5, 3500.0, {"color": 6.0, "edge": 0.5,
                                                                                   "temporal": 0.5, "pos": 2.0})
    assert prop["selective_vote"] is False and prop["weighted_vote"] is False and prop["blend_temperature"] is None
    assert (prop["selection"], prop["blend"], prop["poisson"]) == ("temporal", "meanstd", True)  # -ps, as released
    assert (prop["edge_guide"], prop["guide_warp"], prop["temporal_mask"]) == ("released", "nearest_inpaint", False)
    assert params["occlusion"] == "released"
    assert params["pixel_fusion"]["fidelity_mask"] == "released" and params["pixel_fusion"]["reference_noise"] == "shared"
    signature = inspect.signature(propagate_keyframes).parameters
    runtime = {"source", "key_indices", "key_outputs", "flow_fwd", "flow_bwd", "occ_fwd", "occ_bwd", "device", "seed",
               "chain_batch", "cuda_graphs"}  # the top-level speed parameters propagation_batch, propagation_graphs
    assert params["propagation_batch"] is None and params["propagation_graphs"] is True
    assert set(prop) == set(signature) - runtime
    assert {k: v for k, v in prop.items() if k != "weights"} == \
        {k: signature[k].default for k in prop if k != "weights"}


def test_adain_matches_reference_channel_stats():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) * 3 + 1
    ref = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) * torch.tensor([0.5, 1, 2, 4]).view(1, 4, 1, 1) - 2
    out = adain(x, ref).flatten(2).numpy()
    r = ref.flatten(2).numpy()
    assert abs(out.mean(-1) - r.mean(-1)).max() < 1e-10
    assert abs(out.std(-1) - r.std(-1)).max() < 1e-10


def test_key_frame_attention_serves_first_and_previous_not_current():
    store = KeyFrameAttention()
    feats = {f: torch.full((2, 3, 4), float(f)) for f in range(3)}
    for f in range(3):
        store.begin_step(0)
        kv = store("up_blocks.1.attentions.0.transformer_blocks.0.attn1", feats[f])
        if f == 0:
            assert kv is feats[0]  # the first key frame: plain self-attention
        elif f == 1:
            assert torch.equal(kv, feats[0])  # previous is the first frame: [first; first] == [first]
        else:
            assert torch.equal(kv, torch.cat([feats[0], feats[1]], dim=1))
        store.finish_frame(is_first=f == 0)


def test_pixel_reference_uses_first_then_previous_then_direct():
    """Frame 8 of a 3-px/frame slide: not visible in frame 0 for x >= 40, nor in frame 4 for x >= 52."""
    video, side = translating_video(num_frames=9, d=(3, 0))
    g = torch.Generator().manual_seed(1)
    first_out, prev_out, direct = (torch.rand(1, 3, 64, 64, generator=g) for _ in range(3))
    flow_f, occ_f = chained_flow(side["flow_bwd"], side["occ_bwd"], 8, 0)
    flow_p, occ_p = chained_flow(side["flow_bwd"], side["occ_bwd"], 8, 4)
    assert torch.equal(occ_f[0, 0, 0], (torch.arange(64) >= 40).float())
    assert torch.equal(occ_p[0, 0, 0], (torch.arange(64) >= 52).float())
    ref = pixel_reference(direct, backward_warp(first_out, flow_f), backward_warp(prev_out, flow_p),
                          soften_occlusion(occ_f), soften_occlusion(occ_p))
    # soft masks reach 8 px (9x9 dilation + 9x9 blur) before the occlusion border
    torch.testing.assert_close(ref[..., :32], first_out[..., 24:56], rtol=0, atol=1e-4)
    torch.testing.assert_close(ref[..., 40:44], prev_out[..., 52:56], rtol=0, atol=1e-4)
    torch.testing.assert_close(ref[..., 52:], direct[..., 52:], rtol=0, atol=1e-6)


def test_inpainting_rescale_keeps_noise_level_inside_and_blends_linearly_at_edges():
    weight = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    weight[..., :, :5] = 0.5
    r = inpainting_rescale(weight, inner_strength=0.9, smooth_boundary=True)
    assert torch.allclose(r[..., :, :3], torch.tensor(0.9 * math.sqrt(0.75), dtype=torch.float64))
    assert torch.allclose(r[..., :, 4], torch.tensor(0.5, dtype=torch.float64))  # edge of the mask
    assert torch.allclose(r[..., :, 6:], torch.tensor(1.0, dtype=torch.float64))  # no fusion: unchanged


def test_restore_luminosity_keeps_the_originals_luminosity_and_the_images_colour():
    g = torch.Generator().manual_seed(4)
    images = 0.3 + 0.4 * torch.rand(2, 3, 8, 8, generator=g)
    originals = 0.3 + 0.4 * torch.rand(2, 3, 8, 8, generator=g)
    out = restore_luminosity(images, originals)
    lum = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((out * lum).sum(1), (originals * lum).sum(1))
    torch.testing.assert_close(out - out.mean(1, keepdim=True), images - images.mean(1, keepdim=True))  # same chroma
    white = restore_luminosity(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1), torch.ones(1, 3, 1, 1))
    torch.testing.assert_close(white, torch.ones(1, 3, 1, 1))  # clipped into gamut toward the luminosity


def test_match_colour_moves_statistics_to_reference():
    g = torch.Generator().manual_seed(3)
    images = 0.3 * torch.rand(2, 3, 32, 32, generator=g)
    reference = 0.5 + 0.5 * torch.rand(3, 32, 32, generator=g)
    out = match_colour(images, reference)
    assert out.shape == images.shape
    assert (out.mean((0, 2, 3)) - reference.mean((1, 2))).abs().max() < 0.03


# ----------------------------------------------------------------------------- the editor

def test_resume_from_direct_pass_equals_two_full_passes(backbone):
    task = make_task()
    resumed = run(backbone, task, reuse_direct_pass=True)
    full = run(backbone, task, reuse_direct_pass=False)
    no_fusion = run(backbone, task, pixel_fusion={"enabled": False})
    torch.testing.assert_close(resumed, full, rtol=0, atol=1e-12)
    assert (resumed - no_fusion).abs().max() > 1e-4  # the fused pass did change the frames


def test_shape_fusion_is_inactive_before_the_start_step(backbone, two_frames):
    task, on = two_frames  # x0_strength 0.75
    off = run(backbone, task, shape_fusion={"enabled": False})
    assert torch.equal(on, off)
    on = run(backbone, task, x0_strength=1.0)
    off = run(backbone, task, x0_strength=1.0, shape_fusion={"enabled": False})
    assert torch.equal(on[0], off[0]) and (on[1] - off[1]).abs().max() > 1e-4


@pytest.mark.parametrize("switch", [{"cross_frame_attention": False}, {"color_adain": {"period": [0.75, 1.0]}},
                                    {"pixel_fusion": {"period": [0.75, 0.75]}}])
def test_switches_change_later_key_frames_only(backbone, two_frames, switch):
    task, base = two_frames
    other = run(backbone, task, **switch)
    assert torch.equal(base[0], other[0])  # the first key frame is unconstrained
    assert (base[1] - other[1]).abs().max() > 1e-4


def test_errors_name_the_input(backbone):
    one = EditTask(Video(torch.rand(1, 3, 64, 64), 8.0, "single"), "a", "b")
    with pytest.raises((EditorError, VideoError), match="single"):
        run(backbone, one)
    with pytest.raises(EditorError, match="key_flow='optical'"):
        RerenderEditor(backbone, key_flow="optical")
    with pytest.raises(EditorError, match="propagation.*patchsize"):
        RerenderEditor(backbone, propagation={"patchsize": 5})
    no_flow = EditTask(make_task().video, "a", "b")  # no ground truth, and flow=gt asked for
    with pytest.raises(EditorError, match="slide"):
        RerenderEditor(backbone, Estimators(flow="gt"), steps=STEPS, key_interval=1).edit(no_flow)
    with pytest.raises(EditorError, match="x0_strength"):
        RerenderEditor(backbone, x0_strength=0.0)
    with pytest.raises(EditorError, match="schedule='diagonal'"):
        RerenderEditor(backbone, schedule="diagonal")
    with pytest.raises(EditorError, match="pixel_fusion.*perod"):
        RerenderEditor(backbone, pixel_fusion={"perod": [0.5, 0.8]})


def test_small_video_with_propagation(backbone):
    from vedit.data.synthetic import SyntheticDataset

    item = next(iter(SyntheticDataset(num_videos=1, num_frames=8, size=(64, 64), seed=0)))
    task = EditTask(item.video, item.source_prompt, item.edit_prompts[0], seed=0, side=item.side)
    result = RerenderEditor(backbone, Estimators(), steps=STEPS, key_interval=4,
                            propagation={"iterations": 2}).edit(task)
    assert result.frames.shape == (8, 3, 64, 64) and torch.isfinite(result.frames).all()
    assert result.frames.min() >= 0 and result.frames.max() <= 1
    assert result.info["key_indices"] == [0, 4, 7] and result.info["key_interval"] == 4
    assert result.info["flow_estimator"] == "gt"  # the dataset's exact flow, as auto picks it
    assert {"preprocessing", "sampling", "propagation"} <= set(result.timings)


def test_key_interval_longer_than_the_clip_is_clamped(backbone):
    task = make_task(num_frames=4)
    result = RerenderEditor(backbone, Estimators(), steps=STEPS, key_interval=10).edit(task)
    assert result.info["key_indices"] == [0, 3] and result.info["key_interval"] == 3
    assert result.frames.shape == (4, 3, 64, 64)


def test_prompts_used_are_recorded_and_reach_the_model(backbone, two_frames):
    task, base = two_frames
    result = RerenderEditor(backbone, Estimators(), steps=STEPS, key_interval=1).edit(task)
    assert result.info["prompt"] == f"{task.target_prompt}, {ADDED_PROMPT}"
    assert result.info["negative_prompt"] == NEGATIVE_PROMPT
    plain = RerenderEditor(backbone, Estimators(), steps=STEPS, key_interval=1, added_prompt="", negative_prompt="").edit(task)
    assert plain.info["prompt"] == task.target_prompt and plain.info["negative_prompt"] == ""
    assert (plain.frames - base).abs().max() > 1e-4


def test_direct_key_frame_flow():
    """Flow straight between frames 0 and 4 of a 3-px/frame slide: 12 px; DIS and chained ground truth agree."""
    video, side = translating_video(num_frames=5, d=(3, 0))
    with_gt = EditTask(video, "a", "b", side=side)
    exact = Estimators().flow_between(with_gt, [(0, 4), (2, 4)])
    assert exact["flow_bwd"].shape == (2, 2, 64, 64)
    torch.testing.assert_close(exact["flow_bwd"][0, :, :, :52], torch.tensor([12.0, 0.0]).view(2, 1, 1).expand(2, 64, 52))
    assert torch.equal(exact["occ_bwd"][0, 0, 0], (torch.arange(64) >= 52).float())
    torch.testing.assert_close(exact["flow_fwd"][1, :, :, 6:], torch.tensor([-6.0, 0.0]).view(2, 1, 1).expand(2, 64, 58))
    dis = Estimators(flow="dis").flow_between(EditTask(video, "a", "b"), [(0, 4)])
    inner = dis["flow_bwd"][0, :, 8:-8, 8:40]
    assert (inner - torch.tensor([12.0, 0.0]).view(2, 1, 1)).abs().median() < 0.5
    with pytest.raises(EditorError, match=r"\(4, 2\)"):
        Estimators().flow_between(with_gt, [(4, 2)])


def test_raft_pair_flow_matches_adjacent_flow_for_adjacent_pairs():
    """The same network on the same frame pairs: pair flows (0, 1), (1, 2) equal the adjacent-frame flows."""
    from torchvision.models.optical_flow import raft_small

    from vedit.estimators.flow import raft_flow, raft_flow_pairs

    torch.manual_seed(0)
    model = raft_small().eval()
    frames = translating_video(num_frames=3, size=64)[0].frames
    fwd, bwd = raft_flow(frames, model, iters=1)
    ab, ba = raft_flow_pairs(frames, [(0, 1), (1, 2)], model, iters=1, batch_size=3)
    torch.testing.assert_close(ab, fwd, rtol=0, atol=1e-4)
    torch.testing.assert_close(ba, bwd, rtol=0, atol=1e-4)


def test_key_flows_are_direct_by_default_and_chained_on_request(backbone):
    video, _ = translating_video(num_frames=5, d=(3, 1))
    task = EditTask(video, "a", "b")  # no ground truth: DIS
    keys = [0, 2, 4]
    direct_editor = RerenderEditor(backbone, Estimators(flow="dis"))
    flows = direct_editor._flows(task)
    direct = direct_editor._key_flows(task, keys, flows)
    pairs = Estimators(flow="dis").flow_between(task, [(0, 2), (0, 4), (2, 4)])
    (to_first, occ_first), (to_prev, _) = direct[2]  # key frame 4
    released_occ = rerender_occlusion(pairs["flow_fwd"], pairs["flow_bwd"])[1]  # occlusion="released" by default
    assert torch.equal(to_first, pairs["flow_bwd"][1:2]) and torch.equal(occ_first, released_occ[1:2])
    assert torch.equal(to_prev, pairs["flow_bwd"][2:3])
    estimator = RerenderEditor(backbone, Estimators(flow="dis"), occlusion="estimator")
    assert torch.equal(estimator._key_flows(task, keys, estimator._flows(task))[2][0][1], pairs["occ_bwd"][1:2])
    chained = RerenderEditor(backbone, Estimators(flow="dis"), key_flow="chained")._key_flows(task, keys, flows)
    assert not torch.equal(chained[2][0][0], to_first)


def test_colour_correction_changes_the_input(backbone, two_frames):
    task, base = two_frames
    assert not torch.equal(base, run(backbone, task, color_correction=True))


# ----------------------------------------------------------------------------- wavefront schedule

def test_wavefront_plan_calls_for_the_benchmark_setting():
    """20 steps, x0_strength 0.75 (start 5), pixel fusion from step 10. Counted by hand: key frame 0
    takes calls 1-15; key frame 1's direct pass trails it by one call (2-16) and its fused pass
    (10 steps) follows (17-26); each later key frame's direct pass ends one call after the previous
    fused pass, then its own fused pass runs: 11 calls per key frame. Sequential: 15 + 25 per key."""
    for frames, keys, calls in ((21, 3, 37), (100, 11, 26 + 9 * 11)):
        assert len(key_frame_indices(frames, 10)) == keys
        plan = wavefront_plan(keys, 5, 20, 10, cross_frame=True, first_steps={16, 17, 18, 19})
        assert len(plan) == calls
        passes = [p for call in plan for p in call]
        expected = {(n, False, i) for n in range(keys) for i in range(5, 20)}
        expected |= {(n, True, i) for n in range(1, keys) for i in range(10, 20)}
        assert len(passes) == len(expected) and set(passes) == expected  # each pass exactly once


def test_wavefront_plan_without_fusion_is_a_diagonal():
    plan = wavefront_plan(3, 0, 4, None, cross_frame=True, first_steps=set())
    assert plan == [[(0, False, 0)], [(0, False, 1), (1, False, 0)], [(0, False, 2), (1, False, 1), (2, False, 0)],
                    [(0, False, 3), (1, False, 2), (2, False, 1)], [(1, False, 3), (2, False, 2)], [(2, False, 3)]]
    capped = wavefront_plan(3, 0, 4, None, cross_frame=True, first_steps=set(), max_keys=2)
    # lowest key frame first: key frame 2 starts once key frame 0 is done (call 5) and ends at call 8
    assert capped[4] == [(1, False, 3), (2, False, 0)] and len(capped) == 8


def record_decoded_latents(backbone, monkeypatch) -> list[torch.Tensor]:
    """Every latent the editor decodes (direct results and key-frame outputs), in float64."""
    seen, decode = [], backbone.decode_latents

    def spy(latents):
        seen.append(latents.clone())
        return decode(latents)

    monkeypatch.setattr(backbone, "decode_latents", spy)
    return seen


@pytest.mark.parametrize("params", [{}, {"reuse_direct_pass": False, "sampling_batch_size": 2}])
def test_wavefront_equals_sequential_with_every_constraint_on(backbone, monkeypatch, params):
    """4 key frames, x0_strength 1.0 so shape fusion (step 0) is active, with cross-frame attention,
    pixel fusion (steps 2-3) and AdaIN (step 3). UNet calls counted by hand: sequential 4 + 3 * 6 = 22
    (3 * 8 = 24 more with two full passes); wavefront 13 (5 calls until key frame 1's direct pass
    ends, then 2 + 3 * 3 + ... see test_wavefront_plan_*) and 19 with full passes capped at 2."""
    task = make_task(num_frames=4)
    calls = []
    hook = backbone.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        latents, results = {}, {}
        for schedule in ("sequential", "wavefront"):
            latents[schedule] = record_decoded_latents(backbone, monkeypatch)
            calls.clear()
            results[schedule] = run(backbone, task, x0_strength=1.0, schedule=schedule, **ALL_ON, **params)
            results[schedule + "_calls"] = len(calls)
            monkeypatch.undo()
    finally:
        hook.remove()
    seq, wave = latents["sequential"], latents["wavefront"]
    assert len(seq) == len(wave) >= 4 + 3  # 4 outputs, 3 direct results (and the fidelity encoder's decodes)
    for a, b in zip(seq, wave):
        assert a.dtype == torch.float64
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert torch.equal(results["sequential"], results["wavefront"])
    expected = (22, 13) if not params else (22 + 6, 19)
    assert (results["sequential_calls"], results["wavefront_calls"]) == expected


def test_wavefront_padding_gives_few_batch_shapes_and_the_same_result(backbone):
    """batch_multiple=2 pads every call to an even number of passes (4, 8, ... rows) with K/V of one
    length; unpadded calls have 1 to 4 passes. The padded rows are dropped: same frames (float64)."""
    task = make_task(num_frames=4)
    frames, sizes = {}, {}
    for multiple in (None, 2):
        seen = []
        hook = backbone.unet.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[0]))
        try:
            frames[multiple] = run(backbone, task, x0_strength=1.0, batch_multiple=multiple, **ALL_ON)
        finally:
            hook.remove()
        sizes[multiple] = set(seen)
    assert sizes[None] == {2, 4, 6, 8} and sizes[2] == {4, 8}
    torch.testing.assert_close(frames[2], frames[None], rtol=1e-9, atol=1e-9)

    attention = WavefrontAttention(fixed_length=True)
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    attention.begin_call([(0, 0, True), (0, 0, False)])  # the first key frame alone, padded
    assert torch.equal(attention("a", x), torch.cat([x, x], dim=1))


def test_static_kv_serves_what_the_eager_wavefront_attention_serves_and_records_the_same():
    """The CUDA-graph form of the wavefront's K/V (buffers filled before a call, row masks) gives, for a call
    mixing key frames 3, 0 and 1 (padded) at two steps, exactly the eager K/V, and records the same features."""
    g = torch.Generator().manual_seed(0)
    features = {k: {"a": torch.randn(2, 5, 3, generator=g)} for k in ((0, 4), (2, 4), (0, 3))}
    rows = [(3, 4, True), (0, 5, True), (1, 4, False), (1, 4, False)]
    x = torch.randn(8, 5, 3, generator=g)
    eager, graphed = WavefrontAttention(fixed_length=True), WavefrontAttention(fixed_length=True)
    eager.features, graphed.features = ({k: dict(v) for k, v in features.items()} for _ in range(2))
    eager.begin_call(rows)
    expected = eager("a", x)
    static = StaticKV(8, x.device, {"a": (x.shape, x.dtype)})
    graphed.fill(static, rows)
    graphed.static = static
    assert torch.equal(graphed("a", x), expected)
    graphed.static = None
    graphed.record(static, rows)
    assert graphed.features.keys() == eager.features.keys()
    assert all(torch.equal(graphed.features[k]["a"], eager.features[k]["a"]) for k in eager.features)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("frames", [4, 6])
def test_sampling_graphs_give_the_eager_frames(frames):
    """Wavefront calls replayed from CUDA graphs (each shape's first call eager, its second captured) give the
    eager frames, in a first edit and in a second one of the same editor that only replays."""
    bb = build_backbone("tiny", "sd15-controlnet", device="cuda", dtype="float32")
    task = make_task(num_frames=frames)
    params = {"key_interval": 2, "x0_strength": 1.0, **ALL_ON}
    rows = []
    hook = bb.unet.register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape[0]))
    try:
        eager = run(bb, task, sampling_graphs=False, **params)
    finally:
        hook.remove()
    editor = RerenderEditor(bb, Estimators(), steps=STEPS, **params)
    first = editor.edit(task).frames
    captured = len(editor.wavefront_graphs.captured)
    second = editor.edit(task).frames
    calls = Counter(rows)
    assert captured == sum(count > 1 for count in calls.values()) and len(editor.wavefront_graphs.captured) == len(calls)
    torch.testing.assert_close(first, eager, rtol=0, atol=0)
    torch.testing.assert_close(second, eager, rtol=0, atol=0)


def test_attention_kernels_restrict_sdpa_inside_the_edit_only():
    """The editor's `attention_kernels` apply to its attention calls and nowhere else: on the CPU the
    'efficient' kernel does not exist, so an edit restricted to it fails, while SDPA outside works;
    'math' alone gives the frames of the default kernels (float64)."""
    bb = build_backbone("tiny", "sd15-controlnet", dtype="float64")
    task = make_task(num_frames=3)
    q = torch.randn(1, 2, 4, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="kernel"):
        run(bb, task, attention_kernels=["efficient"])
    torch.nn.functional.scaled_dot_product_attention(q, q, q)
    torch.testing.assert_close(run(bb, task, attention_kernels=["math"]), run(bb, task, attention_kernels=None))
    with pytest.raises(ParamError, match=r"attention_kernels=\['cudnn', 'fast'\] is not allowed"):
        RerenderEditor.check_params({"attention_kernels": ["cudnn", "fast"]})


@pytest.mark.parametrize("frames,params", [(3, {}), (7, {"sampling_batch_size": 3, "x0_strength": 1.0, **ALL_ON})])
def test_warmup_runs_the_edits_batch_shapes_and_a_propagation_and_changes_no_frame(monkeypatch, frames, params):
    """Warm-up at the video's size and length calls the UNet at every batch shape the edit's wavefront uses
    (with cross-frame attention), runs one propagation at the video's size, draws no random numbers and
    leaves the edit's frames bit for bit unchanged."""
    import vedit.editors.rerender as rerender_module

    bb = build_backbone("tiny", "sd15-controlnet", dtype="float64")
    task = make_task(num_frames=frames)
    params = {"key_interval": 2, **params}
    before = run(bb, task, **params)
    sources, rows = [], []
    real = rerender_module.propagate_keyframes
    monkeypatch.setattr(rerender_module, "propagate_keyframes",
                        lambda source, *a, **kw: (sources.append(tuple(source.shape)), real(source, *a, **kw))[1])
    hook = bb.unet.register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape[0]))
    rng = torch.get_rng_state()
    try:
        RerenderEditor(bb, steps=STEPS, **params).warmup(tuple(task.video.size), frames)
        warm, rows[:] = set(rows), []
        assert sources == [(3, 3, *task.video.size)] and torch.equal(torch.get_rng_state(), rng)
        monkeypatch.undo()
        torch.testing.assert_close(run(bb, task, **params), before, rtol=0, atol=0)
    finally:
        hook.remove()
    assert set(rows) <= warm and len(set(rows)) >= (2 if frames > 3 else 1)


@pytest.mark.parametrize("frames,chains", [(5, 4), (4, 2)])  # keys 0, 2, 4: 4 chains; keys 0, 2, 3: 2 (none 2 -> 3)
def test_propagation_out_of_memory_names_the_video_and_propagation_batch(monkeypatch, frames, chains):
    """A GPU out-of-memory error in propagation (injected: a CPU cannot run out of GPU memory) becomes an
    EditorError that names the video, the chains per call and the setting that lowers them."""
    import vedit.editors.rerender as rerender_module

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(rerender_module, "propagate_keyframes", out_of_memory)
    bb = build_backbone("tiny", "sd15-controlnet", dtype="float64")
    task = make_task(num_frames=frames)
    with pytest.raises(EditorError, match=rf"{task.video.id!r}.* with {chains} chains .*propagation_batch"):
        run(bb, task, key_interval=2)
