"""Estimators: DIS flow on known translations, occlusion, ground truth pass-through, cache, edges, depth."""

import math

import pytest
import torch

from vedit.data.synthetic import SyntheticDataset
from vedit.estimators import EstimatorError, Estimators
from vedit.ops.warp import pixel_grid
from vedit.task import EditTask
from vedit.video import Video


def periodic_texture(h, w, dx=0, dy=0):
    """Smooth texture, periodic over the frame, shifted by whole pixels (so the shift is exact)."""
    g = pixel_grid(h, w, torch.float64)[0]
    x, y = g[0] - dx, g[1] - dy
    channels = [0.5 + 0.2 * torch.sin(2 * math.pi * (k * x / w + (k + 1) * y / h) + k) +
                0.15 * torch.cos(2 * math.pi * ((k + 2) * x / w - k * y / h)) for k in (1, 2, 3)]
    return torch.stack(channels).float()


def task_of(frames, side=None, name="v"):
    return EditTask(Video(frames, fps=8, id=name), "a video", "an edited video", side=side or {})


def translated_task(dx=3, dy=2, frames=3, size=(64, 80)):
    return task_of(torch.stack([periodic_texture(*size, dx * t, dy * t) for t in range(frames)]))


def test_dis_recovers_a_translation():
    flow = Estimators(flow="dis").flow(translated_task(3, 2))
    interior = flow["flow_fwd"][:, :, 8:-8, 8:-8]
    epe = (interior - torch.tensor([3.0, 2.0]).view(1, 2, 1, 1)).norm(dim=1).mean()
    assert epe < 0.3
    bwd = flow["flow_bwd"][:, :, 8:-8, 8:-8]
    assert (bwd + torch.tensor([3.0, 2.0]).view(1, 2, 1, 1)).norm(dim=1).mean() < 0.3


def test_dis_on_threads_equals_one_instance_pair_by_pair():
    """Pairs run on a thread pool, each thread with its own DIS instance: the same flow as one instance."""
    import cv2

    from vedit.estimators.flow import _gray, dis_flow, dis_flow_pairs

    frames = torch.stack([noise_texture(48, 64, seed) for seed in range(6)])
    gray = [_gray(f) for f in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    fwd, bwd = dis_flow(frames)
    for i in range(5):
        assert torch.equal(fwd[i], torch.from_numpy(dis.calc(gray[i], gray[i + 1], None)).permute(2, 0, 1))
        assert torch.equal(bwd[i], torch.from_numpy(dis.calc(gray[i + 1], gray[i], None)).permute(2, 0, 1))
    ab, ba = dis_flow_pairs(frames, [(0, 5), (2, 3)])
    assert torch.equal(ab[0], torch.from_numpy(dis.calc(gray[0], gray[5], None)).permute(2, 0, 1))
    assert torch.equal(ba[1], torch.from_numpy(dis.calc(gray[3], gray[2], None)).permute(2, 0, 1))


def noise_texture(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 4, w // 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def test_occlusion_marks_the_disoccluded_strip():
    # a textured block at x in [16, 40) moves right by 8 px over a static textured background
    bg, block = noise_texture(64, 64, 0), noise_texture(64, 64, 1)
    frames = torch.stack([bg.clone(), bg.clone()])
    for t in range(2):
        frames[t, :, 16:48, 16 + 8 * t:40 + 8 * t] = block[:, 16:48, 16:40]
    occ_bwd = Estimators(flow="dis").flow(task_of(frames))["occ_bwd"][0, 0]
    assert occ_bwd[20:44, 16:24].mean() > 0.5  # background uncovered in frame 1
    assert occ_bwd[:, 50:].mean() < 0.05 and occ_bwd[:8].mean() < 0.05


def test_ground_truth_is_returned_when_the_task_has_it():
    item = SyntheticDataset(num_videos=1, num_frames=4, size=(32, 32)).load("synthetic_000")
    task = task_of(item.video.frames, item.side)
    est = Estimators()
    flow = est.flow(task)
    assert flow["flow_fwd"] is item.side["flow_fwd"] and flow["occ_bwd"] is item.side["occ_bwd"]
    assert est.depth(task) is item.side["depth"] and est.mask(task) is item.side["mask"]
    assert est.correspondence(task) is item.side["correspondence"]
    assert est.cache.misses == 0


def test_gt_flow_without_occlusion_gets_the_forward_backward_check():
    item = SyntheticDataset(num_videos=1, num_frames=3, size=(32, 32), static=True).load("synthetic_000")
    side = {k: item.side[k] for k in ("flow_fwd", "flow_bwd")}
    flow = Estimators(flow="gt").flow(task_of(item.video.frames, side))
    assert flow["occ_fwd"].shape == (2, 1, 32, 32) and flow["occ_fwd"].sum() == 0


def test_missing_ground_truth_errors_name_the_video():
    task = translated_task()
    with pytest.raises(EstimatorError, match="'v'.*optical flow"):
        Estimators(flow="gt").flow(task)
    with pytest.raises(EstimatorError, match="depth model"):
        Estimators().depth(task)
    with pytest.raises(EstimatorError, match="subject mask"):
        Estimators().mask(task)
    with pytest.raises(EstimatorError, match="choose one of"):
        Estimators(flow="farneback")


def test_cache_hit_returns_identical_tensors_without_recompute(tmp_path):
    task = translated_task(frames=3, size=(32, 32))
    first = Estimators(flow="dis", cache_dir=tmp_path)
    a = first.flow(task)
    assert first.cache.misses == 1 and first.cache.hits == 0
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) == 1 and not list(tmp_path.rglob("*.tmp"))
    second = Estimators(flow="dis", cache_dir=tmp_path)  # a fresh process would see the same files
    b = second.flow(task)
    assert second.cache.hits == 1 and second.cache.misses == 0
    for k in a:
        assert torch.equal(a[k], b[k])
    # other parameters or other content: a new entry
    second.edges(task, low=10, high=20)
    second.edges(task, low=10, high=30)
    second.flow(translated_task(1, 0, frames=3, size=(32, 32)))
    assert second.cache.misses == 3 and len(list(tmp_path.rglob("*.pt"))) == 4


def test_correspondence_from_chained_flow():
    corr = Estimators(flow="dis").correspondence(translated_task(2, 0, frames=3))
    assert corr.shape == (3, 2, 64, 80)
    centre = corr[2, :, 20:40, 30:50]  # frame 2 pixel p came from p - (4, 0) in frame 0
    expected = pixel_grid(64, 80)[0, :, 20:40, 30:50] - torch.tensor([4.0, 0.0]).view(2, 1, 1)
    assert (centre - expected).abs().mean() < 0.5


def test_canny_edges_on_a_square_lie_on_its_border():
    frames = torch.zeros(2, 3, 32, 32)
    frames[:, :, 8:24, 8:24] = 1.0
    edges = Estimators().edges(task_of(frames))
    assert edges.shape == (2, 1, 32, 32) and set(edges.unique().tolist()) <= {0.0, 1.0}
    e = edges[0, 0]
    ring = torch.zeros(32, 32, dtype=torch.bool)
    ring[6:26, 6:26] = True
    ring[10:22, 10:22] = False
    assert e[ring].sum() > 40 and e[~ring].sum() == 0


def test_dpt_depth_with_a_tiny_model():
    from transformers import DPTConfig, DPTForDepthEstimation

    from vedit.backbones.architectures import TINY_DPT

    torch.manual_seed(0)
    model = DPTForDepthEstimation(DPTConfig(**TINY_DPT)).eval()
    task = translated_task(frames=2, size=(40, 56))
    depth = Estimators().depth(task, model=model)
    assert depth.shape == (2, 1, 40, 56) and torch.isfinite(depth).all()


def test_raft_runs_with_an_injected_model_and_errors_clearly_without_weights(tmp_path, monkeypatch):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    task = translated_task(frames=2, size=(32, 32))
    flow = Estimators(flow="raft", flow_model=raft_small().eval(), raft_iters=1).flow(task)
    assert flow["flow_fwd"].shape == (1, 2, 32, 32) and torch.isfinite(flow["flow_fwd"]).all()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(EstimatorError, match="estimators.flow=dis"):
        Estimators(flow="raft").flow(task)


def test_auto_flow_names_the_estimator_that_runs(tmp_path, monkeypatch):
    from torchvision.models.optical_flow import raft_small

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: RAFT weights cannot load
    plain, with_gt = translated_task(), task_of(translated_task().video.frames,
                                                 side={"flow_fwd": torch.zeros(2, 2, 64, 80),
                                                       "flow_bwd": torch.zeros(2, 2, 64, 80)})
    auto = Estimators(flow="auto")
    assert auto.flow_method_for(with_gt) == "gt"
    assert auto.flow_method_for(plain) == "dis"
    torch.manual_seed(0)
    injected = Estimators(flow="auto", flow_model=raft_small(weights=None).eval())
    assert injected.flow_method_for(plain) == "raft"
    assert Estimators(flow="dis").flow_method_for(with_gt) == "dis"


def test_flow_is_cached_as_float32_exactly_as_estimated_and_accepts_uint8_frames(tmp_path):
    from vedit.estimators.flow import dis_flow

    for size in [(48, 64), (40, 56)]:
        task = translated_task(3, 2, frames=4, size=size)
        est = Estimators(flow="dis", cache_dir=tmp_path / f"{size}")
        flow = est.flow(task)  # estimated now, stored
        stored = torch.load(next((tmp_path / f"{size}").rglob("*.pt")))
        assert stored["flow_fwd"].dtype == torch.float32 and stored["occ_fwd"].dtype == torch.bool
        again = Estimators(flow="dis", cache_dir=tmp_path / f"{size}").flow(task)  # read back: bit for bit
        assert all(torch.equal(flow[k], again[k]) for k in ("flow_fwd", "flow_bwd", "occ_fwd", "occ_bwd"))
        exact, _ = dis_flow(task.video.frames)  # float32, no cache (DIS itself may vary in its last bits)
        torch.testing.assert_close(flow["flow_fwd"], exact, atol=0.05, rtol=0)
        frames8 = (task.video.frames * 255).round().to(torch.uint8)
        torch.testing.assert_close(dis_flow(frames8)[0], exact, atol=0.05, rtol=0)  # the same 8-bit frames


def test_raft_in_chunks_equals_one_batch():
    from torchvision.models.optical_flow import raft_small

    from vedit.estimators.flow import raft_flow

    torch.manual_seed(0)
    model = raft_small().eval()
    frames = translated_task(frames=4, size=(32, 32)).video.frames
    one = raft_flow(frames, model, iters=1, batch_size=8)
    chunked = raft_flow((frames * 255).round().to(torch.uint8), model, iters=1, batch_size=1)
    for a, b in zip(one, chunked):
        torch.testing.assert_close(a, b, atol=0.05, rtol=0)  # 8-bit input; same pairs, same directions


def test_flow_is_estimated_and_read_in_pieces(tmp_path, monkeypatch):
    import vedit.estimators as est_module

    monkeypatch.setattr(est_module, "FLOW_PIECE", 3)
    task = translated_task(frames=8)
    est = Estimators(flow="dis", cache_dir=tmp_path)
    pieces = list(est.iter_flow(task))
    assert [start for start, _ in pieces] == [0, 3, 6] and [p["flow_fwd"].shape[0] for _, p in pieces] == [3, 3, 1]
    whole = est.flow(task)  # put together from the cached pieces: no new estimate
    assert est.cache.misses == 3 and est.cache.hits == 3
    for key in ("flow_fwd", "occ_bwd"):
        torch.testing.assert_close(whole[key], torch.cat([p[key] for _, p in pieces]))
    epe = (whole["flow_fwd"][:, :, 8:-8, 8:-8].float() - torch.tensor([3.0, 2.0]).view(1, 2, 1, 1)).norm(dim=1)
    assert epe.mean() < 0.3  # every piece, the last one included, is a real estimate of its own pairs
