"""TokenFlow editor on the tiny SD 2.1 backbone (CPU, float64 where outputs are compared)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import shared_path
from hydra import compose, initialize_config_dir

from vedit.backbones import build_backbone
from vedit.editors.tokenflow import (TokenFlowEditor, _resnet_injection, _Tokens, epsilon, keyframe_pairs,
                                     keyframe_schedule, propagate_tokens)
from vedit.errors import EditorError
from vedit.ops.ddim import DDIM, classifier_free_guidance
from vedit.registry import EDITORS
from vedit.run import CONF_DIR, run
from vedit.task import EditTask
from vedit.video import Video, VideoError

REPO = Path(__file__).resolve().parents[1]
STEPS = 3


@pytest.fixture(scope="module")
def bb64():
    return build_backbone("tiny", "sd21", dtype="float64")


def random_task(frames: int = 10, seed: int = 0, identical: bool = False) -> EditTask:
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(frames, 3, 64, 64, generator=g)
    if identical:
        video = video[:1].repeat(frames, 1, 1, 1)
    return EditTask(Video(video, 10.0, f"random{seed}"), "a red square", "a blue circle", seed=seed)


def moving_task(frames: int = 10) -> EditTask:
    """A smooth pattern panning right by 2 pixels per frame."""
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    video = torch.stack([torch.stack([0.5 + 0.4 * torch.sin((xs - 2 * t) / 5 + c) * torch.cos(ys / 7)
                                      for c in range(3)]) for t in range(frames)])
    return EditTask(Video(video, 10.0, "moving"), "a pattern", "a pattern in winter", seed=1)


def editor(bb, **kw) -> TokenFlowEditor:
    """STEPS sampling steps, inverted with as many (the default, 500, is tested on its own)."""
    return TokenFlowEditor(bb, **{"steps": STEPS, "inversion_steps": None, **kw})


# ---- propagation, key frames and pairs: constructed known answers -------------------------------

def test_propagated_tokens_are_the_weighted_outputs_at_the_known_matches():
    g = torch.Generator().manual_seed(0)
    n_tok, c = 12, 6
    key_a = torch.randn(n_tok, c, generator=g, dtype=torch.float64)
    sigma = torch.randperm(n_tok, generator=g)
    key_feats = torch.stack([key_a, key_a[sigma]])  # key frame b holds a's tokens permuted by sigma
    key_out = torch.randn(3, 2, n_tok, 5, generator=g, dtype=torch.float64)  # 3 branches
    perms = [torch.randperm(n_tok, generator=g) for _ in range(3)]
    scale = torch.rand(n_tok, 1, generator=g, dtype=torch.float64) + 0.1  # cosine: a positive scale changes nothing
    feats = torch.stack([key_a[p] * scale for p in perms])
    pair_a, pair_b = torch.tensor([0, 1, 0]), torch.tensor([1, 1, 0])
    weight = torch.tensor([0.75, 1.0, 0.3], dtype=torch.float64)
    out = propagate_tokens(feats, key_feats, key_out, pair_a, pair_b, weight)
    inv_sigma = torch.argsort(sigma)
    where = {0: lambda p: p, 1: lambda p: inv_sigma[p]}  # token index in key frame k of key_a's token p
    for f in range(3):
        a, b, w = int(pair_a[f]), int(pair_b[f]), float(weight[f])
        expected = w * key_out[:, a, where[a](perms[f])] + (1 - w) * key_out[:, b, where[b](perms[f])]
        torch.testing.assert_close(out[:, f], expected, rtol=1e-12, atol=1e-12)


def test_keyframes_one_per_batch_seeded():
    fixed = keyframe_schedule(20, 8, 3, "fixed")
    assert fixed.tolist() == [[4, 12, 18]] * 3  # batch centres; the last batch has 4 frames
    draw = lambda seed: keyframe_schedule(20, 8, 50, "random", torch.Generator().manual_seed(seed))  # noqa: E731
    keys = draw(0)
    assert keys.shape == (50, 3) and torch.equal(keys, draw(0)) and not torch.equal(keys, draw(1))
    for b, (lo, hi) in enumerate([(0, 8), (8, 16), (16, 20)]):
        assert ((keys[:, b] >= lo) & (keys[:, b] < hi)).all()
        assert len(set(keys[:, b].tolist())) == hi - lo  # 50 draws reach every frame of the batch


def test_keyframe_pairs_nearest_and_released():
    keys = torch.tensor([4, 12, 18])
    a, b, w = keyframe_pairs(keys, 20, 8, "nearest")
    table = {f: (int(a[f]), int(b[f]), float(w[f])) for f in range(20)}
    assert table[0] == (0, 0, 1.0) and table[4] == (0, 0, 1.0)  # before/at the first key frame
    assert table[6] == (0, 1, 0.75) and table[10] == (0, 1, 0.25)  # 2 and 6 frames from key frames 4 and 12
    assert table[12] == (1, 1, 1.0) and table[15] == (1, 2, 0.5) and table[19] == (2, 2, 1.0)
    a, b, w = keyframe_pairs(keys, 20, 8, "released")
    assert (int(a[3]), int(b[3]), float(w[3])) == (0, 0, 1.0)  # batch 0: its own key frame only
    # frame 10, batch 1: centres 12 (own) and 4 (previous batch) at distances 2 and 6
    assert (int(a[10]), int(b[10])) == (1, 0)
    assert float(w[10]) == pytest.approx(torch.sigmoid(torch.tensor(0.75)).item())
    assert (int(a[17]), int(b[17])) == (2, 1)


def test_released_pairing_weights_known_answer():
    """The released TokenFlowBlock: frame s of batch b blends the key frames of batches b and b-1 with
    w = sigmoid(d2 / (d1 + d2)), d1, d2 = |s - centre of b|, |s - centre of b-1| (centres 4, 12, 20).
    Batch 1 (frames 8..15): d1 = 4, 3, 2, 1, 0, 1, 2, 3 and d2 = 4..11."""
    keys = torch.tensor([1, 14, 17])  # drawn key frames; the weights depend on the batch centres only
    a, b, w = keyframe_pairs(keys, 24, 8, "released")
    ratios = torch.tensor([4 / 8, 5 / 8, 6 / 8, 7 / 8, 8 / 8, 9 / 10, 10 / 12, 11 / 14], dtype=torch.float64)
    expected = torch.cat([torch.ones(8, dtype=torch.float64), torch.sigmoid(ratios), torch.sigmoid(ratios)])
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=1e-12)
    assert a.tolist() == [0] * 8 + [1] * 8 + [2] * 8 and b.tolist() == [0] * 8 + [0] * 8 + [1] * 8
    assert 0.62 < float(w[8:].min()) < 0.623 and 0.731 < float(w[8:].max()) < 0.732  # own key frame weighs more


def test_non_key_frame_attention_output_is_the_blend_of_its_key_frames_at_matched_tokens(bb64):
    """In the UNet: record one self-attention layer's input and output in the key and propagation passes."""
    task = moving_task(frames=16)
    layer = "up_blocks.2.attentions.1.transformer_blocks.0.attn1"
    calls = []
    handle = bb64.unet.get_submodule(layer).register_forward_hook(
        lambda m, args, out: calls.append((args[0].clone(), out.clone())))
    try:
        editor(bb64, steps=2, keyframes="fixed", pairing="nearest").edit(task)  # key frames 4 and 12
    finally:
        handle.remove()
    (key_in, key_out), (prop_in, prop_out) = calls[2:4]  # calls 0-1: inversion; then step 0
    key_src, key_out = key_in[:2], key_out.unflatten(0, (3, 2))
    feats, prop_out = prop_in[:16], prop_out.unflatten(0, (3, 16))

    def match(f, k):  # nearest key-frame token per token, by cosine similarity, written independently
        d = torch.cdist(F.normalize(feats[f], dim=-1), F.normalize(key_src[k], dim=-1))
        return d.argmin(dim=-1)

    for f, parts in {6: [(0, 0.75), (1, 0.25)], 9: [(0, 0.375), (1, 0.625)], 2: [(0, 1.0)], 14: [(1, 1.0)]}.items():
        expected = sum(w * key_out[:, k, match(f, k)] for k, w in parts)
        torch.testing.assert_close(prop_out[:, f], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(prop_out[:, 4], key_out[:, 0], rtol=1e-10, atol=1e-10)  # key frames keep their tokens
    assert (prop_out[1, 6] - prop_out[2, 6]).abs().max() > 1e-3  # every branch propagated, not one copied


# ---- whole edits ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{}, {"pairing": "nearest", "propagation": False}, {"variant": "sdedit"},
                                {"inversion_steps": 9}])
def test_identical_frames_edit_identically(bb64, kw):
    frames = editor(bb64, **kw).edit(random_task(frames=10, identical=True)).frames
    for f in range(1, 10):
        torch.testing.assert_close(frames[f], frames[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("propagation", [True, False])
def test_key_frame_without_injection_equals_plain_per_frame_editing(bb64, propagation):
    """One batch, fixed key frame 2: with no PnP its edit is plain DDIM inversion (empty prompt) + CFG sampling."""
    task = random_task(frames=4, seed=3)
    ed = editor(bb64, keyframes="fixed", pnp=False, propagation=propagation, negative_prompt="blurry")
    result = ed.edit(task)
    assert result.info["keyframes"] == [[2]] * STEPS
    unet, ddim = bb64.unet, DDIM(bb64.scheduler(), STEPS)
    empty, negative, target = bb64.encode_prompt(["", "blurry", task.target_prompt]).chunk(3)
    x0 = bb64.encode_images(task.video.frames[2:3])
    x_t = ddim.invert(x0, lambda x, t, i: unet(x, t, encoder_hidden_states=empty).sample)[0]

    def guided(x, t, i):
        eps = unet(x.repeat(2, 1, 1, 1), t, encoder_hidden_states=torch.cat([negative, target])).sample
        return classifier_free_guidance(eps, 7.5)

    expected = bb64.decode_latents(ddim.sample(x_t, guided)).float()[0]
    assert expected.std() > 0.01
    torch.testing.assert_close(result.frames[2], expected, rtol=1e-6, atol=1e-6)
    assert (result.frames[0] - result.frames[2]).abs().max() > 1e-3  # the other frames are not copies


def test_resnet_injection_copies_source_rows_while_active(bb64):
    tokens, unet = _Tokens(), bb64.unet
    conv = unet.get_submodule("up_blocks.1.resnets.1").conv2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64)
    emb = torch.randn(6, 77, 32, generator=g, dtype=torch.float64)
    seen = []
    with _resnet_injection(unet, tokens):
        handle = conv.register_forward_hook(lambda m, a, out: seen.append(out.clone()))  # runs after the injection
        for active in (True, False):
            tokens.inject_resnet = active
            unet(x, 10, encoder_hidden_states=emb)
        handle.remove()
    on, off = (s.unflatten(0, (3, 2)) for s in seen)
    assert torch.equal(on[1], on[0]) and torch.equal(on[2], on[0])
    assert (off[1] - off[0]).abs().max() > 1e-3
    assert not conv._forward_hooks  # removed after the block


@pytest.mark.parametrize("switch", [
    {"propagation": False}, {"pnp": False}, {"keyframes": "fixed"}, {"pairing": "nearest"},
    {"pnp_f_t": 0.0}, {"pnp_attn_t": 0.0}, {"variant": "sdedit"}, {"inversion_prompt": None},
])
def test_switches_change_the_edit(bb64, default_edit, switch):
    changed = editor(bb64, **switch).edit(moving_task(frames=10)).frames
    assert (changed - default_edit.frames).abs().max() > 1e-4


@pytest.fixture(scope="module")
def default_edit(bb64):
    return editor(bb64).edit(moving_task(frames=10))


def test_seed_draws_the_key_frames(bb64, default_edit):
    task = moving_task(frames=10)
    again = editor(bb64).edit(task)
    torch.testing.assert_close(again.frames, default_edit.frames, rtol=0, atol=0)
    task.seed = 7
    assert editor(bb64).edit(task).info["keyframes"] != default_edit.info["keyframes"]


def test_inversion_keeps_the_latents_at_the_sampling_timesteps(bb64):
    x0 = bb64.encode_images(random_task(frames=2).video.frames)
    emb = bb64.encode_prompt([""]).expand(2, -1, -1)
    eps = lambda x, t, i: bb64.unet(x, t, encoder_hidden_states=emb).sample  # noqa: E731
    for inversion_steps, kept in ((None, [0, 1, 2, 3]), (8, [1, 3, 5, 7])):  # 4 steps: t = 751, 501, 251, 1
        ed = TokenFlowEditor(bb64, steps=4, inversion_steps=inversion_steps)
        inv = DDIM(bb64.scheduler(), ed.inversion_steps)
        assert [int(inv.timesteps[k]) for k in kept] == [751, 501, 251, 1]
        reference = inv.invert(x0, eps)
        trajectory, noisiest = ed.invert(x0, emb[:1])
        torch.testing.assert_close(trajectory, torch.stack([reference[k] for k in kept] + [x0]))
        torch.testing.assert_close(noisiest, reference[0])  # t = 751 (4 steps), 876 (8 steps)
    with pytest.raises(EditorError, match="inversion_steps=6"):
        TokenFlowEditor(bb64, steps=4, inversion_steps=6).invert(x0, emb[:1])


def test_default_inversion_is_the_released_500_steps_through_the_50_sampling_timesteps(bb64):
    ed = TokenFlowEditor(bb64)
    assert (ed.inversion_steps, ed.steps, ed.pairing, ed.start_latent) == (500, 50, "released", "released")
    inv, sampling = DDIM(bb64.scheduler(), 500).timesteps.tolist(), DDIM(bb64.scheduler(), 50).timesteps.tolist()
    assert inv[:2] == [999, 997] and inv[-1] == 1 and set(sampling) <= set(inv)  # 981, 961, ..., 1 all kept
    assert ed.noisiest_timestep() == 999


def test_inversion_runs_its_steps_once_per_video_and_prompt(bb64):
    """UNet calls: 9 inversion steps (all frames in one call) + 2 per sampling step; a second target
    prompt on the video reads the cached inversion and runs the sampling calls only."""
    task, cache, calls = random_task(frames=3), {}, []
    handle = bb64.unet.register_forward_pre_hook(lambda m, args: calls.append(1))
    try:
        ed = editor(bb64, inversion_steps=9, latent_cache=cache)
        first = ed.edit(task)
        n_first = len(calls)
        task.target_prompt = "a green triangle"
        second = ed.edit(task)
    finally:
        handle.remove()
    assert n_first == 9 + 2 * STEPS and len(calls) - n_first == 2 * STEPS
    assert (first.info["inversion_steps"], second.info["inversion_steps"]) == (9, 0)
    assert not first.info["inversion_cached"] and second.info["inversion_cached"] and len(cache) == 1
    (key, entry), = cache.items()
    assert entry["trajectory"].shape == (STEPS + 1, 3, 4, 8, 8) and entry["noisiest"].shape == (3, 4, 8, 8)
    assert task.video.content_hash() in key and 9 in key
    task.target_prompt = "a blue circle"
    torch.testing.assert_close(ed.edit(task).frames, first.frames, rtol=0, atol=0)  # cached == fresh


@pytest.mark.parametrize("start_latent", ["released", "inverted"])
def test_start_latent_is_the_clean_latent_renoised_with_the_noisiest_inversion_noise(bb64, start_latent):
    """3 sampling steps (t = 667, 334, 1) inverted with 9 (noisiest t = 889): the released code's
    get_ddim_eps + scheduler.add_noise, written with diffusers' DDIMScheduler."""
    task, cache, seen = random_task(frames=2, seed=4), {}, []
    handle = bb64.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        result = editor(bb64, inversion_steps=9, latent_cache=cache, start_latent=start_latent).edit(task)
    finally:
        handle.remove()
    assert TokenFlowEditor(bb64, steps=3, inversion_steps=9).noisiest_timestep() == 889
    (entry,) = cache.values()
    x0, noisiest = entry["trajectory"][-1], entry["noisiest"]
    scheduler = bb64.scheduler()
    a = scheduler.alphas_cumprod.double()
    eps = (noisiest - a[889] ** 0.5 * x0) / (1 - a[889]) ** 0.5
    released = scheduler.add_noise(x0, eps, torch.tensor([667]))
    expected = released if start_latent == "released" else entry["trajectory"][0]
    key = result.info["keyframes"][0][0]
    key_pass = seen[9]  # after 9 inversion calls: rows [source; uncond; cond] of the one key frame
    torch.testing.assert_close(key_pass[1:2], expected[key:key + 1], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(key_pass[0:1], entry["trajectory"][0][key:key + 1])  # the source row
    assert (released - entry["trajectory"][0]).abs().max() > 1e-3  # the two rules differ here


def test_sdedit_starts_where_the_released_code_does(bb64):
    timesteps = list(range(50))
    released = len(timesteps[int(1 - 0.9 * len(timesteps)):])  # the released slicing: 44 steps
    assert TokenFlowEditor(bb64, variant="sdedit").first_step() == 50 - released == 6
    assert TokenFlowEditor(bb64, variant="sdedit", sdedit_start=0.5, steps=20).first_step() == 20 - 9
    assert TokenFlowEditor(bb64).first_step() == 0


def test_epsilon_from_every_prediction_type():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    a = 0.3
    x_t = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    v = a**0.5 * eps - (1 - a) ** 0.5 * x0
    for kind, out in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        torch.testing.assert_close(epsilon(out, x_t, a, kind), eps)
    with pytest.raises(EditorError, match="prediction_type='flow'"):
        epsilon(eps, x_t, a, "flow")


def test_paper_backbone_takes_the_prediction_type_from_the_checkpoint(tmp_path):
    """A local SD 2.1-layout checkpoint (tiny components) whose scheduler predicts v."""
    from diffusers import DDIMScheduler

    tiny = build_backbone("tiny", "sd21")
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        getattr(tiny, name).save_pretrained(tmp_path / name)
    DDIMScheduler.from_config({**tiny.scheduler_config, "prediction_type": "v_prediction"}).save_pretrained(
        tmp_path / "scheduler")
    paper = build_backbone("paper", "sd21", paths={n: str(tmp_path / n) for n in
                                                   ("unet", "vae", "text_encoder", "tokenizer", "scheduler")})
    assert paper.scheduler().config.prediction_type == "v_prediction"
    ed = editor(paper, steps=2)
    assert ed.prediction_type == "v_prediction"
    assert torch.isfinite(ed.edit(random_task(frames=3)).frames).all()
    assert tiny.scheduler_config["prediction_type"] == "epsilon"


# ---- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,allowed", [
    ("variant", "controlnet", "pnp | sdedit"), ("pnp_f_t", 1.5, r"\[0, 1\]"), ("batch_size", 0, ">= 1"),
    ("keyframes", "every", "random | fixed"), ("unet_batch", 0, "null"), ("guidance_scale", 0.5, ">= 1.0"),
    ("attention_kernels", "flash", "a non-empty list of"),
])
def test_bad_params_name_key_value_and_range(bb64, key, value, allowed):
    with pytest.raises(EditorError, match=f"{key}={value!r}.*{allowed}"):
        TokenFlowEditor(bb64, **{key: value})


def test_wrong_backbone_and_one_frame_video_are_refused(bb64):
    with pytest.raises(EditorError, match="sd21"):
        editor(build_backbone("tiny", "sd2-depth")).edit(random_task(frames=2))
    with pytest.raises((EditorError, VideoError), match="random0"):
        editor(bb64).edit(random_task(frames=1))


# ---- registry, config and runner -----------------------------------------------------------------

def test_registry_and_config_agree():
    assert EDITORS.get("tokenflow") is TokenFlowEditor
    conf = yaml.safe_load((REPO / "conf/method/tokenflow.yaml").read_text())
    assert conf["name"] == "tokenflow" and conf["family"] == "sd21"
    p = conf["params"]
    assert (p["variant"], p["steps"], p["guidance_scale"], p["batch_size"]) == ("pnp", 50, 7.5, 8)
    assert (p["pnp_f_t"], p["pnp_attn_t"], p["inversion_prompt"]) == (0.8, 0.5, "")
    ed = TokenFlowEditor(build_backbone("tiny", "sd21"), **p)
    assert ed.inversion_steps == 500 and ed.negative_prompt.startswith("ugly")
    assert (ed.pairing, ed.start_latent) == ("released", "released")
    assert len(ed.pnp_layers) == len([n for n in ed.layer_names if n.startswith("up_blocks.")]) - 1


def _run(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["method=tokenflow", "backbone=tiny", "metrics=tiny",
                                           "method.params.steps=2", "method.params.inversion_steps=4",
                                           f"store_dir={tmp_path / 'store'}",
                                           f"cache_dir={tmp_path / 'cache'}", *overrides])
    return run(cfg)


def test_run_on_synthetic_inverts_once_for_two_prompts(tmp_path):
    summary = _run(tmp_path, "data=synthetic", "data.num_videos=1", "data.num_frames=10", "prompts_per_video=2")
    assert summary.failed == 0, [r.get("error") for r in summary.records]
    first, second = summary.records
    assert first["backbone_kind"] == "tiny" and first["num_frames"] == 10
    assert set(first["metrics"]) >= {"clip_text", "clip_image", "frame_acc", "warp_mse"}
    assert not first["editor_info"]["inversion_cached"] and second["editor_info"]["inversion_cached"]


def test_run_on_davis_mini(tmp_path):
    root, clips = shared_path("data", "davis-mini"), shared_path("data", "clips", "clips.yaml")
    summary = _run(tmp_path, "data=davis", f"data.root={root}", f"data.prompts={clips}", "data.sequences=[blackswan]",
                   "data.transform.size=[64,64]", "data.transform.max_frames=9", "prompts_per_video=1")
    assert summary.failed == 0, [r.get("error") for r in summary.records]
    rec, = summary.records
    assert rec["video"] == "blackswan" and rec["num_frames"] == 9
    assert set(rec["metrics"]) >= {"clip_text", "clip_image", "warp_mse"}


def test_unknown_param_is_named_with_a_suggestion_before_any_model_is_built():
    from vedit.editors.params import ParamError

    with pytest.raises(ParamError, match="pnp_attn is unknown, did you mean 'pnp_attn_t'"):
        TokenFlowEditor.check_params({"pnp_attn": 0.5})
