"""VidMP3: MotionGuide, its injection into temporal attention, sparse-causal attention, tuning, edits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from vedit.backbones import build_backbone
from vedit.errors import EditorError
from vedit.editors.vidmp3 import (GUIDE_CHANNELS, GuideState, MotionGuideAttnProcessor, VidMP3Editor,
                                  correspondence_colours, guide_input, sparse_causal_kv,
                                  temporal_attention_layers, trainable_parameters)
from vedit.ops.attention import InjectedKVAttnProcessor, attention_processors
from vedit.ops.windows import blend_windows, temporal_windows, window_weights
from vedit.task import EditTask
from vedit.video import Video



@pytest.fixture(scope="module")
def backbone():
    return build_backbone("tiny", "sd15-animatediff", seed=0)


@pytest.fixture(scope="module")
def editor(backbone):
    return VidMP3Editor(backbone, steps=2, tune_steps=2, guide_resolution=32)


def square_clip(n: int, size: int, half: int, velocity: tuple[float, float], depth_step: float = 0.05,
                start: tuple[int, int] = (20, 24)) -> dict[str, torch.Tensor]:
    """A square translating by `velocity` px/frame and approaching the camera: exact mask, depth, correspondence."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    masks, depths, corrs = [], [], []
    for t in range(n):
        cx, cy = start[0] + velocity[0] * t, start[1] + velocity[1] * t
        m = ((xs - cx).abs() <= half) & ((ys - cy).abs() <= half)
        masks.append(m.float()[None])
        depths.append(torch.where(m, 0.5 + depth_step * t, 0.1)[None])
        corr = torch.stack([xs - velocity[0] * t, ys - velocity[1] * t])
        corrs.append(torch.where(m[None], corr, torch.full_like(corr, float("nan"))))
    return {"mask": torch.stack(masks), "depth": torch.stack(depths), "correspondence": torch.stack(corrs)}


def video_task(n: int = 4, size: int = 64, **side) -> EditTask:
    frames = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    return EditTask(Video(frames, fps=8.0, id="clip"), "a red square", "a blue ball", seed=0, side=side)


def synthetic_task(frames: int) -> EditTask:
    from vedit.data.synthetic import SyntheticDataset

    item = SyntheticDataset(num_videos=1, num_frames=frames, size=(64, 64), seed=0).load("synthetic_000")
    return EditTask(item.video, item.source_prompt, item.edit_prompts[0], seed=0, side=item.side, dataset="synthetic")


def unet_out(editor: VidMP3Editor, state: GuideState, procs: dict, x: torch.Tensor, text: torch.Tensor):
    state.num_frames = x.shape[1]
    with torch.no_grad(), attention_processors(editor.unet, procs):
        return editor.eps(x, 500, text)


# ------------------------------------------------------------------ MotionGuide input and features

def test_correspondence_colours_code_frame1_coordinates():
    clip = square_clip(3, 32, half=4, velocity=(2.0, 0.0), start=(10, 12))
    colours, valid = correspondence_colours(clip["correspondence"], clip["mask"][0])
    # frame 0's subject spans x 6..14, y 8..16; frame 2 moved 4 px right: pixel (x=10, y=12) shows (6, 12)
    assert colours[2, :, 12, 10].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert colours[0, :, 16, 14].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert valid[2, 0, 12, 5] == 0 and colours[2, :, 12, 5].abs().sum() == 0  # NaN correspondence -> no colour
    # a correspondence that lands outside frame 0's subject is not coloured
    corr = clip["correspondence"].clone()
    corr[1, :, 12, 12] = torch.tensor([1.0, 1.0])
    colours, valid = correspondence_colours(corr, clip["mask"][0])
    assert valid[1, 0, 12, 12] == 0 and colours[1, :, 12, 12].abs().sum() == 0


def test_guide_input_modes_have_documented_channels_and_vanish_outside_subject():
    clip = square_clip(3, 32, half=4, velocity=(1.0, 1.0), start=(10, 12))
    for mode, channels in GUIDE_CHANNELS.items():
        maps = guide_input(mode, clip["correspondence"], clip["depth"], clip["mask"])
        assert maps.shape == (3, channels, 32, 32)
        assert maps[clip["mask"].expand_as(maps) == 0].abs().max() == 0
    maps = guide_input("multiply", clip["correspondence"], clip["depth"], clip["mask"])
    # third channel = segmented depth / max depth (0.6 at frame 2 is the maximum)
    assert maps[2, 2, 14, 12].item() == pytest.approx(1.0)
    assert maps[0, 2, 12, 10].item() == pytest.approx(0.5 / 0.6)


def test_motion_guide_is_invariant_to_subject_size_and_sensitive_to_motion(editor):
    """The paper's cube experiment, on untrained (random) convolutions: same motion at two sizes vs another motion."""
    guide = editor.make_guide(seed=3)
    torch.nn.init.normal_(next(iter(guide.out.values())).weight)  # a non-zero head, to see the output too

    def features(clip):
        maps = guide_input("multiply", clip["correspondence"], clip["depth"], clip["mask"])
        with torch.no_grad():
            return guide.features(maps, clip["mask"])

    small = features(square_clip(8, 64, half=5, velocity=(2.0, 1.0)))
    large = features(square_clip(8, 64, half=9, velocity=(2.0, 1.0)))
    other = features(square_clip(8, 64, half=5, velocity=(-1.0, 2.0)))
    same_motion = (small - large).norm() / small.norm()
    other_motion = (small - other).norm() / small.norm()
    # boundary pixels (a larger share of a small square) keep it from exact; without the division by
    # alpha the two sizes would differ by their area ratio (~3x)
    assert same_motion < 0.4 * other_motion, (same_motion, other_motion)
    # frame 0 is the same picture for both motions; later frames differ more and more
    per_frame = (small - other).norm(dim=1)
    assert per_frame[0] < 1e-5 < per_frame[-1]


# ------------------------------------------------------------------ attention processors

def test_sparse_causal_attention_uses_exactly_first_and_previous_frame(editor):
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    attn = editor.unet.get_submodule(name)
    f, n, c = 5, 6, attn.to_q.in_features
    state = GuideState(num_frames=f)
    proc = InjectedKVAttnProcessor(name, sparse_causal_kv(state))
    x = torch.randn(2 * f, n, c, generator=torch.Generator().manual_seed(0))  # two clips (CFG branches)
    with torch.no_grad():
        out = proc(attn, x)
        # known answer: frame i = ordinary attention of frame i's queries over [frame 0; frame i-1]
        for i in range(f):
            kv = torch.cat([x[0], x[max(i - 1, 0)]])[None]
            ref = AttnProcessor2_0()(attn, x[i:i + 1], encoder_hidden_states=kv)
            torch.testing.assert_close(out[i:i + 1], ref, atol=1e-5, rtol=1e-5)
        for j, expected in [(0, set(range(f))), (2, {2, 3}), (4, {4})]:
            y = x.clone()
            y[j] += 1.0
            changed = {i for i in range(2 * f) if (proc(attn, y)[i] - out[i]).abs().max() > 1e-6}
            assert changed == expected, (j, changed)


def test_temporal_injection_adds_w_v_of_g_to_values(editor):
    name = "mid_block.motion_modules.0.transformer_blocks.0.attn1"
    attn = editor.unet.get_submodule(name)
    frames, c = 4, attn.to_v.in_features
    z = torch.randn(3 * 5, frames, c, generator=torch.Generator().manual_seed(0))  # (batch*H*W, frames, C)
    const = torch.randn(c, generator=torch.Generator().manual_seed(1))
    state = GuideState(num_frames=frames, weight=0.1, vectors={c: const.expand(frames, c)})
    proc = MotionGuideAttnProcessor(name, state)
    with torch.no_grad():
        plain = AttnProcessor2_0()(attn, z)
        injected = proc(attn, z)
        # attention weights sum to 1: a frame-constant g shifts every output by W_out W_V (0.1 g)
        shift = attn.to_out[0].weight @ (attn.to_v(0.1 * const[None])[0])
        torch.testing.assert_close(injected - plain, shift.expand_as(plain), atol=1e-5, rtol=1e-4)
        state.weight = 0.0
        torch.testing.assert_close(proc(attn, z), plain)
    state.weight, state.vectors = 0.1, {c: torch.randn(frames + 1, c)}
    with pytest.raises(ValueError, match="frames"):
        proc(attn, z)


def test_weight_zero_or_guide_off_changes_nothing(backbone, editor):
    x = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = backbone.encode_prompt("a red square")
    state = GuideState(weight=0.0)
    widths = {editor.unet.get_submodule(n).to_v.in_features for n in temporal_attention_layers(editor.unet)}
    state.vectors = {w: torch.randn(4, w) for w in widths}
    procs = editor.processors(state)
    guided = unet_out(editor, state, procs, x, text)
    off = VidMP3Editor(backbone, motion_guide=False)
    off._unet = editor.unet
    plain_procs = off.processors(state)
    assert not set(plain_procs) & set(temporal_attention_layers(editor.unet))
    torch.testing.assert_close(guided, unet_out(editor, state, plain_procs, x, text))
    state.weight = 0.1
    assert (unet_out(editor, state, procs, x, text) - guided).abs().max() > 1e-4  # the injection is live


def test_zero_initialised_guide_leaves_the_first_forward_unchanged(backbone, editor):
    clip = square_clip(4, 64, half=6, velocity=(2.0, 1.0))
    guide = editor.make_guide(seed=0)
    maps = guide_input("multiply", clip["correspondence"], clip["depth"], clip["mask"])
    state = GuideState(weight=0.1, vectors=guide(maps, clip["mask"]))
    assert all(v.abs().max() == 0 for v in state.vectors.values())
    x = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = backbone.encode_prompt("a red square")
    with_guide = unet_out(editor, state, editor.processors(state), x, text)
    without = unet_out(editor, state, editor.processors(GuideState(num_frames=4)), x, text)
    torch.testing.assert_close(with_guide, without)


# ------------------------------------------------------------------ tuning and full edits

def test_tuning_lowers_the_loss_and_changes_only_the_listed_parameters(backbone):
    ed = VidMP3Editor(backbone, tune_steps=15, tune_lr=2e-3, guide_resolution=32, gradient_checkpointing=False)
    clip = square_clip(4, 64, half=8, velocity=(3.0, 2.0))
    latents = ed._encode(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    text = backbone.encode_prompt("a red square")
    guide = ed.make_guide(seed=0)
    maps = guide_input("multiply", clip["correspondence"], clip["depth"], clip["mask"])
    state = GuideState(num_frames=4, weight=0.1)
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([400, 700])
    noise = torch.randn(2, *latents.shape, generator=gen)
    a = backbone.scheduler().alphas_cumprod[t].view(2, 1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise

    def measure() -> float:
        with torch.no_grad():
            state.vectors = guide(maps, clip["mask"])
            return sum(F.mse_loss(ed.eps(noisy[k:k + 1], t[k], text), noise[k:k + 1]).item() for k in range(2))

    unet_before = {k: v.clone() for k, v in ed.unet.state_dict().items()}
    guide_before = {k: v.clone() for k, v in guide.state_dict().items()}
    names = set(trainable_parameters(ed.unet))
    try:
        with attention_processors(ed.unet, ed.processors(state)):
            before = measure()
            for p in trainable_parameters(ed.unet).values():
                p.requires_grad_(True)
            losses = ed.tune(latents, text, state, guide, maps, clip["mask"], torch.Generator().manual_seed(1))
            after = measure()
        assert len(losses) == 15 and torch.isfinite(losses).all()
        assert after < before, (before, after)
        changed = {k for k, v in ed.unet.state_dict().items() if not torch.equal(v, unet_before[k])}
        assert changed and changed <= names, changed - names
        assert any(".attentions." in k and "attn1.to_q" in k for k in changed)
        assert any(".attentions." in k and "attn2.to_q" in k for k in changed)
        assert any("motion_modules" in k and "to_v" in k for k in changed)
        assert all(not torch.equal(v, guide_before[k]) for k, v in guide.state_dict().items())
    finally:
        with torch.no_grad():
            for k, p in trainable_parameters(ed.unet).items():
                p.requires_grad_(False)
                p.copy_(unet_before[k])


def test_edit_on_a_synthetic_video_completes_and_restores_the_weights(backbone, editor):
    task = synthetic_task(4)
    unet_before = {k: v.clone() for k, v in editor.unet.state_dict().items()}
    backbone_before = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    result = editor.edit(task)
    assert result.frames.shape == (4, 3, 64, 64)
    assert torch.isfinite(result.frames).all() and result.frames.min() >= 0 and result.frames.max() <= 1
    assert set(result.timings) == {"preprocessing", "tuning", "inversion", "sampling"}
    assert result.info["mask_source"] == "gt" and result.info["windows"] == [[0, 4]]
    for k, v in editor.unet.state_dict().items():
        assert torch.equal(v, unet_before[k]), k
    assert all(not p.requires_grad for p in editor.unet.parameters())
    for k, v in backbone.unet.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k


def test_without_a_subject_mask_the_whole_frame_is_the_subject(editor):
    clip = square_clip(4, 64, half=6, velocity=(2.0, 1.0))
    task = video_task(depth=clip["depth"], correspondence=clip["correspondence"])
    maps, mask, source = editor.guide_maps(task)
    assert source == "none" and mask.shape == (4, 1, 64, 64) and bool((mask == 1).all())
    assert maps.shape == (4, 3, 64, 64) and torch.isfinite(maps).all()
    with_mask = editor.guide_maps(video_task(**clip))
    assert with_mask[2] == "dataset" and with_mask[1].sum() < mask.sum()


def test_bad_inputs_get_clear_errors(backbone, editor):
    too_wide = VidMP3Editor(backbone, window=editor.max_frames + 1)
    too_wide._unet = editor.unet
    with pytest.raises(EditorError, match=r"window=33.*at most 32 frames.*window <= 32"):
        too_wide.check_inputs(video_task(n=4, size=16))
    editor.check_inputs(video_task(n=editor.max_frames + 8, size=16))  # long videos run in windows
    with pytest.raises(ValueError, match="guide_input"):
        VidMP3Editor(backbone, guide_input="sum")
    with pytest.raises(ValueError, match="window_overlap=16"):
        VidMP3Editor(backbone, window=16, window_overlap=16)
    with pytest.raises(ValueError, match="window_weighting"):
        VidMP3Editor(backbone, window_weighting="gauss")
    plain = build_backbone("tiny", "sd15", seed=0)
    with pytest.raises(EditorError, match="sd15-animatediff"):
        VidMP3Editor(plain).unet
    clip = square_clip(2, 32, half=4, velocity=(1.0, 0.0))
    with pytest.raises(EditorError, match="first frame is empty"):
        correspondence_colours(clip["correspondence"], torch.zeros(1, 32, 32))
    empty = {**clip, "mask": torch.zeros_like(clip["mask"])}
    with pytest.raises(EditorError, match=r"subject mask \(dataset\) of video 'clip' is empty.*estimators.masks"):
        editor.guide_maps(video_task(n=2, size=32, **empty))


def test_bfloat16_edit_tunes_float32_copies_and_restores_the_bfloat16_weights():
    bb = build_backbone("tiny", "sd15-animatediff", dtype="bfloat16", seed=0)
    ed = VidMP3Editor(bb, steps=1, tune_steps=1, guide_resolution=32)
    before = {k: v.clone() for k, v in ed.unet.state_dict().items()}
    result = ed.edit(video_task(n=3, **square_clip(3, 64, half=8, velocity=(2.0, 0.0))))
    assert torch.isfinite(result.frames).all() and result.info["tune_loss_first"] is not None
    for k, v in ed.unet.state_dict().items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, before[k]), k


# ------------------------------------------------------------------ whole videos: overlapping windows

def test_windows_and_their_weights_known_answers():
    assert temporal_windows(16, 16, 4) == [(0, 16)] and temporal_windows(5, 16, 4) == [(0, 5)]
    assert temporal_windows(40, 16, 4) == [(0, 16), (12, 28), (24, 40)]
    assert temporal_windows(50, 16, 4) == [(0, 16), (12, 28), (24, 40), (34, 50)]  # last window ends at the end
    assert temporal_windows(80, 16, 4)[-1] == (64, 80)
    assert window_weights(4).tolist() == [1, 2, 2, 1] and window_weights(5).tolist() == [1, 2, 3, 2, 1]
    assert window_weights(16)[12:].tolist() == [4, 3, 2, 1] and window_weights(3, "flat").tolist() == [1, 1, 1]
    # window k predicts the constant k: frames seen by one window keep its value, overlaps cross-fade
    windows = temporal_windows(40, 16, 4)
    out = blend_windows(lambda s, e: torch.full((2, e - s, 3), float(windows.index((s, e)))), 40, windows,
                        window_weights(16), dim=1)
    assert out.shape == (2, 40, 3) and bool((out == out[:, :, :1]).all())
    expected = [0.0] * 12 + [1 / 5, 2 / 5, 3 / 5, 4 / 5] + [1.0] * 8 + [6 / 5, 7 / 5, 8 / 5, 9 / 5] + [2.0] * 12
    torch.testing.assert_close(out[0, :, 0], torch.tensor(expected))
    with pytest.raises(ValueError, match="cover"):
        blend_windows(lambda s, e: torch.zeros(e - s), 10, [(0, 4), (6, 10)], window_weights(4), dim=0)
    with pytest.raises(ValueError, match="overlap"):
        temporal_windows(40, 16, 16)


def test_video_noise_prediction_is_the_weighted_mean_of_the_windows_predictions(backbone, editor):
    """Each window anchored on its own first frame (anchor: window), so each is a plain clip."""
    ed = VidMP3Editor(backbone, anchor="window")
    ed._unet = editor.unet
    x = torch.randn(1, 20, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = backbone.encode_prompt("a red square")
    widths = {ed.unet.get_submodule(n).to_v.in_features for n in temporal_attention_layers(ed.unet)}
    vectors = {w: torch.randn(20, w, generator=torch.Generator().manual_seed(w)) for w in widths}
    state = GuideState(weight=0.1)
    with torch.no_grad(), attention_processors(ed.unet, ed.processors(state)):
        video = ed.eps_video(x, 500, text, state, vectors)
        per_window = []
        for s, e in [(0, 16), (4, 20)]:
            state.num_frames, state.vectors = e - s, {w: v[s:e] for w, v in vectors.items()}
            per_window.append(ed.eps(x[:, s:e], 500, text))
    a, b = per_window
    torch.testing.assert_close(video[:, :4], a[:, :4])  # frames only the first window sees
    torch.testing.assert_close(video[:, 16:], b[:, 12:])  # frames only the second window sees
    # frame 5: position 5 of the first window (weight 6), position 1 of the second (weight 2)
    torch.testing.assert_close(video[:, 5], (6 * a[:, 5] + 2 * b[:, 1]) / 8)
    assert (a[:, 5] - b[:, 1]).abs().max() > 1e-3  # the two windows disagree: the blend is not trivial


def test_a_forty_frame_video_edits_to_forty_frames_with_tuning_on_its_windows(backbone, editor):
    result = editor.edit(synthetic_task(40))
    assert result.frames.shape == (40, 3, 64, 64) and torch.isfinite(result.frames).all()
    assert result.info["windows"] == [[0, 16], [12, 28], [24, 40]] and result.info["mask_source"] == "gt"
    ed = VidMP3Editor(backbone, tune_steps=300, tune_iterations="total")
    schedule = ed.tune_schedule(40, torch.Generator().manual_seed(0))
    assert len(schedule) == 300 and set(schedule) == set(ed.windows(40))  # every edited window is tuned
    assert max(schedule.count(w) for w in set(schedule)) < 130  # uniformly (100 expected each)
    assert ed.tune_schedule(16) == [(0, 16)] * 300  # a clip that fits is tuned whole


@pytest.mark.parametrize("frames,windows", [(50, 4), (80, 7)])
def test_every_window_gets_the_papers_100_tuning_iterations(backbone, frames, windows):
    per_window = VidMP3Editor(backbone).tune_schedule(frames)
    assert len(set(per_window)) == windows and set(per_window) == set(VidMP3Editor(backbone).windows(frames))
    assert all(per_window.count(w) == 100 for w in set(per_window)) and len(per_window) == 100 * windows
    assert per_window[:windows] == VidMP3Editor(backbone).windows(frames)  # interleaved: 1, 2, .., k, 1, ..
    total = VidMP3Editor(backbone, tune_iterations="total").tune_schedule(frames, torch.Generator().manual_seed(0))
    assert len(total) == 100 and set(total) <= set(per_window)
    assert VidMP3Editor(backbone, tune_iterations="total").tune_schedule(16) == [(0, 16)] * 100


@pytest.mark.parametrize("anchor", ["video", "window"])
def test_every_window_anchors_sparse_causal_attention_on_the_videos_first_frame(backbone, editor, anchor):
    """Windows (0, 16), (4, 20): in the second window's UNet call, frame i of a spatial self-attention
    layer attends to [anchor; frame i-1] with the anchor the first window's frame 0 (video) or the
    second window's own first frame, video frame 4 (window). Known answer from the recorded inputs."""
    ed = VidMP3Editor(backbone, anchor=anchor)
    ed._unet = editor.unet
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    attn = ed.unet.get_submodule(name)
    calls = []
    handle = attn.register_forward_hook(lambda m, args, kwargs, out: calls.append((args[0] if args else
                                        kwargs["hidden_states"], out)), with_kwargs=True)
    x = torch.randn(2, 20, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # 2 clips: both CFG branches
    text = backbone.encode_prompt(["", "a red square"])
    state = GuideState(weight=0.1)
    try:
        with torch.no_grad(), attention_processors(ed.unet, ed.processors(state)):
            ed.eps_video(x, 500, text, state, {})
    finally:
        handle.remove()
    assert len(calls) == 2 and not state.anchors  # one call per window; anchors dropped after the step
    (first_in, _), (second_in, second_out) = [(i.unflatten(0, (2, 16)), o.unflatten(0, (2, 16))) for i, o in calls]
    anchor_frame = first_in[:, 0] if anchor == "video" else second_in[:, 0]
    with torch.no_grad():
        for i in (0, 1, 7, 15):
            kv = torch.cat([anchor_frame, second_in[:, max(i - 1, 0)]], dim=1)
            expected = AttnProcessor2_0()(attn, second_in[:, i], encoder_hidden_states=kv)
            torch.testing.assert_close(second_out[:, i], expected, atol=1e-5, rtol=1e-5)
    assert (first_in[:, 0] - second_in[:, 0]).abs().max() > 1e-3  # the two anchors differ


def test_tuning_a_later_window_first_records_the_videos_first_frame_without_gradients(backbone, editor):
    """20 frames, windows (0, 16), (4, 20), 2 iterations each: the second window's iterations are each
    preceded by a no-gradient pass over the first window on the same noisy latents (the anchor)."""
    ed = VidMP3Editor(backbone, steps=1, tune_steps=2, guide_resolution=32)
    ed._unet = editor.unet
    calls = []
    handle = ed.unet.register_forward_pre_hook(
        lambda m, args: calls.append((args[0][0, 0, :, 0, 0].clone(), torch.is_grad_enabled())))
    try:
        result = ed.edit(synthetic_task(20))
    finally:
        handle.remove()
    assert result.info["tune_iterations"] == 4 and result.info["windows"] == [[0, 16], [4, 20]]
    tuning = calls[:6]
    assert [grad for _, grad in tuning] == [True, False, True, True, False, True]
    total = VidMP3Editor(backbone, steps=1, tune_steps=2, guide_resolution=32, tune_iterations="total")
    total._unet = editor.unet
    assert total.edit(synthetic_task(20)).info["tune_iterations"] == 2


def test_noise_schedule_is_animatediffs_linear_betas(backbone, editor):
    """AnimateDiff configs/inference/inference-v2.yaml: linear betas 0.00085..0.012 over 1000 steps,
    DDIMScheduler's default set_alpha_to_one; SD's scaled_linear is the switch."""
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64)
    sched = editor.scheduler()
    torch.testing.assert_close(sched.betas.double(), betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sched.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), rtol=1e-5, atol=1e-7)
    assert float(sched.final_alpha_cumprod) == 1.0 and sched.config.steps_offset == 1
    sd = VidMP3Editor(backbone, beta_schedule="scaled_linear", set_alpha_to_one=False).scheduler()
    torch.testing.assert_close(sd.betas.double(), torch.linspace(0.00085**0.5, 0.012**0.5, 1000).double() ** 2,
                               rtol=1e-5, atol=1e-9)
    assert float(sd.final_alpha_cumprod) == pytest.approx(1 - 0.00085)
    task = video_task(n=3, **square_clip(3, 64, half=8, velocity=(2.0, 0.0)))
    switched = VidMP3Editor(backbone, steps=2, tune_steps=2, guide_resolution=32, beta_schedule="scaled_linear")
    switched._unet = editor.unet
    assert (editor.edit(task).frames - switched.edit(task).frames).abs().max() > 1e-4  # the edit uses it


def test_depth_is_depth_anything_v2_unless_the_dataset_has_ground_truth(backbone, editor):
    from test_depth import tiny_depth_anything

    from vedit.estimators import Estimators
    from vedit.estimators.depth import depth_anything_depth, dpt_depth

    clip = square_clip(3, 64, half=8, velocity=(2.0, 0.0))
    no_depth = video_task(n=3, mask=clip["mask"], correspondence=clip["correspondence"])
    da = tiny_depth_anything()
    expected = {"depth_anything": depth_anything_depth(no_depth.video.frames, da),
                "estimators": dpt_depth(no_depth.video.frames, backbone.depth_estimator)}  # estimators.depth=auto
    got = {}
    for depth, want in expected.items():
        ed = VidMP3Editor(backbone, depth=depth, estimators=Estimators(depth_model=da))
        ed._unet = editor.unet
        got[depth], mask, _ = ed.guide_maps(no_depth)
        torch.testing.assert_close(got[depth], guide_input("multiply", clip["correspondence"], want, mask))
    assert (got["depth_anything"] - got["estimators"]).abs().max() > 1e-3  # (maps: depth / its maximum)
    with_gt = video_task(n=3, **clip)
    maps, mask, _ = VidMP3Editor(backbone, estimators=Estimators(depth_model=da)).guide_maps(with_gt)
    torch.testing.assert_close(maps, guide_input("multiply", clip["correspondence"], clip["depth"], mask))
    with pytest.raises(EditorError, match="depth='midas'"):
        VidMP3Editor(backbone, depth="midas")


@pytest.mark.parametrize("seed", [0, 1])
def test_a_constant_video_shows_no_seam_at_window_boundaries(backbone, editor, seed):
    """With random tiny weights the motion module's position encodings make frames of one window differ a
    little; blending must keep the change across a window boundary within that within-window change,
    where a hard switch between windows (overlap 0) jumps."""
    frame = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    task = EditTask(Video(frame.expand(40, -1, -1, -1).clone(), fps=8.0, id="still"), "a red square",
                    "a blue ball", seed=seed)

    def steps_between_frames(overlap: int) -> torch.Tensor:
        # untuned, the zero-initialised MotionGuide adds nothing: leave it (and its depth maps) out
        ed = VidMP3Editor(backbone, steps=3, tune_steps=0, motion_guide=False, window_overlap=overlap)
        ed._unet = editor.unet
        out = ed.edit(task).frames
        return (out[1:] - out[:-1]).abs().mean(dim=(1, 2, 3))

    blended = steps_between_frames(4)
    within = blended[:11].max()  # frames 0..11: the first window alone, i.e. one clip
    assert blended.max() < 1.15 * within, (blended.max() / within)  # 1.00-1.02 measured
    hard = steps_between_frames(0)  # windows (0, 16), (16, 32), (24, 40): a hard switch at 15 -> 16
    assert hard[15] > 1.15 * within, (hard[15] / within)  # 1.2-1.9 measured (AnimateDiff betas)


def test_non_square_frames_that_are_multiples_of_8_edit_at_their_size(editor):
    """The paper edits at the videos' own resolution: nothing assumes a square (48x80: latents 6x10)."""
    clip = square_clip(3, 80, half=8, velocity=(3.0, 0.0))
    side = {k: v[..., 16:64, :] for k, v in clip.items()}  # rows 16..63 of an 80x80 scene
    side["correspondence"] = side["correspondence"] - torch.tensor([0.0, 16.0]).view(1, 2, 1, 1)
    frames = torch.rand(3, 3, 48, 80, generator=torch.Generator().manual_seed(2))
    result = editor.edit(EditTask(Video(frames, fps=8.0, id="wide"), "a red square", "a blue ball", side=side))
    assert result.frames.shape == (3, 3, 48, 80) and torch.isfinite(result.frames).all()
