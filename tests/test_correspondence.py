"""SD-DINO correspondence to the first frame (VidMP3's): matching on constructed descriptors, the
frame layout, tiny real models end to end, and DINOv2 loaded from a Hugging Face cache layout."""

from __future__ import annotations

import pytest
import torch

from vedit.backbones import build_backbone
from vedit.errors import EstimatorError
from vedit.estimators import Estimators
from vedit.estimators.correspondence import (DINO_MODEL, _decoder_taps, fuse, grid_to_pixels, load_dinov2,
                                             nearest_in_first, pca_pair, sd_dino_correspondence)
from vedit.task import EditTask
from vedit.video import Video

REV = "0123456789abcdef0123456789abcdef01234567"


def tiny_dinov2(seed: int = 0):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
                                    patch_size=14, image_size=56)).eval()


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("tiny", "sd15-animatediff", seed=0)


def test_fused_descriptors_match_a_shifted_frame_to_the_known_cells():
    """Frame t = frame 0's SD (3 layers) and DINO maps rolled one cell right: cell (i, j) of frame t
    matches cell (i, j - 1) of frame 0; the joint PCA, normalisation and concatenation keep that."""
    g = torch.Generator().manual_seed(0)
    grid = 5
    sd0 = [torch.randn(c, grid, grid, generator=g) for c in (12, 7, 9)]
    dino0 = torch.randn(6, grid, grid, generator=g)
    roll = lambda m: m.roll(1, dims=-1)  # noqa: E731 - content of column j - 1 now at column j
    desc0, desc = fuse([(m, roll(m)) for m in sd0], (dino0, roll(dino0)), grid)
    assert desc0.shape == (grid * grid, 12 + 7 + 9 + 6)
    match = nearest_in_first(desc0, desc)
    i, j = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    assert match.tolist() == (i * grid + (j - 1) % grid).flatten().tolist()
    allowed = torch.ones(grid * grid, dtype=torch.bool)
    allowed[match[7]] = False  # the best target excluded: another one is taken
    assert nearest_in_first(desc0, desc, allowed)[7] != match[7]


def test_joint_pca_orders_components_by_variance_and_keeps_distances_at_full_rank():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 6, 4, 4, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3, 2, 1, .5, .1]).view(
        1, 6, 1, 1).double()
    pa, pb = pca_pair(a.float(), b.float(), dim=3)
    joint = torch.cat([pa.flatten(1), pb.flatten(1)], 1)
    assert pa.shape == (3, 4, 4) and bool((joint.var(dim=1)[:-1] >= joint.var(dim=1)[1:]).all())
    fa, fb = pca_pair(a.float(), b.float(), dim=256)  # 6 channels: a rotation, distances kept
    assert fa.shape == (6, 4, 4)
    torch.testing.assert_close(torch.cdist(fa.flatten(1).T, fb.flatten(1).T),
                               torch.cdist(a.flatten(1).T.float(), b.flatten(1).T.float()), rtol=1e-4, atol=1e-4)


def test_grid_cells_of_a_wide_frame_on_the_padded_square():
    """48 x 64 on a 56 square: scale 7/8, 42 rows placed from row 7; 4 x 4 cells of 14."""
    centres, inside, pixel_cell = grid_to_pixels(48, 64, 56, 4)
    x, y = centres[:, 0].view(4, 4), centres[:, 1].view(4, 4)
    torch.testing.assert_close(x[0], torch.tensor([7.0, 21, 35, 49], dtype=torch.float64) / 0.875 - 0.5)
    torch.testing.assert_close(y[:, 0], (torch.tensor([7.0, 21, 35, 49], dtype=torch.float64) - 7) / 0.875 - 0.5)
    assert inside.view(4, 4).all()  # rows 7..48 of the square touch all four cell rows
    cells = pixel_cell.view(48, 64)
    assert cells[0, 0] == 0 and cells[47, 63] == 15
    assert cells[8, 16] == 5  # pixel (16, 8) -> square (14.4, 14.4): row 1, column 1
    _, inside_tall, _ = grid_to_pixels(64, 16, 56, 4)  # 14 columns wide, centred: columns 21..34
    assert inside_tall.view(4, 4).all(dim=0).tolist() == [False, True, True, False]


def test_sd_dino_end_to_end_with_tiny_models(backbone):
    assert _decoder_taps(backbone.unet) == [backbone.unet.up_blocks[0].resnets[-1],
                                            backbone.unet.up_blocks[1].attentions[-1],
                                            backbone.unet.up_blocks[2].attentions[-1]]
    g = torch.Generator().manual_seed(0)
    still = torch.rand(1, 3, 48, 64, generator=g).repeat(3, 1, 1, 1)
    moving = torch.cat([still[:1], torch.rand(2, 3, 48, 64, generator=g)])
    text = backbone.encode_prompt("")
    dino = tiny_dinov2()
    for frames in (still, moving):
        corr = sd_dino_correspondence(frames, backbone, dino, text, sd_size=64, dino_size=56)
        assert corr.shape == (3, 2, 48, 64) and torch.isfinite(corr).all()
        assert corr[..., 0, :, :].min() >= -0.5 and corr[:, 0].max() <= 63.5 and corr[:, 1].max() <= 47.5
        centres, _, cell = grid_to_pixels(48, 64, 56, 4)
        torch.testing.assert_close(corr[0], centres[cell].T.reshape(2, 48, 64).float())  # frame 0: its own cells
    torch.testing.assert_close(sd_dino_correspondence(still, backbone, dino, text, 64, 56)[2], corr[0])  # same frame


@pytest.fixture
def hf_cache_with_dinov2(tmp_path, monkeypatch):
    """facebook/dinov2-base as a Hub cache holds it (tiny weights), the only cache the loader sees."""
    import huggingface_hub.constants

    repo = tmp_path / "hub" / f"models--{DINO_MODEL.replace('/', '--')}"
    tiny_dinov2(seed=3).save_pretrained(repo / "snapshots" / REV)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def test_vidmp3_default_correspondence_loads_dinov2_from_the_hub_cache(backbone, hf_cache_with_dinov2, tmp_path):
    from vedit.editors.vidmp3 import VidMP3Editor, guide_input

    g = torch.Generator().manual_seed(2)
    frames = torch.rand(3, 3, 48, 64, generator=g)
    mask = torch.zeros(3, 1, 48, 64)
    mask[:, :, 8:40, 10:50] = 1
    depth = torch.rand(3, 1, 48, 64, generator=g)
    task = EditTask(Video(frames, fps=8.0, id="wide"), "a red square", "a blue ball",
                    side={"mask": mask, "depth": depth})
    est = Estimators(cache_dir=tmp_path / "cache")
    ed = VidMP3Editor(backbone, estimators=est, sd_size=64, dino_size=56)
    assert (ed.correspondence, ed.dino_model) == ("sd_dino", "facebook/dinov2-base")
    maps, m, _ = ed.guide_maps(task)
    loaded = est.dino_models[DINO_MODEL]
    assert loaded.config.hidden_size == 16  # the cached tiny model, by its Hub id
    corr = sd_dino_correspondence(frames, backbone, loaded, backbone.encode_prompt("a red square"), 64, 56)
    torch.testing.assert_close(maps, guide_input("multiply", corr, depth, m))
    assert torch.equal(est.correspondence(task, "sd_dino", backbone, "a red square", sd_size=64, dino_size=56), corr)
    assert est.cache.hits == 1  # cached on disk per video, models, prompt and sizes
    flow = VidMP3Editor(backbone, estimators=Estimators(flow="dis"), correspondence="flow")  # the switch
    flow_maps = flow.guide_maps(task)[0]
    assert flow_maps.shape == maps.shape and (flow_maps - maps).abs().max() > 1e-3
    with pytest.raises(EstimatorError, match=r"facebook/dinov2-large.*dino_model.*correspondence=flow"):
        Estimators().correspondence(task, "sd_dino", backbone, dino_model="facebook/dinov2-large")


def test_tiny_dinov2_variant_is_seeded_and_offline():
    a, b = load_dinov2("tiny"), load_dinov2("tiny")
    assert a.config.hidden_size == 16 and a.config.patch_size == 14
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
