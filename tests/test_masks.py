"""Subject masks: DAVIS / VideoSwap annotations transformed like the frames, the estimator's sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vedit.data.davis import DavisDataset
from vedit.data.transforms import Transform
from vedit.data.videoswap import VideoSwapDataset
from vedit.errors import EstimatorError
from vedit.estimators import Estimators
from vedit.estimators.masks import clipseg_masks
from vedit.task import EditTask
from vedit.video import Video, VideoError

H, W, FRAMES = 32, 48, 10


def box(t: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the subject in frame t: even coordinates, moving 2 px right per frame."""
    return 8, 4 + 2 * t, 20, 16 + 2 * t


def write_frames_and_masks(frames_dir, masks_dir, n_masks: int = FRAMES) -> None:
    frames_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    for t in range(FRAMES):
        Image.fromarray(np.full((H, W, 3), 20 * t, np.uint8)).save(frames_dir / f"{t:05d}.jpg")
    for t in range(n_masks):
        label = np.zeros((H, W), np.uint8)
        top, left, bottom, right = box(t)
        label[top:bottom, left:right] = 1 + t % 2  # two object ids: both are the subject
        png = Image.fromarray(label, mode="P")
        png.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)  # DAVIS annotations are palette PNGs
        png.save(masks_dir / f"{t:05d}.png")


def expected_mask(t: int, scale: int = 1) -> torch.Tensor:
    m = torch.zeros(1, H // scale, W // scale)
    top, left, bottom, right = (c // scale for c in box(t))
    m[:, top:bottom, left:right] = 1
    return m


def davis_tree(root, n_masks: int = FRAMES):
    write_frames_and_masks(root / "JPEGImages" / "480p" / "dog", root / "Annotations" / "480p" / "dog", n_masks)
    return root


def test_davis_masks_are_cut_and_resized_exactly_like_the_frames(tmp_path):
    root = davis_tree(tmp_path)
    full = DavisDataset(root, sequences=["dog"]).load("dog")
    assert full.side["mask"].shape == (FRAMES, 1, H, W)
    for t in range(FRAMES):
        assert torch.equal(full.side["mask"][t], expected_mask(t))
    # the paper's protocol shape (fewer frames read than annotated) with a half-size resize
    clip = DavisDataset(root, sequences=["dog"], transform=Transform(size=[H // 2, W // 2], max_frames=3,
                                                                     stride=3)).load("dog")
    assert clip.video.frames.shape == (3, 3, H // 2, W // 2) and clip.side["mask"].shape == (3, 1, H // 2, W // 2)
    for i, t in enumerate([0, 3, 6]):
        assert torch.equal(clip.side["mask"][i], expected_mask(t, scale=2)), t
        # frame t is the grey level 20 t: the mask and the frame come from the same source frame
        assert clip.video.frames[i].mean().item() == pytest.approx(20 * t / 255, abs=2 / 255)


def test_davis_center_crop_crops_masks_like_frames(tmp_path):
    root = davis_tree(tmp_path)
    item = DavisDataset(root, sequences=["dog"], transform=Transform(size=[H, H], max_frames=1)).load("dog")
    left = (W - H) // 2  # 8: the centred square window
    assert torch.equal(item.side["mask"][0], expected_mask(0)[:, :, left:left + H])


def test_incomplete_or_missing_annotations_give_no_mask(tmp_path, caplog):
    first_only = DavisDataset(davis_tree(tmp_path / "a", n_masks=1), sequences=["dog"]).load("dog")
    assert "mask" not in first_only.side and "1 annotation PNGs for 10 frames" in caplog.text
    root = davis_tree(tmp_path / "b")
    for f in (root / "Annotations").rglob("*.png"):
        f.unlink()
    (root / "Annotations" / "480p" / "dog").rmdir()
    assert "mask" not in DavisDataset(root, sequences=["dog"]).load("dog").side


def test_annotations_of_another_resolution_are_an_error_naming_the_folder(tmp_path):
    root = davis_tree(tmp_path)
    Image.fromarray(np.zeros((H * 2, W * 2), np.uint8)).save(root / "Annotations" / "480p" / "dog" / "00000.png")
    with pytest.raises(VideoError, match=r"annotation .*dog/00000.png is 96x64, frames 48x32"):
        DavisDataset(root, sequences=["dog"]).load("dog")


def test_videoswap_loads_optional_masks(tmp_path):
    write_frames_and_masks(tmp_path / "animal" / "dog" / "frames", tmp_path / "animal" / "dog" / "masks")
    (tmp_path / "animal" / "cat" / "frames").mkdir(parents=True)
    Image.new("RGB", (W, H)).save(tmp_path / "animal" / "cat" / "frames" / "00000.jpg")
    ds = VideoSwapDataset(tmp_path, transform=Transform(max_frames=2, stride=4))
    dog = ds.load("animal/dog")
    assert torch.equal(dog.side["mask"][1], expected_mask(4))
    assert "mask" not in ds.load("animal/cat").side


# ------------------------------------------------------------------ the mask estimator's sources

def task_with(side: dict | None = None, dataset: str = "davis") -> EditTask:
    frames = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return EditTask(Video(frames, fps=8, id="v"), "a dog running", "a cat running", side=side or {}, dataset=dataset)


def tiny_clipseg():
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    from vedit.backbones.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    config = CLIPSegConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32, extract_layers=[1, 2], reduce_dim=16, decoder_num_attention_heads=2,
        decoder_intermediate_size=37)
    return CLIPSegForImageSegmentation(config).eval(), clip_tokenizer()


def test_mask_sources():
    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, 4:12, 4:12] = 1
    assert Estimators().subject_mask(task_with({"mask": mask}))[1] == "dataset"
    got, source = Estimators().subject_mask(task_with({"mask": mask}, dataset="synthetic"))
    assert source == "gt" and got is mask
    cases = [(Estimators(masks="dataset"), task_with()), (Estimators(masks="none"), task_with({"mask": mask}))]
    for est, task in cases:
        whole, source = est.subject_mask(task)
        assert source == "none" and whole.shape == (3, 1, 32, 32) and bool((whole == 1).all())
    with pytest.raises(EstimatorError, match="choose one of dataset, salient, none"):
        Estimators(masks="rmbg")


def test_salient_masks_with_a_tiny_clipseg_are_binary_cached_and_thresholded(tmp_path):
    model, tokenizer = tiny_clipseg()
    est = Estimators(masks="salient", salient=(model, tokenizer), cache_dir=tmp_path)
    task = task_with({"mask": torch.zeros(3, 1, 32, 32)})  # salient runs the model even where the dataset has masks
    mask, source = est.subject_mask(task)
    assert source == "salient" and mask.shape == (3, 1, 32, 32)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    again, _ = Estimators(masks="salient", salient=(model, tokenizer), cache_dir=tmp_path).subject_mask(task)
    assert torch.equal(again, mask) and est.cache.misses == 1
    # probabilities lie in (0, 1): threshold 0 keeps every pixel, threshold 1 none
    frames = task.video.frames
    assert bool((clipseg_masks(frames, "a dog", model, tokenizer, threshold=0.0) == 1).all())
    assert bool((clipseg_masks(frames, "a dog", model, tokenizer, threshold=1.0) == 0).all())


def test_salient_without_weights_names_the_model_and_the_ways_out(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(EstimatorError, match=r"CIDAS/clipseg-rd64-refined.*estimators.salient_model.*masks=dataset"):
        Estimators(masks="salient").subject_mask(task_with())
