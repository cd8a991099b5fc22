"""The synthetic dataset: determinism, side-data conventions and exactness of its ground truth."""

import pytest
import torch

from vedit.data.base import Dataset
from vedit.data.synthetic import SyntheticDataset
from vedit.ops.warp import backward_warp, chain_to_first, occlusion_masks, pixel_grid
from vedit.registry import DATASETS
from vedit.task import EditTask


def load(**kw):
    ds = SyntheticDataset(**{"num_videos": 1, "num_frames": 6, "size": (48, 64), **kw})
    return ds.load(ds.video_ids()[0])


def warp_error(frames, side):
    warped = backward_warp(frames[1:], side["flow_fwd"])
    valid = 1 - side["occ_fwd"]
    return (((warped - frames[:-1]) ** 2).mean(1, keepdim=True) * valid).sum() / valid.sum()


def test_registered_and_is_a_dataset():
    assert DATASETS.get("synthetic") is SyntheticDataset
    ds = SyntheticDataset(num_videos=3)
    assert isinstance(ds, Dataset) and len(ds) == 3 and ds.video_ids()[2] == "synthetic_002"


def test_shapes_ranges_and_conventions():
    item = load()
    t, (h, w) = 6, (48, 64)
    assert item.video.frames.shape == (t, 3, h, w)
    assert 0 <= item.video.frames.min() and item.video.frames.max() <= 1
    s = item.side
    for key, shape in {"flow_fwd": (t - 1, 2, h, w), "flow_bwd": (t - 1, 2, h, w), "occ_fwd": (t - 1, 1, h, w),
                       "occ_bwd": (t - 1, 1, h, w), "depth": (t, 1, h, w), "mask": (t, 1, h, w),
                       "correspondence": (t, 2, h, w)}.items():
        assert s[key].shape == shape and s[key].dtype == torch.float32, key
    assert set(s["mask"].unique().tolist()) == {0.0, 1.0}
    assert s["depth"][s["mask"] > 0].eq(1.0).all()  # the subject is the nearest layer
    assert s["depth"].min() == 0.1
    torch.testing.assert_close(s["correspondence"][0], pixel_grid(h, w)[0])
    EditTask(item.video, item.source_prompt, item.edit_prompts[0], side=s)  # keys accepted by EditTask
    assert "red square" in item.source_prompt and len(item.edit_prompts) == 3


def test_deterministic_and_length_independent():
    a, b, longer = load(), load(), load(num_frames=9)
    torch.testing.assert_close(a.video.frames, b.video.frames)
    torch.testing.assert_close(a.video.frames, longer.video.frames[:6])
    other = load(seed=1)
    assert (a.video.frames - other.video.frames).abs().mean() > 0.01


def test_objects_move_and_occlude():
    s = load(num_frames=8).side
    assert s["flow_fwd"].abs().amax() > 1.0
    assert s["occ_fwd"].sum() > 0 and s["occ_bwd"].sum() > 0
    assert torch.isnan(s["correspondence"][1:]).any()


@pytest.mark.parametrize("seed,size,objects", [(0, (64, 64), 2), (1, (48, 80), 3), (2, (96, 64), 1)])
def test_source_warps_onto_itself_under_ground_truth_flow(seed, size, objects):
    # the occlusion masks cover the edge band where bilinear sampling mixes surfaces: the identity
    # edit's warp error (0-1 scale) is interpolation error of smooth textures only, also after uint8
    item = load(num_frames=8, size=size, seed=seed, num_objects=objects)
    frames = item.video.frames
    exact = warp_error(frames, item.side)
    assert exact < 1e-4 and warp_error((frames * 255).round() / 255, item.side) < 1e-4
    shuffled = warp_error(frames[torch.tensor([0, 5, 2, 7, 1, 4, 6, 3])], item.side)
    assert exact < 1e-3 * shuffled
    assert (1 - item.side["occ_fwd"]).mean() > 0.8  # most pixels still count


def test_ground_truth_occlusion_agrees_with_forward_backward_check():
    s = load(num_frames=8, size=(64, 64)).side
    occ_f, occ_b = occlusion_masks(s["flow_fwd"], s["flow_bwd"])
    # the check's occlusions are ground-truth occlusions; ground truth adds the thin edge band
    assert (occ_f * (1 - s["occ_fwd"])).mean() < 0.01 and (occ_b * (1 - s["occ_bwd"])).mean() < 0.01
    assert (occ_f == s["occ_fwd"]).float().mean() > 0.9
    assert (occ_b == s["occ_bwd"]).float().mean() > 0.9


def test_correspondence_matches_chained_flow_away_from_edges():
    s = load(num_frames=5, size=(64, 64)).side
    chained = chain_to_first(s["flow_bwd"], s["occ_bwd"])
    both = torch.isfinite(chained) & torch.isfinite(s["correspondence"])
    assert both.float().mean() > 0.7
    close = (chained[both] - s["correspondence"][both]).abs() < 0.05
    assert close.float().mean() > 0.9


def test_static_video_has_no_motion():
    item = load(static=True)
    s = item.side
    assert s["flow_fwd"].abs().max() < 1e-5 and s["flow_bwd"].abs().max() < 1e-5
    assert s["occ_fwd"].sum() == 0 and s["occ_bwd"].sum() == 0
    torch.testing.assert_close(item.video.frames[0], item.video.frames[-1])
    assert "lying" in item.source_prompt


def test_renders_at_any_size_the_same_scene():
    small, large = load(size=(32, 32)), load(size=(128, 128))
    down = torch.nn.functional.avg_pool2d(large.video.frames, 4)
    assert (down - small.video.frames).abs().mean() < 0.05


def test_bad_arguments():
    import pytest

    with pytest.raises(ValueError, match="num_objects"):
        SyntheticDataset(num_objects=9)
    with pytest.raises(KeyError, match="synthetic_000"):
        SyntheticDataset().load("nope_1")
