"""DOVER (V2VBench's Video Quality): the views' frame and fragment sampling, the aesthetic resize, the
fused score, the checkpoint layout and its loaders (local file, folder, Hugging Face cache), on
constructed videos and tiny models with answers worked out by hand."""

import argparse
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vedit.metrics import MetricError
from vedit.metrics.dover import (DOVER_MODEL, DOVER_VIEWS, TINY_VIEWS, DoverScore, aesthetic_indices, built_dover,
                                 dover_views, fuse, load_dover, normalise, resized_view, spatial_fragments,
                                 technical_indices, vedit_to_dover)
from vedit.metrics.dover_models import TINY_ARCH
from vedit.registry import METRICS
from vedit.task import EditTask
from vedit.video import Video


def task_of(frames):
    return EditTask(Video(frames, fps=8, id="vid"), "a red square", "a golden square")


def coordinate_video(t, h, w):
    """(C, T, H, W) float: channel 0 = row, 1 = column, 2 = frame index (so every pixel names its origin)."""
    y = torch.arange(h).view(1, h, 1).expand(t, h, w)
    x = torch.arange(w).view(1, 1, w).expand(t, h, w)
    f = torch.arange(t).view(t, 1, 1).expand(t, h, w)
    return torch.stack([y, x, f]).float()


# --- frame sampling ---------------------------------------------------------------------------------------------

def test_technical_clips_start_at_thirds_take_every_second_frame_and_wrap():
    rng = np.random.RandomState(0)
    idx = technical_indices(24, DOVER_VIEWS, rng)  # 24 // 3 = 8 <= 32 * 2: no random offset
    expected = [(start + 2 * k) % 24 for start in (0, 8, 16) for k in range(32)]
    assert idx.tolist() == expected and len(idx) == 96


def test_aesthetic_view_of_a_short_video_is_frame_zero_repeated():
    rng = np.random.RandomState(0)
    assert aesthetic_indices(24, DOVER_VIEWS, rng).tolist() == [0] * 32  # 24 // 32 = 0: every run starts at 0
    assert aesthetic_indices(64, DOVER_VIEWS, rng).tolist() == list(range(0, 64, 2))


def test_long_videos_draw_clip_offsets_technical_first_then_aesthetic():
    hand = np.random.RandomState(3)
    t_off = hand.randint(0, 2, size=3)  # 200 // 3 = 66 > 32 * 2: one offset in [0, 2) per clip
    a_off = hand.randint(0, 4, size=32)  # then 200 // 32 = 6 > 1 * 2: one offset in [0, 4) per frame
    rng = np.random.RandomState(3)
    assert technical_indices(200, DOVER_VIEWS, rng).tolist() == [66 * c + t_off[c] + 2 * k for c in range(3)
                                                                  for k in range(32)]
    assert aesthetic_indices(200, DOVER_VIEWS, rng).tolist() == (6 * np.arange(32) + a_off).tolist()


# --- fragments ---------------------------------------------------------------------------------------------------

def test_fragments_are_cells_of_the_grid_at_offsets_drawn_rows_then_columns():
    video = coordinate_video(4, 40, 44)  # cells 20 x 22 px, fragments 16 px: offsets in [0, 4) and [0, 6)
    out = spatial_fragments(video, (2, 2), (16, 16), aligned=2, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    off_h, off_w = torch.randint(4, (2, 2, 2), generator=g), torch.randint(6, (2, 2, 2), generator=g)
    assert out.shape == (3, 4, 32, 32)
    for i in range(2):
        for j in range(2):
            for s in range(2):  # one offset per fragment per 2-frame segment
                y0, x0 = 20 * i + int(off_h[i, j, s]), 22 * j + int(off_w[i, j, s])
                frag = out[:, 2 * s:2 * s + 2, 16 * i:16 * i + 16, 16 * j:16 * j + 16]
                assert torch.equal(frag[0, 0], (y0 + torch.arange(16)).float().view(16, 1).expand(16, 16))
                assert torch.equal(frag[1, 1], (x0 + torch.arange(16)).float().view(1, 16).expand(16, 16))
                assert frag[2, :, 0, 0].tolist() == [2 * s, 2 * s + 1]
    assert not torch.equal(off_h[..., 0], off_h[..., 1]) or not torch.equal(off_w[..., 0], off_w[..., 1])


def test_a_frame_of_exactly_grid_times_fragment_is_kept_whole_and_the_last_row_is_clamped():
    video = coordinate_video(2, 224, 230)  # rows: cell 32 = fragment: no offsets; columns: 230 // 7 = 32 too
    out = spatial_fragments(video, (7, 7), (32, 32), aligned=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, video[:, :, :224, :224])
    tall = coordinate_video(2, 236, 224)  # 236 // 7 = 33 > 32: offsets in [0, 1) = 0; row 6 at min(198, 204)
    out = spatial_fragments(tall, (7, 7), (32, 32), aligned=2, generator=torch.Generator().manual_seed(0))
    assert out[0, 0, 192:, 0].tolist() == list(range(198, 230))


def test_small_frames_are_upsampled_but_the_grid_keeps_the_original_size():
    video = coordinate_video(2, 24, 24) * 2  # 24 < 32: upsampled by 4/3 to 32; cells of 12 px < 16: no offsets
    out = spatial_fragments(video, (2, 2), (16, 16), aligned=2, generator=torch.Generator().manual_seed(0))
    up = F.interpolate(video / 255.0, scale_factor=32 / 24, mode="bilinear") * 255.0
    assert up.shape[-2:] == (32, 32)
    # rows/columns at min(12 * i, 24 - 16) = 0, 8 of the upsampled frame (DOVER's order of operations)
    torch.testing.assert_close(out[:, :, 16:, 16:], up[:, :, 8:24, 8:24], rtol=0, atol=0)
    torch.testing.assert_close(out[:, :, :16, 16:], up[:, :, 0:16, 8:24], rtol=0, atol=0)


# --- aesthetic resize and normalisation ----------------------------------------------------------------------------

def test_aesthetic_resize_is_bilinear_without_antialiasing_by_default():
    g = torch.Generator().manual_seed(0)
    video = torch.rand(3, 2, 64, 64, generator=g) * 255
    blocks = video.reshape(3, 2, 32, 2, 32, 2).mean((3, 5))  # halving, align_corners=False: 2 x 2 means
    torch.testing.assert_close(resized_view(video, (32, 32)), blocks, rtol=0, atol=1e-4)
    tvf = pytest.importorskip("torchvision.transforms.functional")
    odd = torch.rand(3, 2, 50, 70, generator=g) * 255
    ref = tvf.resize(odd.transpose(0, 1), [32, 32], antialias=False).transpose(0, 1)
    torch.testing.assert_close(resized_view(odd, (32, 32)), ref, rtol=0, atol=1e-4)
    modern = tvf.resize(odd.transpose(0, 1), [32, 32], antialias=True).transpose(0, 1)  # torchvision >= 0.17 default
    torch.testing.assert_close(resized_view(odd, (32, 32), antialias=True), modern, rtol=0, atol=1e-4)
    assert not torch.allclose(resized_view(odd, (32, 32)), modern, atol=1e-2)


def test_normalisation_is_imagenet_in_0_255_and_clips_split_in_frame_order():
    video = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1, 1).repeat(1, 6, 2, 2)
    video[0] += torch.arange(6).view(6, 1, 1) * 58.395  # channel 0 after normalising: the frame index
    out = normalise(video, clips=3)
    assert out.shape == (3, 3, 2, 2, 2)
    torch.testing.assert_close(out[:, 0, :, 0, 0], torch.tensor([[0.0, 1], [2, 3], [4, 5]]), rtol=0, atol=1e-5)
    assert out[:, 1:].abs().max() < 1e-5


def test_views_are_deterministic_per_seed_and_shaped_as_dover_config():
    frames = (torch.rand(24, 3, 240, 250, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    a, b, c = dover_views(frames, seed=1), dover_views(frames, seed=1), dover_views(frames, seed=2)
    assert a["technical"].shape == (3, 3, 32, 224, 224) and a["aesthetic"].shape == (1, 3, 32, 224, 224)
    assert torch.equal(a["technical"], b["technical"]) and not torch.equal(a["technical"], c["technical"])
    assert torch.equal(a["aesthetic"], c["aesthetic"])  # no randomness in the aesthetic view of 24 frames


# --- fusion -----------------------------------------------------------------------------------------------------

def test_fusion_is_v2vbenchs_formula_with_its_plus_sign_on_the_aesthetic_mean():
    assert fuse(0.1107, -0.08285) == pytest.approx(0.5, abs=1e-12)  # (a + 0.08285): zero at a = -0.08285
    assert fuse(0.1107, 0.08285, "dover") == pytest.approx(0.5, abs=1e-12)
    # t one std above its mean, a at its v2vbench zero: sigmoid(0.6104) = 1 / (1 + 0.543133) = 0.648032
    assert fuse(0.1107 + 0.07355, -0.08285) == pytest.approx(0.648032, abs=1e-6)
    t, a = 0.2, 0.05
    x_v2v = (t - 0.1107) / 0.07355 * 0.6104 + (a + 0.08285) / 0.03774 * 0.3896
    assert fuse(t, a) == pytest.approx(1 / (1 + math.exp(-x_v2v)), abs=1e-12)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert logit(fuse(t, a)) - logit(fuse(t, a, "dover")) == pytest.approx(2 * 0.08285 / 0.03774 * 0.3896, abs=1e-9)
    with pytest.raises(MetricError, match=r"fusion 'mean'.*v2vbench, dover"):
        fuse(t, a, "mean")


# --- checkpoint layout and loading -----------------------------------------------------------------------------

def test_dover_layout_names_and_relative_position_index_by_hand():
    state = vedit_to_dover(built_dover(TINY_ARCH, seed=0))
    swin = "technical_backbone.layers"
    assert f"{swin}.0.blocks.1.attn.fragment_position_bias_table" in state
    assert f"{swin}.2.blocks.0.attn.fragment_position_bias_table" in state
    assert f"{swin}.3.blocks.0.attn.fragment_position_bias_table" not in state  # frag_biases = (1, 1, 1, 0)
    assert f"{swin}.3.downsample.reduction.weight" not in state and f"{swin}.2.downsample.norm.weight" in state
    for key in ("technical_backbone.patch_embed.proj.weight", "technical_backbone.norm.weight",
                "aesthetic_backbone.downsample_layers.0.1.weight", "aesthetic_backbone.stages.2.1.gamma",
                "technical_head.fc_hid.weight", "aesthetic_head.fc_last.bias"):
        assert key in state, key
    assert state["aesthetic_backbone.stages.2.1.dwconv.weight"].shape[2:] == (3, 7, 7)  # "131": block 1 is 3 x 7 x 7
    assert state["aesthetic_backbone.stages.2.2.dwconv.weight"].shape[2:] == (1, 7, 7)
    index = state[f"{swin}.0.blocks.0.attn.relative_position_index"]  # window (2, 2, 2): 27 relative offsets
    # token 0 = (0,0,0), token 7 = (1,1,1): offset (-1,-1,-1) + 1 -> 0; the reverse (1,1,1) + 1 -> 2*9 + 2*3 + 2
    assert index.shape == (8, 8) and index[0, 7] == 0 and index[7, 0] == 26 and index[3, 3] == 13


def tiny_outputs(metric_or_net, frames):
    metric = metric_or_net if isinstance(metric_or_net, DoverScore) else DoverScore(network=metric_or_net)
    return metric(frames, task_of(frames))


def test_a_tiny_checkpoint_in_dovers_layout_loads_from_a_file_and_a_folder(tmp_path):
    net = built_dover(TINY_ARCH, seed=4)
    with torch.no_grad():  # non-zero bias tables, so the fragment gate changes the output
        for name, p in net.named_parameters():
            if "position_bias_table" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    torch.save(vedit_to_dover(net), tmp_path / "DOVER.pth")
    frames = (torch.rand(10, 3, 40, 48, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    expected = tiny_outputs(net, frames)
    for source in (tmp_path / "DOVER.pth", tmp_path):
        loaded = load_dover(str(source), arch=TINY_ARCH)
        assert tiny_outputs(loaded, frames) == expected
    assert expected["dover"] == pytest.approx(fuse(expected["dover_technical"], expected["dover_aesthetic"]), abs=1e-12)
    assert expected != tiny_outputs(built_dover(TINY_ARCH, seed=4), frames)  # the tables took effect


def test_bad_checkpoints_fail_with_the_file_and_the_reason(tmp_path):
    state = vedit_to_dover(built_dover(TINY_ARCH))
    state["technical_backbone.layers.0.blocks.0.attn.relative_position_index"] += 1
    torch.save(state, tmp_path / "index.pth")
    with pytest.raises(MetricError, match=r"relative_position_index is not the index of a \(2, 2, 2\) window"):
        load_dover(str(tmp_path / "index.pth"), arch=TINY_ARCH)
    torch.save(vedit_to_dover(built_dover(TINY_ARCH)), tmp_path / "tiny.pth")
    with pytest.raises(MetricError, match=r"tiny.pth.*does not fit DOVER's architecture"):
        load_dover(str(tmp_path / "tiny.pth"))  # the full-size network
    torch.save(argparse.Namespace(weights=1), tmp_path / "code.pth")
    with pytest.raises(MetricError, match=r"code.pth.*not a plain state dict"):
        load_dover(str(tmp_path / "code.pth"))
    with pytest.raises(MetricError, match=r"missing/DOVER.pth' does not exist.*metrics.options.dover.model"):
        load_dover(str(tmp_path / "missing" / "DOVER.pth"))
    os.mkdir(tmp_path / "empty")
    with pytest.raises(MetricError, match=r"has no DOVER.pth"):
        load_dover(str(tmp_path / "empty"))


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_the_hub_id_loads_dover_pth_from_the_hugging_face_cache(hf_home):
    frames = (torch.rand(10, 3, 40, 48, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    with pytest.raises(MetricError, match=r"teowu/DOVER.*HF_HOME.*metrics.options.dover.model"):
        DoverScore()(frames, task_of(frames))
    rev = "b" * 40
    repo = hf_home / "models--teowu--DOVER"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    (repo / "snapshots" / rev).mkdir(parents=True)
    net = built_dover(TINY_ARCH, seed=5)
    torch.save(vedit_to_dover(net), repo / "snapshots" / rev / "DOVER.pth")
    assert tiny_outputs(load_dover(DOVER_MODEL, arch=TINY_ARCH), frames) == tiny_outputs(net, frames)


# --- the metric -----------------------------------------------------------------------------------------------------

def test_frames_outside_both_views_change_nothing_and_pixels_outside_the_fragments_only_the_aesthetic_score():
    metric = DoverScore("tiny")
    frames = (torch.rand(10, 3, 40, 40, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    base = metric(frames, task_of(frames))
    # tiny views of 10 frames: technical [0..3, 5..8] (2 clips of 4 at 0 and 5), aesthetic [0, 2, 4, 6]
    assert technical_indices(10, TINY_VIEWS, np.random.RandomState(0)).tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert aesthetic_indices(10, TINY_VIEWS, np.random.RandomState(0)).tolist() == [0, 2, 4, 6]
    other = frames.clone()
    other[9] = 255 - other[9]
    assert metric(other, task_of(other)) == base
    # frame 4 is only in the aesthetic view; within technical frames, the 4 px border strip between cells'
    # fragments (cells 20 px, fragments 16 px at offsets < 4) is never sampled: rows/columns 19 and 39
    other = frames.clone()
    other[4] = 255 - other[4]
    other[:, :, 19] = 0
    other[:, :, 39] = 0
    out = metric(other, task_of(other))
    assert out["dover_technical"] == base["dover_technical"] and out["dover_aesthetic"] != base["dover_aesthetic"]
    assert metric(frames.float() / 255, task_of(frames)) == base  # float frames are scored as their 8-bit values


def test_metric_records_its_model_fusion_and_seed_and_explains_bad_input():
    metric = DoverScore("tiny", fusion="dover", seed=3)
    frames = (torch.rand(6, 3, 40, 40, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    task = task_of(frames)
    assert metric.models(task) == {"dover": "tiny-dover-0", "dover_tiny": True}
    cfg = metric.config(task)
    assert (cfg["model"], cfg["fusion"], cfg["seed"], cfg["antialias"]) == ("tiny-dover-0", "dover", 3, False)
    assert "dover fusion" in metric.convention and "seed 3" in metric.convention
    assert METRICS.get("dover") is DoverScore and DoverScore.higher_is_better
    assert not DoverScore("random").tiny and DoverScore("random").models(task)["dover_tiny"]
    with pytest.raises(MetricError, match=r"video 'vid' are 12x40.*16x16"):
        metric(frames[:, :, :12], task_of(frames[:, :, :12]))
    with pytest.raises(MetricError, match=r"unknown fusion"):
        DoverScore("tiny", fusion="sum")


def test_v2vbench_preset_runs_dover_as_v2vbench_reports_it():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.abspath("conf"), version_base=None):
        v2v = compose("config", overrides=["metrics=v2vbench"]).metrics
    assert "dover" in v2v.names
    opts = v2v.options.dover
    assert (opts.model, opts.fusion, opts.seed, opts.antialias) == (DOVER_MODEL, "v2vbench", 0, False)


# --- the technical branch's fragment-gated bias ------------------------------------------------------------------

def test_fragment_gate_is_the_l1_fragment_distance_unclamped_in_shifted_windows():
    from vedit.metrics.dover_models import fragment_gate

    # a 4 x 4 map, 2 x 2 windows: fragments are 2 x 2 token blocks (grid = window size), as 7 x 7 in DOVER
    plain = fragment_gate(1, 4, 4, (1, 2, 2), (0, 0, 0), torch.device("cpu"))
    assert plain.shape == (4, 4, 4) and plain.abs().max() == 0  # unshifted windows lie inside one fragment
    shifted = fragment_gate(1, 4, 4, (1, 2, 2), (0, 1, 1), torch.device("cpu"))
    # rolled by -1: window 0 holds rows/columns 1, 2 -> fragments 0, 1; tokens (0,0),(0,1),(1,0),(1,1)
    hand = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1], [1, 2, 0, 1], [2, 1, 1, 0]])
    assert torch.equal(shifted[0], hand) and torch.equal(shifted[3], hand)


def test_attention_bias_mixes_the_two_tables_by_the_gate():
    from vedit.metrics.dover_models import WindowAttention3D, fragment_gate

    attn = WindowAttention3D(dim=2, window=(1, 2, 2), num_heads=1, frag_bias=True)
    with torch.no_grad():  # q = k = 0, v = x, proj = identity: the output is softmax(bias) @ x
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.weight[4:] = torch.eye(2)
        attn.proj.weight.copy_(torch.eye(2))
        attn.proj.bias.zero_()
        attn.relative_position_bias_table.copy_(torch.arange(9.0).view(9, 1) / 4)
        attn.fragment_position_bias_table.fill_(1.0)
    gate = fragment_gate(1, 4, 4, (1, 2, 2), (0, 1, 1), torch.device("cpu"))
    x = torch.randn(4, 4, 2, generator=torch.Generator().manual_seed(0))
    out = attn(x, None, gate)
    # (1, 2, 2) window: index = (dh + 1) * 3 + (dw + 1) for token offsets (dh, dw); tokens (0,0),(0,1),(1,0),(1,1)
    pos = [(0, 0), (0, 1), (1, 0), (1, 1)]
    table = torch.tensor([[((a[0] - b[0] + 1) * 3 + (a[1] - b[1] + 1)) / 4 for b in pos] for a in pos])
    for w in range(4):
        g = gate[w].float()
        bias = table * g + 1.0 * (1 - g)  # same fragment (g = 0): the fragment table; g = 2: 2 * table - fragment
        torch.testing.assert_close(out[w], bias.softmax(-1) @ x[w], rtol=0, atol=1e-6)
