"""ViCLIP video-text alignment (V2VBench's Video Text Alignment) against hand computations and the
reference libraries: frame sampling, preprocessing (torchvision's transform, V2VBench's
`clip_image_transform`), the tokenizer, the score, the released checkpoint layout loaded from a file
and from a Hugging Face cache layout, and the vision tower's reduction to CLIP's image tower."""

import os

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU, VisionTransformer

from conftest import pil, smooth_frames
from vedit.metrics import MetricError
from vedit.metrics.viclip import (
    TINY_VICLIP,
    VICLIP_FILE,
    VICLIP_MODEL,
    ViClipText,
    alignment_score,
    sample_frames,
    tiny_viclip,
    viclip_preprocess,
)
from vedit.registry import METRICS
from vedit.task import EditTask
from vedit.video import Video

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def task_of(frames, target="a golden fox runs in the snow"):
    return EditTask(Video(frames, fps=8, id="vid"), "a red fox runs in the snow", target)


def torchvision_transform(size):
    """V2VBench's third_party/viclip/image_transform.py, rebuilt from torchvision."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size), ToTensor(),
                    Normalize(OPENAI_MEAN, OPENAI_STD)])


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline; `snapshot(repo_id)` makes a repo's snapshot folder."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read at import: set it too
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def snapshot(repo_id, rev="b" * 40):
        repo = tmp_path / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(rev)
        folder = repo / "snapshots" / rev
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    return snapshot


# --- frames ----------------------------------------------------------------------------------------------

def test_stride_sampling_is_v2vbenchs_every_third_frame_from_the_first():
    assert sample_frames(24) == [0, 3, 6, 9, 12, 15, 18, 21]  # V2VBench's 24-frame videos
    assert sample_frames(22) == [0, 3, 6, 9, 12, 15, 18, 21]
    assert sample_frames(25) == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    assert sample_frames(3) == [0]
    assert sample_frames(16, stride=2) == [0, 2, 4, 6, 8, 10, 12, 14]


def test_uniform_sampling_is_internvideos_demo_rule():
    assert sample_frames(50, "uniform") == [0, 6, 12, 18, 24, 30, 36, 42]  # step 50 // 8 = 6, first 8
    assert sample_frames(17, "uniform") == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_frames(8, "uniform") == list(range(8))
    with pytest.raises(ValueError, match="at least 8"):
        sample_frames(7, "uniform")


def test_the_metric_sees_only_the_sampled_frames_and_names_the_fix_for_other_lengths():
    enc = tiny_viclip(seed=1)
    frames = smooth_frames(24, 40, 48)
    task = task_of(frames)
    metric = ViClipText(encoder=enc)
    score = metric(frames, task)["viclip_text"]
    assert score == alignment_score(enc.video_embedding(frames[[0, 3, 6, 9, 12, 15, 18, 21]]),
                                    enc.text_embedding(task.target_prompt))
    unsampled, sampled = frames.clone(), frames.clone()
    unsampled[4], sampled[3] = 255 - frames[4], 255 - frames[3]
    assert metric(unsampled, task)["viclip_text"] == score
    assert metric(sampled, task)["viclip_text"] != pytest.approx(score, abs=1e-6)
    assert metric(frames[:3], task)["viclip_text"] == alignment_score(enc.video_embedding(frames[:1]),
                                                                      enc.text_embedding(task.target_prompt))
    odd = smooth_frames(25, 40, 48)
    with pytest.raises(MetricError, match=r"'vid' has 25 frames.*9.*22-24 frames.*stride.*uniform"):
        ViClipText(encoder=enc, otherwise="error")(odd, task)
    assert metric(odd, task)["viclip_text"] == alignment_score(enc.video_embedding(odd[0:24:3]),
                                                               enc.text_embedding(task.target_prompt))
    long = smooth_frames(50, 32, 32)
    assert metric(long, task)["viclip_text"] == alignment_score(enc.video_embedding(long[0:48:6]),
                                                                enc.text_embedding(task.target_prompt))
    uniform = ViClipText(encoder=enc, sampling="uniform")
    assert uniform(long, task)["viclip_text"] == alignment_score(enc.video_embedding(long[0:48:6]),
                                                                 enc.text_embedding(task.target_prompt))
    with pytest.raises(MetricError, match="at least 8"):
        uniform(frames[:7], task)
    with pytest.raises(MetricError, match="target_prompt"):
        metric(frames, task_of(frames, target=""))
    with pytest.raises(MetricError, match="sampling 'every'"):
        ViClipText(sampling="every")
    with pytest.raises(MetricError, match="stride must be a positive integer"):
        ViClipText(stride=0)


# --- preprocessing and text ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(480, 854), (231, 224), (100, 257)])
def test_preprocessing_is_v2vbenchs_torchvision_transform_on_pil_frames(size):
    frames = smooth_frames(2, *size, seed=size[1])
    expected = torch.stack([torchvision_transform(224)(pil(f)) for f in frames])
    assert torch.allclose(viclip_preprocess(224)(frames), expected, atol=1e-6)


def test_preprocessing_of_a_constructed_frame_by_hand():
    # 224 x 448, black left half, white right half: no resize; the centre crop starts at column 112,
    # so its first 112 columns are black and the other 112 white
    frame = torch.zeros(1, 3, 224, 448, dtype=torch.uint8)
    frame[..., 224:] = 255
    out = viclip_preprocess(224)(frame)
    assert out.shape == (1, 3, 224, 224)
    for c in range(3):
        assert torch.allclose(out[0, c, :, :112], torch.tensor(-OPENAI_MEAN[c] / OPENAI_STD[c]), atol=1e-6)
        assert torch.allclose(out[0, c, :, 112:], torch.tensor((1 - OPENAI_MEAN[c]) / OPENAI_STD[c]), atol=1e-6)


def test_text_is_clip_bpe_in_32_tokens_with_the_end_token_kept():
    enc = tiny_viclip()
    tokens = enc.tokenize(["a photo of a cat"])
    assert tokens.shape == (1, 32)
    assert tokens[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] and not tokens[0, 7:].any()
    long = enc.tokenize([" ".join(["cat"] * 40)])[0]
    assert long[0] == 49406 and long[-1] == 49407 and (long[1:31] == 2368).all()


# --- score -----------------------------------------------------------------------------------------------

def test_the_score_is_the_raw_cosine_of_the_two_embeddings():
    assert alignment_score(torch.tensor([3.0, 4.0, 0.0]), torch.tensor([4.0, 3.0, 0.0])) == pytest.approx(24 / 25)
    assert alignment_score(torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 0.0])) == pytest.approx(-1.0)
    assert alignment_score(torch.tensor([0.0, 5.0]), torch.tensor([7.0, 0.0])) == pytest.approx(0.0)


def test_the_metric_is_v2vbenchs_formula_through_the_reference_pieces():
    enc = tiny_viclip(seed=2)
    frames = smooth_frames(24, 36, 44, seed=3)
    task = task_of(frames)
    video = torch.stack([torchvision_transform(32)(pil(f)) for f in frames[::3]])[None]  # (1, 8, 3, 32, 32)
    tokens = open_clip.tokenize([task.target_prompt], context_length=32)
    with torch.no_grad():
        v = enc.model.vision_encoder(video)[0].double()
        t = enc.model.text_encoder(tokens)[0].double()
    expected = float(v @ t / (v.norm() * t.norm()))
    metric = ViClipText(encoder=enc)
    assert metric(frames, task)["viclip_text"] == pytest.approx(expected, abs=1e-5)
    assert metric.higher_is_better and "raw cosine" in metric.convention and metric.models(task)["viclip_tiny"]


# --- architecture ----------------------------------------------------------------------------------------

def test_one_frame_with_zero_temporal_embeddings_is_the_clip_image_tower():
    enc = tiny_viclip(seed=4)
    vis = enc.model.vision_encoder
    image = VisionTransformer(image_size=32, patch_size=8, width=128, layers=2, heads=2, mlp_ratio=4.0,
                              output_dim=32, act_layer=QuickGELU).eval()
    image.load_state_dict({k: v for k, v in vis.state_dict().items() if k != "temporal_positional_embedding"})
    x = enc.preprocessing(smooth_frames(1, 40, 48, seed=5))
    with torch.no_grad():
        vis.temporal_positional_embedding.zero_()
        assert torch.allclose(vis(x[None]), image(x), atol=1e-5)
        # ViCLIP's single-frame path adds the mean temporal embedding to every patch token
        vis.temporal_positional_embedding.normal_()
        image.positional_embedding[1:] += vis.temporal_positional_embedding.mean(1)[0]
        assert torch.allclose(vis(x[None]), image(x), atol=1e-5)


def test_joint_attention_sees_frame_order_only_through_the_temporal_embeddings():
    enc = tiny_viclip(seed=6)
    vis = enc.model.vision_encoder
    x = enc.preprocessing(smooth_frames(8, 32, 32, seed=7))[None]
    perm = [3, 0, 7, 1, 6, 2, 5, 4]
    with torch.no_grad():
        ordered = vis(x)
        assert not torch.allclose(ordered, vis(x[:, perm]), atol=1e-4)
        temporal = vis.temporal_positional_embedding.clone()
        vis.temporal_positional_embedding.copy_(temporal[:, perm])  # frames moved with their embeddings
        assert torch.allclose(ordered, vis(x[:, perm]), atol=1e-5)
        with pytest.raises(ValueError, match="1 or 8 frames"):
            vis(x[:, :5])


# --- released checkpoint ---------------------------------------------------------------------------------

BLOCK_KEYS = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
              "attn.out_proj.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
              "ln_2.weight", "ln_2.bias"]


def released_keys(vision_layers, text_layers):
    """The keys of InternVid's ViClip-InternVid-10M-FLT.pth "model" dict, as ViCLIP's modules name them."""
    vision = ["conv1.weight", "class_embedding", "positional_embedding", "temporal_positional_embedding",
              "ln_pre.weight", "ln_pre.bias", "ln_post.weight", "ln_post.bias", "proj"]
    text = ["token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection"]
    vision += [f"transformer.resblocks.{i}.{k}" for i in range(vision_layers) for k in BLOCK_KEYS]
    text += [f"transformer.resblocks.{i}.{k}" for i in range(text_layers) for k in BLOCK_KEYS]
    return {"temp"} | {f"vision_encoder.{k}" for k in vision} | {f"text_encoder.{k}" for k in text}


def released_checkpoint(model):
    """A model's weights in the released layout: {"model": state}, the patch embedding as a Conv3d
    weight with temporal kernel 1, and the training temperature `temp`."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["vision_encoder.conv1.weight"] = state["vision_encoder.conv1.weight"].unsqueeze(2)
    state["temp"] = torch.tensor(1 / 100)
    return {"model": state}


def test_the_modules_hold_the_released_checkpoints_keys():
    state = released_checkpoint(tiny_viclip().model)["model"]
    assert set(state) == released_keys(2, 2)
    assert state["vision_encoder.conv1.weight"].shape == (128, 3, 1, 8, 8)
    assert state["vision_encoder.temporal_positional_embedding"].shape == (1, 8, 128)
    assert state["text_encoder.positional_embedding"].shape == (32, 64)


def test_the_l14_build_has_the_released_models_size_and_reads_its_sizes_back():
    from vedit.metrics.viclip import VICLIP_L14, ViClip, viclip_config_from_state

    with torch.device("meta"):
        model = ViClip(VICLIP_L14)
    state = model.state_dict()
    # OpenGVLab/ViCLIP-L-14-hf's model.safetensors (float32) is 1.71 GB
    assert 4 * sum(v.numel() for v in state.values()) == pytest.approx(1.71e9, rel=3e-3)
    assert viclip_config_from_state(state) == VICLIP_L14
    assert model.vision_encoder.transformer.resblocks[0].attn.num_heads == 16
    assert model.text_encoder.transformer.resblocks[0].attn.num_heads == 12


def test_a_released_checkpoint_loads_from_a_file_a_folder_and_the_hub_cache(hf_home, tmp_path):
    from safetensors.torch import save_file

    tiny = tiny_viclip(seed=3)
    frames = smooth_frames(24, 40, 48, seed=8)
    task = task_of(frames)
    expected = ViClipText(encoder=tiny)(frames, task)["viclip_text"]
    with pytest.raises(MetricError, match=r"OpenGVLab/ViCLIP.*HF_HOME.*viclip_text.model"):
        ViClipText()(frames, task)
    ckpt = released_checkpoint(tiny.model)
    torch.save(ckpt, hf_home(VICLIP_MODEL) / VICLIP_FILE)
    (tmp_path / "local").mkdir()
    torch.save(ckpt, tmp_path / "local" / VICLIP_FILE)
    save_file(ckpt["model"], str(tmp_path / "viclip.safetensors"))
    for source in (VICLIP_MODEL, str(tmp_path / "local" / VICLIP_FILE), str(tmp_path / "local"),
                   str(tmp_path / "viclip.safetensors")):
        metric = ViClipText(model=source)
        before = metric.config(task)
        assert metric(frames, task)["viclip_text"] == expected
        assert metric.config(task) == before  # the metric key does not change when the model loads
        assert metric.encoder.config == TINY_VICLIP and not metric.models(task)["viclip_tiny"]
        assert torch.equal(metric.encoder.video_embedding(frames[::3]), tiny.video_embedding(frames[::3]))
    assert ViClipText().models(task)["viclip"] == f"{VICLIP_MODEL}/{VICLIP_FILE}"


class Opaque:
    pass


def test_checkpoints_that_are_not_plain_viclip_tensors_are_refused(tmp_path):
    from vedit.metrics.viclip import load_viclip

    state = released_checkpoint(tiny_viclip().model)["model"]
    torch.save({"model": state, "config": Opaque()}, tmp_path / "pickled.pth")
    with pytest.raises(MetricError, match="pickled objects"):
        load_viclip(str(tmp_path / "pickled.pth"))
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(MetricError, match="vision_encoder.conv1.weight.*not a ViCLIP checkpoint"):
        load_viclip(str(tmp_path / "other.pth"))
    torch.save({k: v for k, v in state.items() if k != "text_encoder.ln_final.bias"}, tmp_path / "missing.pth")
    with pytest.raises(MetricError, match="text_encoder.ln_final.bias"):
        load_viclip(str(tmp_path / "missing.pth"))
    torch.save({**state, "vision_encoder.conv1.weight": torch.zeros(128, 3, 2, 8, 8)}, tmp_path / "kernel.pth")
    with pytest.raises(MetricError, match="temporal kernel of 2"):
        load_viclip(str(tmp_path / "kernel.pth"))
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "missing.pth").read_bytes()[:100])
    with pytest.raises(MetricError, match="cannot read ViCLIP checkpoint .*truncated.pth"):
        load_viclip(str(tmp_path / "truncated.pth"))
    with pytest.raises(MetricError, match=f"has no {VICLIP_FILE}"):
        load_viclip(str(tmp_path))


# --- preset and records ----------------------------------------------------------------------------------

def test_viclip_text_joins_the_v2vbench_preset_with_v2vbenchs_settings():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.abspath("conf"), version_base=None):
        v2v = compose("config", overrides=["metrics=v2vbench"]).metrics
    assert "viclip_text" in v2v.names and METRICS.get("viclip_text") is ViClipText
    assert dict(v2v.options.viclip_text) == {"model": VICLIP_MODEL, "filename": VICLIP_FILE, "sampling": "stride",
                                             "stride": 3, "otherwise": "uniform"}
    task = task_of(smooth_frames(2, 32, 32))
    assert ViClipText(model="random").models(task) == {"viclip": "random-viclip", "viclip_tiny": True}
    assert ViClipText(sampling="uniform", stride=5).config(task)["stride"] is None


def test_the_preset_builds_through_the_run_and_records_the_model():
    from hydra import compose, initialize_config_dir

    from vedit.metrics.scoring import metric_entry
    from vedit.run import build_metrics

    with initialize_config_dir(config_dir=os.path.abspath("conf"), version_base=None):
        cfg = compose("config", overrides=["metrics=v2vbench", "metrics.names=[viclip_text]",
                                           "metrics.options.viclip_text.model=tiny"])
    (metric,) = build_metrics(cfg, None, torch.device("cpu"))
    frames = smooth_frames(24, 32, 40, seed=9)
    task = task_of(frames)
    entry = metric_entry(metric, frames, task)
    enc = tiny_viclip()  # what model=tiny builds
    assert entry["values"] == {"viclip_text": alignment_score(enc.video_embedding(frames[::3]),
                                                              enc.text_embedding(task.target_prompt))}
    assert entry["higher_is_better"] is True and entry["models"] == {"viclip": "tiny-viclip", "viclip_tiny": True}
    assert entry["config"]["sampling"] == "stride" and entry["config"]["stride"] == 3
