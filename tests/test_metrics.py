"""Metrics: known answers on constructed videos and embeddings, with a tiny real CLIP."""

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vedit.data.synthetic import SyntheticDataset
from vedit.metrics import MetricError
from vedit.metrics.clip import ClipImage, ClipText, FrameAccuracy, frame_accuracy
from vedit.metrics.clip_models import load_clip, tiny_clip
from vedit.metrics.cost import cost_fields
from vedit.metrics.warp import WarpMSE
from vedit.registry import METRICS
from vedit.task import EditResult, EditTask
from vedit.video import Video


@pytest.fixture(scope="module")
def clip():
    return tiny_clip(seed=0)


def make_task(frames, side=None, source="a red square", target="a golden square"):
    return EditTask(Video(frames, fps=8, id="vid"), source, target, side=side or {})


@pytest.fixture(scope="module")
def synthetic():
    item = SyntheticDataset(num_videos=1, num_frames=8, size=(64, 64)).load("synthetic_000")
    return make_task(item.video.frames, item.side)


def test_registered_names():
    assert METRICS.get("clip_text") is ClipText and METRICS.get("clip_image") is ClipImage
    assert METRICS.get("frame_acc") is FrameAccuracy and METRICS.get("warp_mse") is WarpMSE


def test_warp_mse_of_source_under_ground_truth_flow_is_near_zero(synthetic):
    metric = METRICS.get("warp_mse_01")()
    assert metric.name == "warp_mse_01" and not metric.higher_is_better
    exact = metric(synthetic.video.frames, synthetic)["warp_mse_01"]
    shuffled = metric(synthetic.video.frames[torch.tensor([0, 5, 2, 7, 1, 4, 6, 3])], synthetic)["warp_mse_01"]
    assert exact < 2e-3 and shuffled > 10 * exact


def test_warp_mse_known_answer_on_flicker():
    # static grey frames alternating 0.2 / 0.6: every pair differs by 0.4 everywhere
    frames = torch.tensor([0.2, 0.6, 0.2, 0.6]).view(4, 1, 1, 1).expand(4, 3, 16, 16).clone()
    side = {"flow_fwd": torch.zeros(3, 2, 16, 16), "flow_bwd": torch.zeros(3, 2, 16, 16),
            "occ_fwd": torch.zeros(3, 1, 16, 16), "occ_bwd": torch.zeros(3, 1, 16, 16)}
    task = make_task(frames, side)
    assert WarpMSE(scale=1, size=None)(frames, task)["warp_mse_01"] == pytest.approx(0.16, rel=1e-5)
    metric = WarpMSE(scale=255, size=32)
    assert metric.name == "warp_mse_255_32"
    assert metric(frames, task)[metric.name] == pytest.approx(0.16 * 255**2, rel=1e-4)


def test_warp_mse_follows_the_flow_and_ignores_occluded_pixels():
    # frame t is a ramp shifted right by t pixels; flow_fwd = +1 px; pixels leaving the frame occluded
    h, w = 8, 12
    base = torch.linspace(0, 1, w + 4)
    frames = torch.stack([base[4 - t:4 - t + w].expand(3, h, w) for t in range(4)])
    flow = torch.zeros(3, 2, h, w)
    flow[:, 0] = 1.0
    occ = torch.zeros(3, 1, h, w)
    occ[..., -1] = 1.0
    task = make_task(frames, {"flow_fwd": flow, "flow_bwd": -flow, "occ_fwd": occ, "occ_bwd": occ.flip(-1)})
    assert WarpMSE(scale=1, size=None)(frames, task)["warp_mse_01"] < 1e-10
    still = frames[:1].expand(4, 3, h, w).clone()  # an edit that ignores the motion
    assert WarpMSE(scale=1, size=None)(still, task)["warp_mse_01"] > 1e-3


def test_warp_mse_bad_input(synthetic):
    with pytest.raises(MetricError, match="frame by frame"):
        WarpMSE()(synthetic.video.frames[:4], synthetic)
    with pytest.raises(MetricError, match="scale"):
        WarpMSE(scale=100)


def test_clip_image_of_a_static_video_is_one(clip):
    frames = torch.rand(1, 3, 40, 48).expand(4, 3, 40, 48).clone()
    assert ClipImage(clip)(frames, make_task(frames))["clip_image"] == pytest.approx(1.0, abs=1e-5)
    different = torch.rand(4, 3, 40, 48)
    assert ClipImage(clip)(different, make_task(different))["clip_image"] < 0.9999


def test_clip_text_equals_a_hand_computed_cosine(clip):
    # the model's own size, values on the 8-bit grid (frames are scored as 8-bit images)
    frames = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(0)).float() / 255
    task = make_task(frames, target="a watercolor painting of a fox")
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        img = clip.model.encode_image((frames - mean) / std)
        txt = clip.model.encode_text(open_clip.tokenize(["a watercolor painting of a fox"]))
    expected = F.cosine_similarity(img, txt, dim=-1).mean().item()
    out = ClipText(clip)(frames, task)
    assert out["clip_text"] == pytest.approx(expected, abs=1e-5)
    assert out["clip_text_x100"] == pytest.approx(100 * expected, abs=1e-3)


def test_tiny_clip_is_deterministic_and_takes_a_device():
    a, b = tiny_clip(seed=3, device="cpu"), tiny_clip(seed=3)
    frames = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(a.encode_images(frames), b.encode_images(frames))
    assert not torch.allclose(tiny_clip(seed=4).encode_texts(["x"]), a.encode_texts(["x"]))


def test_clip_embeddings_are_normalised_and_resized(clip):
    assert clip.encode_images(torch.rand(2, 3, 50, 70)).norm(dim=-1).sub(1).abs().max() < 1e-5
    assert clip.encode_texts(["a", "b c"]).shape == (2, 32)


def test_frame_accuracy_on_constructed_embeddings():
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # [target, source]
    images = F.normalize(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]), dim=-1)
    assert frame_accuracy(images, texts) == 0.5
    assert frame_accuracy(images[:1], texts) == 1.0


def test_frame_accuracy_metric_is_a_fraction_and_needs_the_source_prompt(clip):
    frames = torch.rand(4, 3, 32, 32)
    value = FrameAccuracy(clip)(frames, make_task(frames))["frame_acc"]
    assert value in (0.0, 0.25, 0.5, 0.75, 1.0)
    # same prompt on both sides: no frame is strictly closer to the target
    assert FrameAccuracy(clip)(frames, make_task(frames, source="x", target="x"))["frame_acc"] == 0.0
    with pytest.raises(MetricError, match="source_prompt"):
        FrameAccuracy(clip)(frames, make_task(frames, source=None))


def test_conventions_are_declared(clip):
    for metric in (ClipText(clip), ClipImage(clip), FrameAccuracy(clip), WarpMSE(), WarpMSE(scale=1, size=None)):
        assert metric.convention and isinstance(metric.higher_is_better, bool)
    assert "0-255" in WarpMSE().convention and "512x512" in WarpMSE().convention


def test_load_clip_without_weights_names_the_model_and_the_ways_out():
    with pytest.raises(MetricError, match=r"RN50.*(HF_HOME|tiny_clip)"):
        load_clip("RN50", pretrained="/nonexistent/weights.pt")


def test_cost_fields():
    result = EditResult(frames=torch.zeros(4, 3, 8, 8), timings={"preprocessing": 2.0, "sampling": 6.0},
                        peak_memory_bytes=2 * 2**30)
    cost = cost_fields(result, num_frames=4)
    assert cost["seconds_per_frame_preprocessing"] == 0.5 and cost["seconds_per_frame_sampling"] == 1.5
    assert cost["seconds_per_frame"] == 2.0 and cost["seconds_total"] == 8.0
    assert cost["peak_gpu_memory_gb"] == 2.0 and isinstance(cost["device"], str) and cost["device"]


# --- conventions by name, each against a hand-computed value on constructed inputs -----------------

def static_side(n, h, w, occ=None):
    zeros = torch.zeros(n, 2, h, w)
    occ = torch.zeros(n, 1, h, w) if occ is None else occ
    return {"flow_fwd": zeros, "flow_bwd": zeros, "occ_fwd": occ, "occ_bwd": occ}


def two_pair_video():
    # frames 0.2 | 0.6 | 0.4 (static): pair 0 differs by 0.4 on all 256 pixels, pair 1 by 0.2 on the
    # 128 pixels left visible (the right half of frame 1 is occluded)
    frames = torch.tensor([0.2, 0.6, 0.4]).view(3, 1, 1, 1).expand(3, 3, 16, 16).clone()
    occ = torch.zeros(2, 1, 16, 16)
    occ[1, :, :, 8:] = 1
    return frames, make_task(frames, static_side(2, 16, 16, occ))


def test_warp_error_lai_is_a_mean_per_pair_then_over_pairs():
    frames, task = two_pair_video()
    out = METRICS.get("warp_error")()(frames, task)
    assert out["warp_error"] == pytest.approx((0.16 + 0.04) / 2, rel=1e-5)  # per pair, then pairs
    assert out["warp_error_255"] == pytest.approx(0.1 * 255**2, rel=1e-5)
    pooled = WarpMSE(scale=1, size=None)(frames, task)["warp_mse_01"]  # vedit's older pooled convention
    assert pooled == pytest.approx((256 * 0.16 + 128 * 0.04) / 384, rel=1e-5)
    l1 = METRICS.get("warp_error_l1")()(frames, task)["warp_error_l1"]  # StreamV2V: L1 in 0-255
    assert l1 == pytest.approx((0.4 * 255 + 0.2 * 255) / 2, rel=1e-5)


def test_warp_error_uint8_frames_and_chunks_give_the_same_value(synthetic):
    frames8 = (synthetic.video.frames * 255).round().to(torch.uint8)
    whole = METRICS.get("warp_error")(chunk=64)(frames8, synthetic)["warp_error"]
    assert METRICS.get("warp_error")(chunk=1)(frames8, synthetic)["warp_error"] == pytest.approx(whole, rel=1e-9)
    assert METRICS.get("warp_error")()(frames8.float() / 255, synthetic)["warp_error"] == pytest.approx(whole, rel=1e-6)


def test_identity_edit_of_synthetic_scores_zero_warp_error_with_exact_flow():
    for seed, size in [(0, (64, 64)), (3, (48, 80))]:
        item = SyntheticDataset(num_videos=1, num_frames=8, size=size, seed=seed, num_objects=3).load("synthetic_000")
        task = make_task(item.video.frames, item.side)
        metric = METRICS.get("warp_error")()
        stored = (item.video.frames * 255).round().to(torch.uint8)  # what the store keeps
        assert metric(stored, task)["warp_error"] < 1e-4 and metric(item.video.frames, task)["warp_error"] < 1e-4
        assert metric.config(task)["flow"] == {"method": "gt"} and "ground-truth" in metric.config(task)["occlusion"]


def test_flow_metrics_name_the_estimator_that_ran_never_auto(synthetic):
    from vedit.estimators import Estimators

    frames = synthetic.video.frames
    plain = make_task(frames)  # no ground truth: auto falls back to DIS offline (or RAFT where its weights load)
    metric = METRICS.get("warp_error")(Estimators(flow="dis"))
    config = metric.config(plain)
    assert config["flow"] == {"method": "dis"} and "Sundaram" in config["occlusion"]
    assert config["resolution"] == "native (source) resolution" and "consecutive" in config["pairing"]
    auto = METRICS.get("warp_error")(Estimators(flow="auto"))
    assert auto.config(plain)["flow"]["method"] in ("dis", "raft") and auto.config(synthetic)["flow"]["method"] == "gt"


def test_motion_alignment_is_minus_the_epe_between_edited_and_source_flows():
    from vedit.estimators import Estimators

    # a smooth texture translating 2 px right per frame; the static edit has zero flow: EPE ~ 2 px
    x = torch.arange(48 + 12).float()
    y = torch.arange(48).float()[:, None]
    texture = 0.5 + 0.2 * torch.sin(x / 3.0) * torch.cos(y / 4.0) + 0.15 * torch.sin((x + y) / 5.0)
    frames = torch.stack([texture[:, 12 - 2 * t:60 - 2 * t].expand(3, 48, 48) for t in range(4)])
    task = make_task(frames)
    metric = METRICS.get("motion_alignment")(Estimators(flow="dis"))
    assert metric.higher_is_better and metric.config(task)["flow"] == {"method": "dis"}
    assert metric(frames, task)["motion_alignment"] == 0.0  # same video, same flow
    still = frames[:1].expand(4, 3, 48, 48).clone()
    assert metric(still, task)["motion_alignment"] == pytest.approx(-2.0, abs=0.3)


def test_clip_frame_consistency_conventions_on_constructed_embeddings():
    from vedit.metrics.clip import all_pairs_consistency, consecutive_consistency

    e = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]]), dim=-1)
    # consecutive cosines 0, 0, -0.6 -> clamped at 0: 0, 0, 0
    assert consecutive_consistency(e) == pytest.approx(0.0)
    assert consecutive_consistency(e[[0, 3, 1]]) == pytest.approx((0.6 + 0.8) / 2)
    # all 6 pairs: (0,1)=0 (0,2)=-1 (0,3)=0.6 (1,2)=0 (1,3)=0.8 (2,3)=-0.6 -> mean -0.2/6
    assert all_pairs_consistency(e) == pytest.approx(-0.2 / 6)


def test_clip_metrics_report_raw_and_x100_and_accept_uint8(clip):
    frames = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    frames8 = (frames * 255).round().to(torch.uint8)
    task = make_task(frames8)
    emb = clip.encode_images(frames8.float() / 255)
    for name, expected in [("clip_image", (emb[:-1] * emb[1:]).sum(-1).clamp_min(0).mean().item()),
                           ("clip_image_allpairs", (emb @ emb.T)[torch.triu(torch.ones(4, 4), 1).bool()].mean().item())]:
        out = METRICS.get(name)(clip)(frames8, task)
        assert out[name] == pytest.approx(expected, abs=1e-5) and out[f"{name}_x100"] == pytest.approx(100 * expected,
                                                                                                      abs=1e-3)
    assert ClipText(clip)(frames8, task)["clip_text"] == pytest.approx(ClipText(clip)(frames8.float() / 255, task)["clip_text"],
                                                                       abs=1e-6)
    assert ClipImage(clip).config(task)["clip"]["name"] == "tiny-clip-0" and ClipImage(clip).models(task)["clip_tiny"]


def test_clip_encodes_long_videos_in_chunks(clip):
    frames = (torch.rand(9, 3, 32, 32) * 255).to(torch.uint8)
    small = type(clip)(clip.model, name=clip.name, batch_size=2)
    torch.testing.assert_close(small.encode_images(frames), clip.encode_images(frames), atol=1e-5, rtol=1e-5)


# --- CLIP built as trained ---------------------------------------------------------------------------

def test_openai_tags_build_quickgelu_and_others_gelu():
    from vedit.metrics.clip_models import pretrained_build_args

    assert pretrained_build_args("ViT-L-14", "openai")["force_quick_gelu"] is True
    assert pretrained_build_args("ViT-L-14", "laion2b_s32b_b82k")["force_quick_gelu"] is False
    assert pretrained_build_args("ViT-B-32-quickgelu", None)["force_quick_gelu"] is True
    assert pretrained_build_args("ViT-B-32", "/my/openai.pt", quick_gelu=True)["force_quick_gelu"] is True
    # mean and std come from the tag's pretrained config
    assert pretrained_build_args("ViT-L-14", "laion2b_s32b_b82k")["force_preprocess_cfg"]["mean"] == (0.5, 0.5, 0.5)
    assert tuple(pretrained_build_args("ViT-L-14", "openai")["force_preprocess_cfg"]["mean"]) == open_clip.OPENAI_DATASET_MEAN


def test_built_model_activation_matches_its_pretrained_tag():
    openai = load_clip("ViT-B-32", "openai", load_weights=False)  # the architecture load_clip builds, no download
    assert openai.describe()["activation"] == "QuickGELU" and openai.interpolation == "bicubic"
    other = load_clip("ViT-B-32", "laion2b_s34b_b79k", load_weights=False)
    assert other.describe()["activation"] == "GELU"


def test_clip_preprocessing_follows_the_model_config(clip):
    model = tiny_clip(seed=0).model
    model.visual.preprocess_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bilinear",
                                   "resize_mode": "shortest"}
    wrapped = type(clip)(model, name="x")
    frames = torch.full((1, 3, 32, 32), 0.8)  # 204 / 255
    torch.testing.assert_close(wrapped.preprocess(frames), torch.full((1, 3, 32, 32), 1.2))  # (0.8 - 0.5) / 0.25
    assert wrapped.interpolation == "bilinear"


def test_warp_error_skips_fully_occluded_pairs_and_fails_when_all_are():
    frames, task = two_pair_video()
    task.side["occ_fwd"][1] = 1  # pair 1 has no visible pixel: only pair 0 counts
    assert METRICS.get("warp_error")()(frames, task)["warp_error"] == pytest.approx(0.16, rel=1e-5)
    task.side["occ_fwd"][0] = 1
    with pytest.raises(MetricError, match="occluded"):
        METRICS.get("warp_error_l1")()(frames, task)


def test_warp_mse_directions_use_their_own_flow_and_occlusion():
    # static 0.2 | 0.6 | 0.4: pair 0 differs by 0.4, pair 1 by 0.2. Occlusion marks the right half of
    # frame 1 hidden in frame 2 (occ_fwd[1]), nothing for the backward direction: warping t+1 to t
    # (warp_mse_01) skips those 128 pixels, warping t to t+1 (warp_mse, Pix2Video's paper) counts them.
    frames, task = two_pair_video()
    task.side["occ_bwd"] = torch.zeros(2, 1, 16, 16)
    to_prev = WarpMSE(scale=1, size=None, direction="t+1->t")(frames, task)["warp_mse_01"]
    to_next = WarpMSE(scale=1, size=None)(frames, task)["warp_mse_01"]
    assert to_prev == pytest.approx((256 * 0.16 + 128 * 0.04) / 384, rel=1e-5)
    assert to_next == pytest.approx((256 * 0.16 + 256 * 0.04) / 512, rel=1e-5)
    assert METRICS.get("warp_mse_01")()(frames, task)["warp_mse_01"] == pytest.approx(to_prev, rel=1e-9)
    assert "flow_bwd" in WarpMSE().convention and "t->t+1" in WarpMSE().config(task)["pairing"]
    with pytest.raises(MetricError, match="direction"):
        WarpMSE(direction="sideways")


def test_forward_only_flow_is_the_forward_half_of_the_pair_estimate():
    from torchvision.models.optical_flow import raft_small

    from vedit.estimators.flow import dis_flow, raft_flow

    torch.manual_seed(0)
    model = raft_small().eval()
    for size in [(32, 40), (48, 32)]:
        frames = (torch.rand(4, 3, *size, generator=torch.Generator().manual_seed(size[0])) * 255).to(torch.uint8)
        both, alone = raft_flow(frames, model, iters=2), raft_flow(frames, model, iters=2, backward=False)
        assert alone[1] is None
        torch.testing.assert_close(alone[0], both[0], atol=1e-4, rtol=0)
        assert dis_flow(frames, backward=False)[1] is None
