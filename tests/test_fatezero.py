"""FateZero editor on the tiny SD v1-4 backbone (CPU, float64 where outputs are compared)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vedit.backbones import build_backbone
from vedit.backbones.tokenizer import clip_tokenizer
from vedit.editors.fatezero import (FateZeroAttnProcessor, FateZeroEditor, _Fusion, align_tokens, blend_mask,
                                    refinement_mapper, replacement_mapper, word_indices)
from vedit.editors.params import ParamError
from vedit.errors import EditorError
from vedit.ops.ddim import DDIM
from vedit.registry import EDITORS
from vedit.run import CONF_DIR, run
from vedit.task import EditTask
from vedit.video import Video

REPO = Path(__file__).resolve().parents[1]
STEPS = 3


@pytest.fixture(scope="module")
def bb64():
    return build_backbone("tiny", "sd14", dtype="float64")


def random_task(frames: int = 5, seed: int = 0, identical: bool = False, target: str = "a blue circle") -> EditTask:
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(frames, 3, 64, 64, generator=g)
    if identical:
        video = video[:1].repeat(frames, 1, 1, 1)
    return EditTask(Video(video, 10.0, f"random{seed}"), "a red square", target, seed=seed)


def editor(bb, **kw) -> FateZeroEditor:
    return FateZeroEditor(bb, **{"steps": STEPS, **kw})


def tokens_of(word: str) -> list[int]:
    return clip_tokenizer()(word, add_special_tokens=False).input_ids


# ---- word alignment: constructed known answers -------------------------------------------------

def test_alignment_marks_inserted_tokens_and_keeps_the_order():
    assert align_tokens([1, 2, 3], [1, 9, 2, 3]) == [0, -1, 1, 2]
    assert align_tokens([1, 2, 3], [1, 2, 3]) == [0, 1, 2]
    assert align_tokens([1, 5, 3], [1, 7, 3]) == [0, -1, 2]  # gaps cost 0, a mismatch -1: a swapped token is new
    assert align_tokens([1, 2, 3, 4], [1, 4]) == [0, 3]


def test_refinement_mapper_for_an_inserted_word():
    tok = clip_tokenizer()
    assert len(tokens_of("watercolor")) == 1
    mapper, alphas = refinement_mapper(tok, "a silver jeep", "a watercolor silver jeep")
    # target: <start> a watercolor silver jeep <end> ; source: <start> a silver jeep <end>
    assert mapper[:6].tolist()[:2] == [0, 1] and mapper[3:6].tolist() == [2, 3, 4]
    assert alphas[:6].tolist() == [1, 1, 0, 1, 1, 1]
    assert mapper[6:].tolist() == list(range(6, 77)) and alphas[6:].eq(1).all()


def test_replacement_mapper_moves_a_swapped_word_and_spreads_it_over_its_tokens():
    tok = clip_tokenizer()
    m = replacement_mapper(tok, "a red square", "a blue square")
    assert torch.equal(m, torch.eye(77))  # one token for one token: position to position
    two = next(w for w in ("porsche", "shiba", "corgi", "ukiyo") if len(tokens_of(w)) == 2)
    m = replacement_mapper(tok, "a cat walking", f"a {two} walking")
    assert m[2, 2] == 0.5 and m[2, 3] == 0.5 and m[2].sum() == 1  # cat -> both tokens of the new word
    assert m[0, 0] == 1 and m[1, 1] == 1
    with pytest.raises(EditorError, match="same number of words.*refine"):
        replacement_mapper(tok, "a cat", "a big cat")


def test_word_indices_are_token_positions_of_exact_words():
    tok = clip_tokenizer()
    ids = tok("a silver jeep driving down").input_ids
    assert word_indices(tok, "a silver jeep driving down", ["jeep"]) == [ids.index(tokens_of("jeep")[0])]
    assert word_indices(tok, "a silver jeep driving down", ["jeep", "a"]) == [1, 3]
    assert word_indices(tok, "a silver jeep", ["car"]) == []


def test_controls_fall_back_to_refine_for_prompts_of_different_lengths(bb64):
    ed = editor(bb64, controller="replace", equalizer={"blue": 10.0})
    assert ed.prompt_controls("a red square", "a blue square")["controller"] == "replace"
    c = ed.prompt_controls("a red square", "a blue round square")
    assert c["controller"] == "refine" and c["mapper"].shape == (77,)
    assert c["equalizer"][2] == 10.0 and c["equalizer"].sum() == 76 + 10


# ---- blend mask: constructed attention maps ------------------------------------------------------

def test_blend_mask_pools_resizes_normalises_and_thresholds():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1] = 1.0  # one hot token: its 3x3 neighbourhood after pooling
    maps[1] = 0.1
    maps[1, 3, 3] = 0.2  # twice the rest: only its neighbourhood passes 0.6 of the maximum
    mask = blend_mask(maps, (8, 8), 0.3)
    expected0 = torch.zeros(8, 8)
    expected0[:6, :6] = 1
    assert torch.equal(mask[0], expected0)
    mask = blend_mask(maps, (4, 4), 0.6)
    expected1 = torch.zeros(4, 4)
    expected1[2:, 2:] = 1
    assert torch.equal(mask[1], expected1)
    assert blend_mask(maps, (8, 8), 2.0).sum() == 0  # the released configs' blend_th [2, 2]: no mask


def test_editor_mask_reads_only_the_blend_words_of_the_source(bb64):
    ed = editor(bb64, blend_words=["square"], blend_threshold=0.5)
    tokens = ed.prompt_controls("a red square", "a blue square")["blend_tokens"]
    assert tokens.tolist() == [3]
    f, (h, w) = 2, (8, 8)  # latent 8x8 -> blend maps at the second-lowest level, 2x2
    maps = torch.zeros(f, 4, 77)
    maps[:, 0, 3] = 1.0  # "square" attends to the top-left cell
    maps[:, 3, 2] = 5.0  # "red" (not a blend word) to the bottom-right, more strongly
    masks = ed.masks(maps.half(), tokens, (h, w))
    assert set(masks) == {64, 16, 4, 1}  # every level is fused at this size (fusion_max_tokens 1024)
    full = masks[64].view(f, 8, 8)
    assert full[:, :8, :8].sum() == 2 * 64  # pooled over 3x3 on a 2x2 map: all cells reach the maximum
    maps[:, :, 3] = 0.0
    maps[:, 1, 3] = 1.0
    maps[:, 2, 3] = 0.2
    mask = ed.masks(maps.half(), tokens, (h, w))[4].view(f, 2, 2)
    assert mask.sum() == 2 * 4  # 3x3 pooling spreads the maximum over the 2x2 map


# ---- attention processors: known answers from explicit probabilities -----------------------------

def _explicit(attn, q_in, k_in, v_in):
    """softmax(Q K^T * scale) V per head, then the output projection."""
    h = attn.heads
    q, k, v = (t.view(t.shape[0], h, -1).transpose(0, 1) for t in (attn.to_q(q_in), attn.to_k(k_in), attn.to_v(v_in)))
    p = (q @ k.transpose(1, 2) * attn.scale).softmax(-1)
    return attn.to_out[0]((p @ v).transpose(0, 1).flatten(1)), p, v


@pytest.mark.parametrize("with_mask", [False, True])
def test_fused_self_attention_is_source_probabilities_times_edit_values_of_the_middle_frame(bb64, with_mask):
    attn = bb64.unet.get_submodule("up_blocks.1.attentions.0.transformer_blocks.0.attn1")
    f, n, c = 3, 16, attn.to_q.in_features
    x = torch.randn(3, f, n, c, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    state = _Fusion(f, None)
    state.source, state.cond, state.self_on = 0, 2, True
    mask = (torch.rand(f * n, 1, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    if with_mask:
        state.masks = {n: mask}
    out = FateZeroAttnProcessor("l", state, False, ["mid"], False)(attn, x.flatten(0, 1)).view(3, f, n, -1)
    mid = (f - 1) // 2
    for g in (0, 1):  # source and unconditional rows: plain attention to the middle frame
        for t in range(f):
            torch.testing.assert_close(out[g, t], _explicit(attn, x[g, t], x[g, mid], x[g, mid])[0])
    for t in range(f):
        fused = _explicit(attn, x[0, t], x[0, mid], x[2, mid])[0]
        own = _explicit(attn, x[2, t], x[2, mid], x[2, mid])[0]
        m = mask.view(f, n, 1)[t] if with_mask else 0.0
        torch.testing.assert_close(out[2, t], m * own + (1 - m) * fused)


@pytest.mark.parametrize("kind", ["refine", "replace"])
def test_fused_cross_attention_is_prompt_to_prompt_on_explicit_probabilities(bb64, kind):
    attn = bb64.unet.get_submodule("up_blocks.1.attentions.0.transformer_blocks.0.attn2")
    f, n, c, d = 2, 4, attn.to_q.in_features, attn.to_k.in_features
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, f, n, c, dtype=torch.float64, generator=g)
    ctx = torch.randn(3, 77, d, dtype=torch.float64, generator=g)
    state = _Fusion(f, None)
    state.source, state.cond, state.cross_alpha = 0, 2, 1.0
    if kind == "refine":
        state.mapper = torch.randint(0, 77, (77,), generator=g)
        state.alphas = (torch.rand(77, generator=g) > 0.3).double()
    else:
        state.mapper = torch.rand(77, 77, generator=g, dtype=torch.float64)
    state.equalizer = 1 + torch.rand(77, generator=g, dtype=torch.float64)
    enc = ctx[:, None].expand(3, f, 77, d).flatten(0, 1)
    out = FateZeroAttnProcessor("l", state, True, None, False)(attn, x.flatten(0, 1), enc).view(3, f, n, -1)
    _, p_src, _ = _explicit(attn, x[0].reshape(f * n, c), ctx[0], ctx[0])
    _, p_edit, v_edit = _explicit(attn, x[2].reshape(f * n, c), ctx[2], ctx[2])
    if kind == "refine":
        mixed = p_src[..., state.mapper] * state.alphas + p_edit * (1 - state.alphas)
    else:
        mixed = torch.einsum("hpw,wn->hpn", p_src, state.mapper)
    expected = attn.to_out[0]((mixed * state.equalizer @ v_edit).transpose(0, 1).flatten(1)).view(f, n, -1)
    torch.testing.assert_close(out[2], expected)
    torch.testing.assert_close(out[1], _explicit(attn, x[1].reshape(f * n, c), ctx[1], ctx[1])[0].view(f, n, -1))


def test_fusion_is_the_identity_when_edit_rows_equal_the_source_rows(bb64):
    """Every fused layer of the real UNet at once: with the same latent and prompt in the source and
    edit rows, fusing gives exactly the unfused noise prediction (rows, frames and heads line up), and
    with another latent it changes it."""
    ed = editor(bb64, fusion_max_tokens=None)
    f = 3
    g = torch.Generator().manual_seed(0)
    z = torch.randn(f, 4, 8, 8, dtype=torch.float64, generator=g)
    emb = bb64.encode_prompt(["a red square", "", "a red square"])
    state = _Fusion(f, None)
    state.mapper, state.alphas = refinement_mapper(bb64.tokenizer, "a red square", "a red square")
    t = torch.tensor(500)

    def eps(rows, fuse: bool):
        state.source, state.cond = 0, 2
        state.self_on, state.cross_alpha = fuse, float(fuse)
        with ed._processors(state):
            return ed._unet(torch.cat(rows), t, emb.repeat_interleave(f, dim=0)).view(3, f, 4, 8, 8)

    torch.testing.assert_close(eps([z, z, z], True)[2], eps([z, z, z], False)[2])
    other = torch.randn(f, 4, 8, 8, dtype=torch.float64, generator=g)
    fused, plain = eps([other, z, z], True), eps([other, z, z], False)
    torch.testing.assert_close(fused[:2], plain[:2])  # only the conditional edit rows change
    assert (fused[2] - plain[2]).abs().max() > 1e-4


# ---- the attention store: what the inversion keeps and where the edit reads it -------------------

def test_inversion_records_the_blend_layers_of_every_step_and_the_edit_reads_the_same_calls(bb64):
    ed = editor(bb64, blend_words=["square"], blend_threshold=0.5)
    assert ed.blend_layers == ["down_blocks.2.attentions.0.transformer_blocks.0.attn2",
                               "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
                               "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]
    task = random_task(frames=3)
    calls = []
    hook = bb64.unet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((args[0].clone(), int(args[1]))), with_kwargs=True)
    try:
        source = bb64.encode_prompt([task.source_prompt])
        trajectory, maps = ed.invert(ed.encode_video(task), source)
        inversion_calls = list(calls)
        calls.clear()
        controls = ed.prompt_controls(task.source_prompt, task.target_prompt)
        ed.sample(trajectory, maps, torch.cat([source, *bb64.encode_prompt(["", task.target_prompt]).chunk(2)]),
                  controls)
    finally:
        hook.remove()
    ddim = DDIM(bb64.scheduler(), STEPS)
    assert maps.shape == (STEPS, 3, 4, 77) and maps.dtype == torch.float16
    torch.testing.assert_close(maps.float().sum(-1), torch.ones(STEPS, 3, 4), atol=2e-3, rtol=0)  # probabilities
    # inversion call k runs sampling step i = STEPS-1-k: timestep t_i on the latent one step less noisy
    for k, (x, t) in enumerate(inversion_calls):
        i = STEPS - 1 - k
        assert t == int(ddim.timesteps[i])
        torch.testing.assert_close(x, trajectory[i + 1])
    assert len(calls) == STEPS
    for i, (x, t) in enumerate(calls):  # editing step i: the source rows are that inversion call's input
        assert t == int(ddim.timesteps[i])
        torch.testing.assert_close(x[:3], trajectory[i + 1])
    # the stored maps of step i are the source rows' maps in editing step i
    state = _Fusion(3, ed.fusion_max_tokens)
    state.source, state.record = 0, []
    with ed._processors(state):
        ed._unet(trajectory[2], ddim.timesteps[1], source.expand(3, -1, -1))
    torch.testing.assert_close(maps[1], torch.stack(state.record).float().mean(0).half())


# ---- the whole edit -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_identical_frames_edit_identically(bb64, seed):
    # the posterior mean: a VAE sample draws other noise for every frame (as the released code does)
    frames = editor(bb64, encode="mean", blend_words=["square"], blend_threshold=0.5).edit(
        random_task(frames=4, seed=seed, identical=True)).frames
    for t in range(1, 4):
        torch.testing.assert_close(frames[t], frames[0], atol=1e-6, rtol=0)


def test_edit_without_fusion_and_same_prompt_is_the_ddim_reconstruction(bb64):
    """No fusion, guidance 1, the source prompt: plain DDIM sampling from the inverted noise, computed
    here with diffusers' DDIMScheduler step on the same spatial-temporal UNet."""
    from diffusers import DDIMScheduler

    ed = editor(bb64, cross_replace_steps=0.0, self_replace_steps=0.0, guidance_scale=1.0, encode="mean")
    task = random_task(frames=3, target="a red square")
    source = bb64.encode_prompt([task.source_prompt])
    trajectory, _ = ed.invert(ed.encode_video(task), source)
    sched = DDIMScheduler.from_config(bb64.scheduler_config)
    sched.set_timesteps(STEPS)
    x = trajectory[0]
    with ed._processors(_Fusion(3, None)):
        for t in sched.timesteps:
            x = sched.step(ed._unet(x, t, source.expand(3, -1, -1)), t, x).prev_sample
    expected = bb64.decode_latents(x)
    torch.testing.assert_close(ed.edit(task).frames, expected.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_same_prompt_with_fusion_at_every_step_reproduces_the_reconstruction(bb64, seed):
    """attention_source=reconstruction, the target prompt the source one, self- and cross-attention fused
    at every step in every layer: the edit is the source prompt's guided sampling from the inverted noise,
    i.e. the edit without any fusion."""
    task = random_task(frames=3, seed=seed, target="a red square")
    fused = editor(bb64, attention_source="reconstruction", cross_replace_steps=1.0, self_replace_steps=1.0,
                   fusion_max_tokens=None).edit(task).frames
    plain = editor(bb64, cross_replace_steps=0.0, self_replace_steps=0.0).edit(task).frames
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=0)
    other = editor(bb64, attention_source="reconstruction", cross_replace_steps=1.0, self_replace_steps=1.0,
                   fusion_max_tokens=None).edit(random_task(frames=3, seed=seed)).frames
    assert (other - plain).abs().max() > 1e-4


@pytest.mark.parametrize("kw", [{}, {"self_replace_steps": 0.5, "cross_replace_steps": 0.7}])
def test_recomputed_source_attention_equals_the_released_store_of_every_map(bb64, monkeypatch, kw):
    """benchmarks/perf/bench_fatezero.py's peer keeps every attention map of the inversion, as the released
    code does, and edits from the stored maps; recomputing them in the editing call gives the same edit."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks" / "perf"))
    from bench_fatezero import ReleasedStructure

    task = random_task(frames=4, target="a watercolor red square")
    ours = editor(bb64, steps=4, **kw)
    stored = ReleasedStructure(bb64, steps=4, **kw)
    source, uncond, target = bb64.encode_prompt([task.source_prompt, "", task.target_prompt]).chunk(3)
    controls = ours.prompt_controls(task.source_prompt, task.target_prompt)
    x0 = ours.encode_video(task)
    results = []
    for ed in (ours, stored):
        trajectory, maps = ed.invert(x0, source)
        results.append(ed.sample(trajectory, maps, torch.cat([source, uncond, target]), controls))
    torch.testing.assert_close(results[0], results[1])
    plain = editor(bb64, steps=4, self_replace_steps=0.0, cross_replace_steps=0.0)
    assert (plain.sample(trajectory, None, torch.cat([source, uncond, target]), controls) - results[0]).abs().max() > 1e-3


def test_inversion_is_cached_per_video_and_shared_between_target_prompts(bb64):
    cache: dict = {}
    ed = editor(bb64, latent_cache=cache)
    first = ed.edit(random_task(frames=3))
    second = ed.edit(random_task(frames=3, target="a green circle"))
    assert not first.info["inversion_cached"] and second.info["inversion_cached"] and len(cache) == 1
    again = ed.edit(random_task(frames=3))
    torch.testing.assert_close(again.frames, first.frames)


def test_switches_change_the_edit(bb64):
    task = random_task(frames=3)
    base = editor(bb64).edit(task).frames
    for kw in ({"self_replace_steps": 0.0}, {"cross_replace_steps": 0.0}, {"st_attention": ["first"]},
               {"equalizer": {"blue": 5.0}}, {"encode": "mean"}, {"attention_source": "reconstruction"}):
        assert (editor(bb64, **kw).edit(task).frames - base).abs().max() > 1e-6, kw


# ---- paper weights, bad input, registry and runner ------------------------------------------------

PAPER_SCRIPT = """
import torch
from vedit.backbones import build_backbone
from vedit.editors.fatezero import FateZeroEditor
from vedit.task import EditTask
from vedit.video import Video
bb = build_backbone("paper", "sd14")
assert bb.ids["unet"] == "CompVis/stable-diffusion-v1-4", bb.ids
assert bb.scheduler_config["steps_offset"] == 1
out = FateZeroEditor(bb, steps=2).edit(EditTask(Video(torch.rand(2, 3, 64, 64), 8.0, "v"), "a cat", "a dog"))
assert out.frames.shape == (2, 3, 64, 64) and torch.isfinite(out.frames).all()
print("ok")
"""


def test_paper_backbone_loads_sd14_from_the_hf_cache_offline(tmp_path):
    """backbone=paper reads CompVis/stable-diffusion-v1-4 from a Hugging Face cache laid out as the hub
    writes it (tiny components), with HF_HOME there and the hub offline (a fresh process: the hub reads
    HF_HOME when imported)."""
    from diffusers import PNDMScheduler

    tiny = build_backbone("tiny", "sd14")
    repo = tmp_path / "hub" / "models--CompVis--stable-diffusion-v1-4"
    snapshot = repo / "snapshots" / ("0" * 40)
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        getattr(tiny, name).save_pretrained(snapshot / name)
    PNDMScheduler.from_config(tiny.scheduler_config).save_pretrained(snapshot / "scheduler")  # as v1-4 ships it
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PAPER_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("key,value,allowed", [
    ("controller", "swap", "one of"), ("self_replace_steps", 1.5, r"\[0, 1\]"), ("steps", 0, ">= 1"),
    ("st_attention", ["middle"], "frame offsets"), ("equalizer", {"blue": -1}, "factor >= 0"),
    ("blend_words", [], "non-empty list"), ("fusion_max_tokens", 0, ">= 1"),
])
def test_bad_params_name_key_value_and_range(key, value, allowed):
    with pytest.raises(ParamError, match=f"{re.escape(f'{key}={value!r}')}.*{allowed}"):
        FateZeroEditor.check_params({key: value})


def test_blend_words_missing_from_the_source_prompt_and_wrong_backbone_are_refused(bb64):
    with pytest.raises(EditorError, match="blend_words=\\['jeep'\\].*source prompt"):
        editor(bb64, blend_words=["jeep"], blend_threshold=0.5).edit(random_task(frames=2))
    with pytest.raises(EditorError, match="sd14"):
        editor(build_backbone("tiny", "sd2-depth")).edit(random_task(frames=2))
    with pytest.raises(ParamError, match="blend_word is unknown, did you mean 'blend_words'"):
        FateZeroEditor.check_params({"blend_word": ["cat"]})


def test_registry_and_configs_agree():
    assert EDITORS.get("fatezero") is FateZeroEditor
    conf = yaml.safe_load((REPO / "conf/method/fatezero.yaml").read_text())
    assert conf["name"] == "fatezero" and conf["family"] == "sd14"
    p = conf["params"]
    assert (p["steps"], p["guidance_scale"], p["controller"], p["fusion_max_tokens"]) == (50, 7.5, "refine", 1024)
    assert (p["cross_replace_steps"], p["self_replace_steps"], p["st_attention"]) == (0.8, 0.8, ["mid"])
    ed = FateZeroEditor(build_backbone("tiny", "sd14"), **p)
    assert ed.st_attention == ["mid"]
    assert (len(ed.self_window()), len(ed.cross_window())) == (40, 40)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        attribute = OmegaConf.to_container(compose("config", overrides=["method=fatezero_attribute"]).method)
    assert attribute["name"] == "fatezero" and attribute["params"]["self_replace_steps"] == 0.5
    assert FateZeroEditor(build_backbone("tiny", "sd14"), **attribute["params"]).cross_window() == range(25)


def test_run_on_synthetic_inverts_once_for_two_prompts(tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["method=fatezero", "backbone=tiny", "metrics=tiny", "method.params.steps=2",
                                           f"store_dir={tmp_path / 'store'}", f"cache_dir={tmp_path / 'cache'}",
                                           "data=synthetic", "data.num_videos=1", "data.num_frames=6",
                                           "prompts_per_video=2"])
    summary = run(cfg)
    assert summary.failed == 0, [r.get("error") for r in summary.records]
    first, second = summary.records
    assert first["backbone_kind"] == "tiny" and first["num_frames"] == 6
    assert not first["editor_info"]["inversion_cached"] and second["editor_info"]["inversion_cached"]
