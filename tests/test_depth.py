"""Depth Anything V2 as a depth estimator: its processor's sizes, a tiny model, the offline error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vedit.errors import EstimatorError
from vedit.estimators import Estimators
from vedit.estimators.depth import depth_anything_size
from vedit.task import EditTask
from vedit.video import Video


def tiny_depth_anything():
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                            patch_size=14, image_size=28, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 16, 32],
                                 fusion_hidden_size=8, patch_size=14)
    return DepthAnythingForDepthEstimation(config).eval()


@pytest.mark.parametrize("size", [(480, 854), (64, 64), (720, 1280), (300, 200)])
def test_input_size_matches_depth_anythings_image_processor(size):
    from PIL import Image
    from transformers import DPTImageProcessor

    # Depth Anything V2's preprocessor_config: 518, keep aspect ratio, multiple of 14, bicubic
    processor = DPTImageProcessor(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                  resample=Image.BICUBIC, do_pad=False)
    pixels = processor(images=np.zeros((*size, 3), np.uint8), return_tensors="pt").pixel_values
    assert depth_anything_size(*size) == tuple(pixels.shape[-2:])


def test_depth_anything_with_a_tiny_model_is_cached(tmp_path):
    frames = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    task = EditTask(Video(frames, fps=8, id="v"), "a", "b")
    est = Estimators(depth="depth_anything", depth_model=tiny_depth_anything(), cache_dir=tmp_path)
    depth = est.depth(task)
    assert depth.shape == (3, 1, 40, 56) and torch.isfinite(depth).all() and depth.std() > 0
    assert torch.equal(est.depth(task), depth) and est.cache.hits == 1
    gt = torch.rand(3, 1, 40, 56)
    with_gt = EditTask(Video(frames, fps=8, id="v"), "a", "b", side={"depth": gt})
    assert est.depth(with_gt) is not gt  # an explicit estimator runs even where the dataset has depth


def test_depth_anything_without_weights_names_the_model_and_the_ways_out(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    task = EditTask(Video(torch.rand(2, 3, 16, 16), fps=8, id="v"), "a", "b")
    with pytest.raises(EstimatorError, match=r"Depth-Anything-V2-Large-hf.*depth_anything_model.*depth=auto"):
        Estimators(depth="depth_anything").depth(task)
