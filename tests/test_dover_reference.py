"""vedit's DOVER against V2VBench's own code (wenhao728/awesome-diffusion-v2v: v2vbench/dover_utils.py and
third_party/dover), imported from a checkout named by VEDIT_V2VBENCH_DIR; skipped without one (or without
its dependencies timm and einops). Nothing of that code is in vedit: it is run, never copied."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vedit.metrics.dover import DOVER_VIEWS, TINY_VIEWS, DoverViews, dover_to_vedit, dover_views, fuse
from vedit.metrics.dover_models import TINY_ARCH, DoverModel


@pytest.fixture(scope="module")
def v2vbench():
    root = os.environ.get("VEDIT_V2VBENCH_DIR")
    if not root or not (Path(root) / "v2vbench" / "dover_utils.py").is_file():
        pytest.skip("VEDIT_V2VBENCH_DIR (a checkout of wenhao728/awesome-diffusion-v2v) is not set")
    pytest.importorskip("timm")
    pytest.importorskip("einops")
    sys.path.insert(0, root)
    try:
        import importlib

        utils = importlib.import_module("v2vbench.dover_utils")
        swin = importlib.import_module("third_party.dover.models.swin_backbone")
        conv = importlib.import_module("third_party.dover.models.conv_backbone")
        head = importlib.import_module("third_party.dover.models.head")
    except ImportError as e:  # v2vbench/__init__ imports pandas, tqdm, ...
        pytest.skip(f"V2VBench's modules do not import here: {e}")
    finally:
        sys.path.remove(root)
    return utils, swin, conv, head


def sample_types(v: DoverViews) -> dict:
    """V2VBench's third_party/dover/config.yaml `data` for these views."""
    return {
        "technical": {"fragments_h": v.fragments[0], "fragments_w": v.fragments[1], "fsize_h": v.fragment_size[0],
                      "fsize_w": v.fragment_size[1], "aligned": v.technical_clip_len, "clip_len": v.technical_clip_len,
                      "frame_interval": v.technical_interval, "num_clips": v.technical_clips},
        "aesthetic": {"size_h": v.aesthetic_size[0], "size_w": v.aesthetic_size[1], "clip_len": v.aesthetic_clip_len,
                      "frame_interval": v.aesthetic_interval, "t_frag": v.aesthetic_t_frag, "num_clips": 1},
    }


@pytest.mark.parametrize("shape", [(24, 256, 320), (20, 180, 200), (200, 240, 260)])
def test_views_equal_v2vbenchs_preprocessor_for_the_same_seed(v2vbench, shape):
    from PIL import Image

    utils = v2vbench[0]
    frames = (torch.rand(3 * shape[0], shape[1], shape[2], generator=torch.Generator().manual_seed(0))
              .view(shape[0], 3, shape[1], shape[2]) * 255).to(torch.uint8)
    pils = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    torch.manual_seed(5)
    np.random.seed(5)
    ref = utils.DoverPreprocessor(sample_types(DOVER_VIEWS))(pils)
    ours = dover_views(frames, DOVER_VIEWS, seed=5, antialias=True)  # torchvision >= 0.17 here: Resize antialiases
    for key in ("technical", "aesthetic"):
        assert torch.equal(ref[key], ours[key]), key


def test_network_and_fusion_equal_v2vbenchs_dover_modules(v2vbench):
    utils, swin, conv, head = v2vbench
    torch.manual_seed(0)
    ref = torch.nn.Module()
    s, c = TINY_ARCH.technical, TINY_ARCH.aesthetic
    ref.technical_backbone = swin.SwinTransformer3D(embed_dim=s.embed_dim, depths=list(s.depths),
                                                    num_heads=list(s.num_heads), window_size=s.window)
    ref.aesthetic_backbone = conv.ConvNeXt3D(depths=list(c.depths), dims=list(c.dims))
    ref.technical_head = head.VQAHead(in_channels=s.out_dim, hidden_channels=TINY_ARCH.head_hidden)
    ref.aesthetic_head = head.VQAHead(in_channels=c.dims[-1], hidden_channels=TINY_ARCH.head_hidden)
    with torch.no_grad():  # zero-initialised tables and tiny gammas would hide the gate and the blocks
        for name, p in ref.named_parameters():
            if "position_bias_table" in name or name.endswith("gamma"):
                p.copy_(torch.randn_like(p) * 0.5)
    ref.eval()
    ours = DoverModel(TINY_ARCH)
    ours.load_state_dict(dover_to_vedit(ref.state_dict(), ours))
    ours.eval()
    frames = (torch.rand(10, 3, 40, 48, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    views = dover_views(frames, TINY_VIEWS, seed=2)
    with torch.no_grad():
        results = [ref.technical_head(ref.technical_backbone(views["technical"])).mean().item(),
                   ref.aesthetic_head(ref.aesthetic_backbone(views["aesthetic"])).mean().item()]
        t, a = ours(views["technical"], views["aesthetic"])
    assert [float(t), float(a)] == results
    assert fuse(*results) == utils.fuse_results(results)
