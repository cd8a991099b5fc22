"""Metrics as the benchmarks' own code computes them: preprocessing against the reference libraries
(transformers' image processors, open_clip's transform) on constructed images, pre-projection CLIP
features, and V2VBench's PickScore / aesthetic / DINOv2 dimensions against hand computations, with
their Hub ids loaded from a Hugging Face cache layout built here."""

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from conftest import pil, smooth_frames
from vedit.metrics import MetricError
from vedit.metrics.clip_models import tiny_clip
from vedit.metrics.preprocess import ImagePreprocess, resized_size
from vedit.registry import METRICS
from vedit.task import EditTask
from vedit.video import Video

transformers = pytest.importorskip("transformers")
CLIPProcessorPil = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)  # < 5: PIL
BitProcessorPil = getattr(transformers, "BitImageProcessorPil", transformers.BitImageProcessor)
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
SIZES = [(480, 854), (224, 227), (231, 224), (64, 64), (100, 257)]  # non-square, odd crop offsets, square


def task_of(frames, target="a golden square", source="a red square"):
    return EditTask(Video(frames, fps=8, id="vid"), source, target)


# --- preprocessing parity ------------------------------------------------------------------------------

def test_resized_size_truncates_the_long_side_as_transformers_and_torchvision():
    assert resized_size(480, 854, 224) == (224, 398)  # 398.53 -> 398 (rounding would give 399)
    assert resized_size(854, 480, 224) == (398, 224) and resized_size(64, 64, 224) == (224, 224)


@pytest.mark.parametrize("size", SIZES)
def test_transformers_preprocessing_equals_clip_image_processor_on_pil_images(size):
    frames = smooth_frames(2, *size)
    proc = CLIPProcessorPil()
    ours = ImagePreprocess.from_image_processor(proc)
    assert ours.reference == "transformers" and ours.size == 224 and ours.crop == (224, 224)
    ref = np.concatenate([np.asarray(proc(pil(f), return_tensors="np")["pixel_values"]) for f in frames])
    torch.testing.assert_close(ours(frames), torch.from_numpy(ref), atol=1e-6, rtol=0)
    # float frames in [0, 1] are scored as the 8-bit frames they round to
    torch.testing.assert_close(ours(frames.float() / 255), ours(frames), atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_open_clip_preprocessing_equals_its_torchvision_transform_on_pil_images(size):
    frames = smooth_frames(2, *size, seed=1)
    transform = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD, interpolation="bicubic",
                                          resize_mode="shortest")
    ref = torch.stack([transform(pil(f)) for f in frames])
    clip = tiny_clip(image_size=224)
    assert clip.preprocessing.reference == "open_clip"
    torch.testing.assert_close(clip.preprocess(frames), ref, atol=1e-6, rtol=0)


def test_the_two_references_differ_only_in_the_crop_offset():
    frames = smooth_frames(1, 224, 227)  # 3 columns to drop: transformers floors the offset to 1, torchvision rounds to 2
    a = tiny_clip(image_size=224, preprocess="transformers").preprocess(frames)
    b = tiny_clip(image_size=224, preprocess="open_clip").preprocess(frames)
    assert not torch.allclose(a, b)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(a, (frames[..., 1:225].float() / 255 - mean) / std)
    torch.testing.assert_close(b, (frames[..., 2:226].float() / 255 - mean) / std)


@pytest.mark.parametrize("size", [(480, 854), (360, 640), (480, 480)])
def test_tgve_square_resize_equals_pil_480_then_clip_image_processor(size):
    frames = smooth_frames(2, *size, seed=2)
    proc = CLIPProcessorPil()
    ref = np.concatenate([np.asarray(proc(pil(f).resize((480, 480)), return_tensors="np")["pixel_values"])
                          for f in frames])  # TGVE's run_eval.py: i.resize((480, 480)), PIL's default filter
    clip = tiny_clip(image_size=224, preprocess="transformers", square=480)
    torch.testing.assert_close(clip.preprocess(frames), torch.from_numpy(ref), atol=1e-6, rtol=0)
    assert "480x480" in clip.preprocessing.label()


@pytest.mark.parametrize("size", SIZES[:3])
def test_dino_preprocessing_equals_bit_image_processor(size):
    frames = smooth_frames(2, *size, seed=3)
    proc = BitProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, **IMAGENET)
    ref = np.concatenate([np.asarray(proc(pil(f), return_tensors="np")["pixel_values"]) for f in frames])
    torch.testing.assert_close(ImagePreprocess.from_image_processor(proc)(frames), torch.from_numpy(ref),
                               atol=1e-6, rtol=0)


# --- CLIP features before the projection, one pass per video --------------------------------------------

def test_clip_consistency_is_on_the_pooled_output_before_the_projection():
    clip = tiny_clip(seed=1, embed_dim=16)  # tower width 32 -> 16, as ViT-L/14's 1024 -> 768
    frames = smooth_frames(4, 40, 56)
    seen = {}
    clip.model.visual.ln_post.register_forward_hook(lambda m, i, out: seen.__setitem__("ln_post", out))
    pooled = clip.encode_images(frames, pooled=True)
    cls = seen["ln_post"][:, 0] if seen["ln_post"].ndim == 3 else seen["ln_post"]  # layer-normed CLS token
    torch.testing.assert_close(pooled, F.normalize(cls, dim=-1), atol=1e-6, rtol=0)
    assert pooled.shape[1] == clip.model.visual.proj.shape[0] != clip.model.visual.proj.shape[1]
    with torch.no_grad():
        projected = F.normalize(clip.model.encode_image(clip.preprocess(frames)), dim=-1)
    torch.testing.assert_close(clip.encode_images(frames), projected, atol=1e-6, rtol=0)
    expected = (pooled[:-1] * pooled[1:]).sum(-1).clamp_min(0).mean().item()
    out = METRICS.get("clip_consistency")(clip)(frames, task_of(frames))
    assert out["clip_consistency"] == pytest.approx(expected, abs=1e-6)
    assert "before the projection" in METRICS.get("clip_consistency")(clip).convention
    assert METRICS.get("clip_consistency")(clip).config(task_of(frames))["features"] == "pooled"


def test_the_metrics_of_a_set_encode_a_video_once():
    clip = tiny_clip(seed=2)
    calls = []
    clip.model.visual.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    frames = smooth_frames(5, 32, 48)
    task = task_of(frames)
    for name in ("clip_text", "clip_image", "clip_consistency", "clip_image_allpairs", "frame_acc"):
        METRICS.get(name)(clip)(frames, task)
    assert sum(calls) == 5
    before = clip.encode_images(frames)
    frames[0] = 255 - frames[0]  # changed in place: encoded again
    assert not torch.allclose(clip.encode_images(frames)[0], before[0]) and sum(calls) == 10


def test_clip_text_logit_is_the_models_logit_scale_times_the_cosine():
    clip = tiny_clip(seed=3)
    frames = smooth_frames(3, 32, 32)
    out = METRICS.get("clip_text")(clip)(frames, task_of(frames))
    scale = clip.model.logit_scale.exp().item()
    assert scale != pytest.approx(100) and out["clip_text_logit"] == pytest.approx(scale * out["clip_text"], rel=1e-6)


# --- Hugging Face cache layout ---------------------------------------------------------------------------

@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline; `snapshot(repo_id)` makes a repo's snapshot folder."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read at import: set it too
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def snapshot(repo_id, rev="a" * 40):
        repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(rev)
        folder = repo / "snapshots" / rev
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    return snapshot


# --- PickScore -------------------------------------------------------------------------------------------

def reference_pickscore(scorer, frames, prompt):
    """V2VBench's pick_score.py formula through transformers' own forward (logits_per_image) on PIL frames."""
    proc = CLIPProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tokens = scorer.tokenizer([prompt], padding=True, truncation=True, max_length=77, return_tensors="pt")
    pixels = torch.from_numpy(np.concatenate([np.asarray(proc(pil(f), return_tensors="np")["pixel_values"])
                                              for f in frames]))
    with torch.no_grad():
        out = scorer.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    return out.logits_per_image[:, 0].double().mean().item()


def test_pick_score_is_the_mean_logit_of_each_frame_against_the_prompt():
    from vedit.metrics.pick_score import PickScore, tiny_pickscore

    scorer = tiny_pickscore(seed=0)
    for size in [(40, 56), (32, 32)]:  # two clips
        frames = smooth_frames(3, *size, seed=size[0])
        task = task_of(frames, target="a watercolor fox")
        metric = PickScore(scorer=scorer)
        assert metric(frames, task)["pick_score"] == pytest.approx(reference_pickscore(scorer, frames, task.target_prompt),
                                                                   abs=1e-5)
    assert metric.higher_is_better and "logit_scale" in metric.convention and metric.models(task)["pick_score_tiny"]
    with pytest.raises(MetricError, match="target_prompt"):
        metric(frames, task_of(frames, target=""))


def test_pick_score_loads_its_hub_ids_from_the_hugging_face_cache(hf_home):
    from transformers import CLIPImageProcessor, CLIPProcessor

    from vedit.backbones.tokenizer import clip_tokenizer
    from vedit.metrics.pick_score import PICKSCORE_MODEL, PICKSCORE_PROCESSOR, PickScore, tiny_pickscore

    with pytest.raises(MetricError, match=r"yuvalkirstain/PickScore_v1|CLIP-ViT-H-14.*HF_HOME"):
        PickScore()(smooth_frames(2, 32, 32), task_of(smooth_frames(2, 32, 32)))
    tiny = tiny_pickscore(seed=4)
    tiny.model.save_pretrained(hf_home(PICKSCORE_MODEL))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=clip_tokenizer())
    processor.save_pretrained(hf_home(PICKSCORE_PROCESSOR))
    frames = smooth_frames(3, 48, 40)
    task = task_of(frames, target="a red bird")
    metric = PickScore()  # the paper path: V2VBench's ids
    assert metric(frames, task)["pick_score"] == pytest.approx(PickScore(scorer=tiny)(frames, task)["pick_score"],
                                                               abs=1e-5)
    assert metric.config(task)["model"] == PICKSCORE_MODEL and metric.scorer.preprocessing.reference == "transformers"


# --- LAION aesthetic predictor ---------------------------------------------------------------------------

def seeded_head(width, seed=0):
    from vedit.metrics.aesthetic import aesthetic_head

    torch.manual_seed(seed)
    return aesthetic_head(width)


def hand_aesthetic(head, emb):
    """The head as five affine maps with no activation between them (dropout off), on normalised embeddings."""
    x = F.normalize(emb, dim=-1).double()
    for i in (0, 2, 4, 6, 7):
        x = x @ head[i].weight.double().T + head[i].bias.double()
    return x.mean().item()


def test_aesthetic_score_is_the_linear_head_on_the_normalised_clip_embedding():
    from vedit.metrics.aesthetic import AestheticScore

    clip = tiny_clip(seed=5)
    head = seeded_head(32)
    assert [type(m).__name__ for m in head] == ["Linear", "Dropout"] * 3 + ["Linear", "Linear"]
    for size in [(40, 56), (32, 32)]:
        frames = smooth_frames(4, *size, seed=size[1])
        with torch.no_grad():
            emb = clip.model.encode_image(clip.preprocess(frames))
        value = AestheticScore(clip, head=head)(frames, task_of(frames))["aesthetic_score"]
        assert value == pytest.approx(hand_aesthetic(head, emb), abs=1e-5)
    with pytest.raises(MetricError, match="32-d.*ViT-L/14"):
        AestheticScore(clip, head=seeded_head(768))(frames, task_of(frames))


def test_aesthetic_head_loads_from_the_hub_repo_in_the_cache_or_a_local_laion_file(hf_home, tmp_path):
    from safetensors.torch import save_file

    from vedit.metrics.aesthetic import AESTHETIC_MODEL, AestheticScore, load_aesthetic_head

    with pytest.raises(MetricError, match=r"aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE.*HF_HOME"):
        load_aesthetic_head()
    head = seeded_head(32, seed=1)
    laion = {f"layers.{k}": v for k, v in head.state_dict().items()}  # the released head's keys
    # the Hub repo holds the CLIP tower too (vision_model.*, visual_projection.*): only layers.* are read
    save_file({**laion, "visual_projection.weight": torch.zeros(32, 32)}, str(hf_home(AESTHETIC_MODEL) / "model.safetensors"))
    torch.save(laion, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    clip = tiny_clip(seed=6)
    frames = smooth_frames(3, 36, 44)
    expected = AestheticScore(clip, head=head)(frames, task_of(frames))["aesthetic_score"]
    for source in (AESTHETIC_MODEL, str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")):
        metric = AestheticScore(clip, head=source)
        assert metric(frames, task_of(frames))["aesthetic_score"] == pytest.approx(expected, abs=1e-6)
        assert metric.config(task_of(frames))["head"] == source
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(MetricError, match="layers"):
        load_aesthetic_head(str(tmp_path / "other.pth"))


# --- DINOv2 object consistency ---------------------------------------------------------------------------

def test_dino_consistency_is_v2vbenchs_pooled_cls_cosine_over_consecutive_frames():
    from vedit.metrics.dino import DinoConsistency, tiny_dino

    encoder = tiny_dino(seed=0)
    proc = BitProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, **IMAGENET)
    for size in [(40, 56), (48, 48)]:  # two clips
        frames = smooth_frames(4, *size, seed=size[0] + 1)
        pixels = torch.from_numpy(np.concatenate([np.asarray(proc(pil(f), return_tensors="np")["pixel_values"])
                                                  for f in frames]))
        with torch.no_grad():
            feats = F.normalize(encoder.model(pixel_values=pixels).pooler_output, dim=-1)
        expected = np.mean([max(0.0, float(feats[t] @ feats[t + 1])) for t in range(3)])
        metric = DinoConsistency(encoder=encoder)
        assert metric(frames, task_of(frames))["dino_consistency"] == pytest.approx(expected, abs=1e-6)
    static = frames[:1].expand(4, -1, -1, -1).clone()
    assert metric(static, task_of(static))["dino_consistency"] == pytest.approx(1.0, abs=1e-6)
    assert metric.higher_is_better and "pooler_output" in metric.convention
    with pytest.raises(MetricError, match="at least 2"):
        metric(frames[:1], task_of(frames[:1]))


def test_dino_loads_facebook_dinov2_base_from_the_hugging_face_cache(hf_home):
    from transformers import BitImageProcessor

    from vedit.metrics.dino import DINO_MODEL, DinoConsistency, tiny_dino

    frames = smooth_frames(3, 40, 48)
    with pytest.raises(MetricError, match=r"facebook/dinov2-base.*HF_HOME"):
        DinoConsistency()(frames, task_of(frames))
    tiny = tiny_dino(seed=2)
    folder = hf_home(DINO_MODEL)
    tiny.model.save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, **IMAGENET).save_pretrained(folder)
    metric = DinoConsistency()
    value = metric(frames, task_of(frames))["dino_consistency"]
    assert value == pytest.approx(DinoConsistency(encoder=tiny)(frames, task_of(frames))["dino_consistency"], abs=1e-6)
    assert metric.encoder.preprocessing.mean == tuple(IMAGENET["image_mean"]) and metric.encoder.preprocessing.size == 36


# --- presets ---------------------------------------------------------------------------------------------

def test_presets_follow_their_benchmark():
    import os

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.abspath("conf"), version_base=None):
        v2v = compose("config", overrides=["metrics=v2vbench"]).metrics
        tgve = compose("config", overrides=["metrics=tgve"]).metrics
        p2v = compose("config", overrides=["metrics=pix2video"]).metrics
    assert v2v.clip.preprocess == "transformers" and v2v.clip.square is None
    assert {"clip_consistency", "pick_score", "aesthetic_score", "dino_consistency", "motion_alignment"} <= set(v2v.names)
    assert "clip_image" not in v2v.names
    assert tgve.clip.preprocess == "transformers" and tgve.clip.square == 480 and tgve.options.pick_score.square == 480
    assert p2v.options.warp_mse.direction == "t->t+1" and p2v.options.warp_mse.size == 512
    for name in ("clip_consistency", "pick_score", "aesthetic_score", "dino_consistency"):
        cls = METRICS.get(name)
        assert isinstance(cls.higher_is_better, bool) and cls.__doc__


def test_leaderboard_rows_of_other_preprocessing_are_labelled_apart():
    frames = smooth_frames(2, 32, 32)
    task = task_of(frames)
    default = METRICS.get("clip_text")(tiny_clip()).models(task)["clip"]
    tgve = METRICS.get("clip_text")(tiny_clip(preprocess="transformers", square=480)).models(task)["clip"]
    assert default == "tiny-clip-0" and tgve == "tiny-clip-0 (transformers preprocessing, frames 480x480)"


def test_the_kept_features_do_not_keep_the_video_alive():
    import gc
    import weakref

    clip = tiny_clip(seed=7)
    frames = smooth_frames(3, 32, 32)
    clip.encode_images(frames)
    ref = weakref.ref(frames)
    del frames
    gc.collect()
    assert ref() is None


def hf_vision_of(clip):
    """transformers' CLIPVisionModelWithProjection holding the weights of a (tiny) open_clip image tower."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    visual = clip.model.visual
    sd = visual.state_dict()
    width, layers = sd["class_embedding"].shape[0], len(visual.transformer.resblocks)
    config = CLIPVisionConfig(hidden_size=width, intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                              num_hidden_layers=layers, num_attention_heads=visual.transformer.resblocks[0].attn.num_heads,
                              image_size=clip.image_size[0], patch_size=sd["conv1.weight"].shape[-1],
                              projection_dim=sd["proj"].shape[1], hidden_act="quick_gelu", layer_norm_eps=1e-5)
    out = {"vision_model.embeddings.patch_embedding.weight": sd["conv1.weight"],
           "vision_model.embeddings.class_embedding": sd["class_embedding"],
           "vision_model.embeddings.position_embedding.weight": sd["positional_embedding"],
           "visual_projection.weight": sd["proj"].T}
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for p in ("weight", "bias"):
            out[f"vision_model.{theirs}.{p}"] = sd[f"{ours}.{p}"]
    for i in range(layers):
        a, b = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for p in ("weight", "bias"):
            q, k, v = sd[f"{a}attn.in_proj_{p}"].chunk(3)
            out.update({f"{b}self_attn.q_proj.{p}": q, f"{b}self_attn.k_proj.{p}": k, f"{b}self_attn.v_proj.{p}": v,
                        f"{b}self_attn.out_proj.{p}": sd[f"{a}attn.out_proj.{p}"],
                        f"{b}layer_norm1.{p}": sd[f"{a}ln_1.{p}"], f"{b}layer_norm2.{p}": sd[f"{a}ln_2.{p}"],
                        f"{b}mlp.fc1.{p}": sd[f"{a}mlp.c_fc.{p}"], f"{b}mlp.fc2.{p}": sd[f"{a}mlp.c_proj.{p}"]})
    model = CLIPVisionModelWithProjection(config).eval()
    missing, unexpected = model.load_state_dict(out, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return model


@pytest.mark.parametrize("size", [(40, 56), (32, 32)])
def test_v2vbench_and_tgve_features_equal_transformers_clip_on_the_same_weights(size):
    """V2VBench's clip_consistency.py path (CLIPImageProcessor on PIL frames, CLIPVisionModel.pooler_output)
    and TGVE's get_image_features, run by transformers on the tiny tower's weights: vedit's features."""
    clip = tiny_clip(seed=8, embed_dim=16, preprocess="transformers")
    hf = hf_vision_of(clip)
    frames = smooth_frames(4, *size, seed=9)
    proc = CLIPProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixels = torch.from_numpy(np.concatenate([np.asarray(proc(pil(f), return_tensors="np")["pixel_values"])
                                              for f in frames]))
    with torch.no_grad():
        pooled = hf.vision_model(pixel_values=pixels).pooler_output
        projected = hf.visual_projection(pooled)
    torch.testing.assert_close(clip.encode_images(frames, pooled=True), F.normalize(pooled, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(clip.encode_images(frames), F.normalize(projected, dim=-1), atol=1e-5, rtol=0)
    p = F.normalize(pooled, dim=-1)
    v2vbench = np.mean([max(0.0, float(p[t] @ p[t - 1])) for t in range(1, 4)])  # as clip_consistency.py loops
    out = METRICS.get("clip_consistency")(clip)(frames, task_of(frames))["clip_consistency"]
    assert out == pytest.approx(v2vbench, abs=1e-5)
