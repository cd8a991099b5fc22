"""PatchMatch, voting and blending: known answers on constructed inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vedit.ops.blend import (_gradients, blend_pair, error_aware_weight, histogram_blend, histogram_match, lab_to_rgb,
                             meanstd_blend, poisson_blend, rgb_to_lab, select_temporal, temporal_weight)
from vedit.ops.patchmatch import (GraphedSearch, Guide, PatchMatch, auto_levels, guided_synthesis, identity_nnf,
                                  occupancy, patch_errors, principal_axes, project_features, selective_vote,
                                  unfold_patches, upsample_nnf, vote, vote_candidates)
from vedit.ops.propagation import propagate_keyframes

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def smooth_texture(size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Random texture with structure at several scales (unique patches, like a natural image)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(1, channels, size, size)
    for cells in (4, 8, 16, 32):
        noise = torch.rand(1, channels, cells, cells, generator=g)
        out += F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False) / 4
    return out.clamp(0, 1)


@pytest.mark.parametrize("options", [{}, dict(style_weight=2.0, search_vote_iters=2, weighted_vote=True)],
                         ids=["search", "search-and-vote"])
def test_patchmatch_recovers_known_shift(options: dict) -> None:
    dx, dy = 5, -3
    big = smooth_texture(80, seed=1)
    source = big[..., 8:72, 8:72]
    target = big[..., 8 + dy:72 + dy, 8 + dx:72 + dx]  # target(p) = source(p + (dx, dy))
    gen = torch.Generator().manual_seed(0)
    out, err, nnf = guided_synthesis([Guide(source, target, 6.0)], source, patch_size=5, levels=2, iterations=5,
                                     uniformity=0.0, feature_dims=None, generator=gen, **options)
    offset = nnf - identity_nnf(1, 64, 64)
    interior = (slice(None), slice(6, 59), slice(2, 57))  # whose source patch p + (dx, dy) lies inside the source
    assert (offset[:, 0][interior] == dx).float().mean() > 0.99
    assert (offset[:, 1][interior] == dy).float().mean() > 0.99
    assert err[interior].median() <= (1e-4 if options else 0)  # the style term adds float rounding
    inner = (slice(None), slice(None), slice(8, 57), slice(4, 55))
    assert (out - target)[inner].abs().median() < 1e-6  # the style (here the source itself) lands shifted


def test_patch_errors_units_and_projection() -> None:
    # One channel, weight 1: error = 255^2 * sum over the 3x3 patch of squared differences.
    target = torch.zeros(1, 1, 8, 8)
    source = torch.full((1, 1, 8, 8), 0.1)
    t, s = unfold_patches(target, 3), unfold_patches(source, 3)
    err = patch_errors(t, s, torch.arange(64)[None])
    torch.testing.assert_close(err, torch.full((1, 64), 9 * (0.1 * 255) ** 2), rtol=1e-5, atol=1e-3)
    # PCA projection never increases a distance and keeps exact matches at zero.
    a, b = unfold_patches(smooth_texture(32, seed=2), 5), unfold_patches(smooth_texture(32, seed=3), 5)
    pa, pb = project_features(a, b, 8)
    idx = torch.randperm(1024)[None]
    full, projected = patch_errors(a, b, idx), patch_errors(pa, pb, idx)
    assert (projected <= full * (1 + 1e-4) + 1e-3).all() and projected.mean() > 0.5 * full.mean()
    assert patch_errors(pa, pa, torch.arange(1024)[None]).abs().max() < 1e-2


def test_principal_axes_are_the_top_eigenvectors_and_leave_the_thread_count_as_it_was() -> None:
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    eigenvalues = torch.tensor([1.0, 9.0, 2.0, 7.0, 3.0, 5.0], dtype=torch.float64)
    scatter = (q * eigenvalues) @ q.T
    threads = torch.get_num_threads()
    axes = principal_axes(scatter[None], 2, torch.float32, "cpu")[0]
    assert torch.get_num_threads() == threads
    # ascending order, as eigh gives them: eigenvalue 7 then 9; each axis up to its sign
    expected = q[:, [3, 1]].float()
    torch.testing.assert_close((axes * expected).sum(0).abs(), torch.ones(2), atol=1e-5, rtol=0)


def test_patchmatch_clamps_x_to_the_source_width_and_y_to_its_height_and_scores_like_patch_errors() -> None:
    target, source = unfold_patches(torch.rand(2, 3, 4, 6), 3), unfold_patches(torch.rand(2, 3, 5, 9), 3)
    matcher = PatchMatch(target, source, (4, 6), (5, 9), 3)
    nnf = torch.randint(-4, 14, (2, 2, 4, 6))
    clamped = matcher.clamp(nnf)
    assert torch.equal(clamped[:, 0], nnf[:, 0].clamp(0, 8)) and torch.equal(clamped[:, 1], nnf[:, 1].clamp(0, 4))
    index = (clamped[:, 1] * 9 + clamped[:, 0]).flatten(1)
    assert torch.equal(matcher.data_error(clamped), patch_errors(target, source, index).view(2, 4, 6))


@needs_cuda
@pytest.mark.parametrize("options", [{}, dict(style_weight=1.0, search_vote_iters=2, uniformity=0.0)],
                         ids=["defaults", "style-term"])
def test_graphed_search_replays_give_the_eager_results_bit_for_bit(options: dict) -> None:
    """Three calls of the same shapes on different inputs through one GraphedSearch: captures in the first call
    (at most one per level and pass), replays after. Each call's results equal the eager loop's from the same
    generator state, and so does the generator's state after it (the graphs advance it as the eager draws do)."""
    size, levels = 64, 3
    generators = {"eager": torch.Generator("cuda"), "graphs": torch.Generator("cuda")}
    search, captured = GraphedSearch(generators["graphs"]), []
    for seed in range(3):
        source, target = (smooth_texture(size, seed=2 * seed + k).cuda().expand(2, -1, -1, -1) for k in (0, 1))
        guides = [Guide(source, target, 6.0), Guide(source[:, :1], target[:, :1], 0.5, masked=True)]
        mask = (torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(seed)) > 0.2).float().cuda()
        results, states = [], []
        for graphs, gen in zip((None, search), generators.values()):
            gen.manual_seed(seed)
            results.append(guided_synthesis(guides, source, levels=levels, iterations=3, target_mask=mask,
                                            generator=gen, dtype=torch.float16, search=graphs, **options))
            states.append(gen.get_state())
        for eager, graphed in zip(*results):
            assert torch.equal(eager, graphed)
        assert torch.equal(states[0], states[1])
        captured.append(len(search.captured))
    assert 0 < captured[0] == captured[-1] <= levels * options.get("search_vote_iters", 1)  # later calls replay


@needs_cuda
@pytest.mark.parametrize("chain_batch", [None, 2])
def test_propagation_with_cuda_graphs_gives_the_eager_frames(chain_batch: int | None) -> None:
    """Keys 0, 4, 9 of 12 frames: 5 chains of unequal lengths, so steps of 5, 3 and 2 chains (and windows of
    2 rows); with `cuda_graphs` the frames are the eager ones bit for bit."""
    frames, size = 12, 48
    texture = smooth_texture(size + frames, seed=7)
    video = torch.cat([texture[..., t:t + size, t:t + size] for t in range(frames)]).cuda()
    flow = torch.ones(frames - 1, 2, size, size, device="cuda")
    occ = torch.zeros(frames - 1, 1, size, size, device="cuda")
    keys = [0, 4, 9]
    args = (video, keys, 1 - video[keys], -flow, flow, occ, occ)
    eager = propagate_keyframes(*args, iterations=2, seed=3, chain_batch=chain_batch, cuda_graphs=False)
    graphed = propagate_keyframes(*args, iterations=2, seed=3, chain_batch=chain_batch, cuda_graphs=True)
    assert torch.equal(graphed, eager)
    assert not torch.equal(propagate_keyframes(*args, iterations=2, seed=4, chain_batch=chain_batch, cuda_graphs=True),
                           eager)


def test_vote_with_identity_nnf_returns_image() -> None:
    image = torch.rand(2, 3, 12, 17)
    out = vote(image, identity_nnf(2, 12, 17), patch_size=5)
    torch.testing.assert_close(out, image)


def test_vote_with_shifted_nnf_shifts_image() -> None:
    image = torch.rand(1, 3, 16, 16)
    nnf = identity_nnf(1, 16, 16)
    nnf[:, 0] = (nnf[:, 0] + 2).clamp(max=15)
    out = vote(image, nnf, patch_size=3)
    torch.testing.assert_close(out[..., 1:-1, 1:-4], image[..., 1:-1, 3:-2])


def test_weighted_vote_ignores_badly_matched_patches() -> None:
    image = torch.rand(1, 3, 16, 16)
    nnf = identity_nnf(1, 16, 16)
    nnf[:, :, 8, 8] = torch.tensor([0, 0])  # one wrong patch: it smears pixel (0, 0)'s neighbourhood over (8, 8)'s
    error = torch.zeros(1, 16, 16)
    error[0, 8, 8] = 1e9
    assert (vote(image, nnf, 3) - image).abs().max() > 0.01
    torch.testing.assert_close(vote(image, nnf, 3, error), image, atol=1e-5, rtol=0)


def test_vote_candidates_of_identity_nnf_are_the_pixel_itself() -> None:
    coords, valid = vote_candidates(identity_nnf(2, 7, 9), 5)
    assert coords.shape == (2, 2, 25, 7, 9) and valid.shape == (2, 1, 25, 7, 9)
    own = identity_nnf(2, 7, 9)[:, :, None].expand_as(coords)
    assert (coords == own)[valid.expand_as(coords)].all()
    assert valid[0, 0, :, 3, 4].all() and valid[0, 0, :, 0, 0].sum() == 9  # corner: 3x3 of the 5x5 patches exist


def test_selective_vote_picks_the_proposal_the_guide_agrees_with() -> None:
    g = torch.Generator().manual_seed(0)
    guide = torch.rand(1, 3, 16, 16, generator=g)
    style = torch.rand(1, 3, 16, 16, generator=g)
    nnf = identity_nnf(1, 16, 16)
    nnf[:, :, 5:8, 5:8] = torch.tensor([12, 2]).view(1, 2, 1, 1)  # a 3x3 block of wrong matches
    out, err = selective_vote(style, nnf, 5, guide, guide)
    torch.testing.assert_close(out, style)  # every pixel still has an exact proposal from a correct patch
    assert err.abs().max() == 0
    assert (vote(style, nnf, 5) - style).abs().max() > 0.05  # the mean blurs the wrong proposals in
    # With a different target guide, the chosen proposal's error is the squared guide difference in 0..255.
    _, err = selective_vote(style, identity_nnf(1, 16, 16), 1, guide, guide + 0.1)
    torch.testing.assert_close(err, torch.full((1, 16, 16), 3 * 25.5 ** 2), rtol=1e-4, atol=1e-2)


def test_error_aware_weight_limits() -> None:
    e1, e2 = torch.zeros(2, 4, 4), torch.full((2, 4, 4), 10 * math.log(3))
    w = error_aware_weight(torch.tensor([0.5, 0.25]), e1, e2, temperature=10.0)
    assert w.shape == (2, 1, 4, 4)
    torch.testing.assert_close(w[0], torch.full((1, 4, 4), 0.75))  # odds 1:1 times e^(ln 3) = 3:1
    torch.testing.assert_close(w[1], torch.full((1, 4, 4), 0.5))  # odds 1:3 times 3 = 1:1
    torch.testing.assert_close(error_aware_weight(0.3, e1, e2, float("inf")), torch.full((2, 1, 4, 4), 0.3))
    assert (error_aware_weight(0.9, e2, e1, 1e-3) < 1e-6).all()  # tiny temperature: the lower error wins


def test_upsample_nnf_doubles_coordinates() -> None:
    coarse = identity_nnf(1, 4, 5)
    coarse[:, 0] += 1  # offset of +1 coarse pixel
    fine = upsample_nnf(coarse, (8, 10))
    torch.testing.assert_close(fine - identity_nnf(1, 8, 10), torch.stack([torch.full((8, 10), 2), torch.zeros(8, 10, dtype=torch.long)])[None])


def test_occupancy_counts_patch_coverage() -> None:
    nnf = identity_nnf(1, 10, 10)
    omega = occupancy(nnf, (10, 10), 3)
    assert omega[0, 5, 5] == 9  # interior: every pixel covered by 9 patches
    collapsed = torch.zeros_like(nnf) + 5
    assert occupancy(collapsed, (10, 10), 3)[0, 5, 5] == 100  # all 100 target patches on one source patch


def test_uniformity_spreads_matches() -> None:
    # Flat source: every patch matches equally well; uniformity must stop everyone using one patch.
    source = torch.full((1, 1, 24, 24), 0.5)
    target = torch.full((1, 1, 24, 24), 0.5)
    init = torch.zeros(1, 2, 24, 24, dtype=torch.long) + 12
    kwargs = dict(patch_size=3, levels=1, iterations=4, init=init, feature_dims=None,
                  generator=torch.Generator().manual_seed(0))
    _, _, plain = guided_synthesis([Guide(source, target, 1.0)], source, uniformity=0.0, **kwargs)
    _, _, spread = guided_synthesis([Guide(source, target, 1.0)], source, uniformity=3500.0, **kwargs)
    distinct = lambda nnf: len(set((nnf[0, 1] * 24 + nnf[0, 0]).flatten().tolist()))  # noqa: E731
    assert distinct(plain) == 1
    assert distinct(spread) > 100


def test_lab_round_trip_and_white() -> None:
    rgb = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4, rtol=0)
    white = rgb_to_lab(torch.ones(1, 3, 1, 1)).flatten()
    torch.testing.assert_close(white, torch.tensor([100.0, 0.0, 0.0]), atol=1e-2, rtol=0)


def test_histogram_match_takes_reference_values() -> None:
    image = torch.rand(1, 2, 6, 6)
    reference = torch.rand(1, 2, 6, 6) * 3 + 1
    out = histogram_match(image, reference)
    torch.testing.assert_close(out.flatten(2).sort(-1).values, reference.flatten(2).sort(-1).values)
    assert (out.flatten(2).argsort(-1) == image.flatten(2).argsort(-1)).all()  # order kept


def test_histogram_blend_keeps_mean_and_contrast() -> None:
    g = torch.Generator().manual_seed(0)
    first = (0.5 + 0.15 * torch.randn(1, 3, 64, 64, generator=g)).clamp(0, 1)
    second = (0.5 + 0.15 * torch.randn(1, 3, 64, 64, generator=g)).clamp(0, 1)
    reference = torch.where(torch.rand(1, 1, 64, 64, generator=g) < 0.5, first, second)
    blended = histogram_blend(first, second, 0.5, reference)
    linear = 0.5 * (first + second)
    for image in (first, second):
        assert abs(blended.mean() - image.mean()) < 0.01
        assert abs(blended.std() / image.std() - 1) < 0.05
    assert linear.std() / first.std() < 0.75  # plain averaging loses contrast (1/sqrt(2))
    # Identical inputs: the blend is the identity.
    torch.testing.assert_close(histogram_blend(first, first, 0.3, first), first, atol=2e-4, rtol=0)


def test_poisson_blend_with_own_gradients_is_identity() -> None:
    image = torch.rand(1, 3, 20, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gx, gy = _gradients(image)
    torch.testing.assert_close(poisson_blend(image, gx, gy, screen=0.1), image)
    # Zero gradients and a weak screen flatten the image toward its mean.
    flat = poisson_blend(image, torch.zeros_like(gx), torch.zeros_like(gy), screen=1e-4)
    assert (flat.std(dim=(-2, -1)) < 0.05 * image.std(dim=(-2, -1))).all()
    torch.testing.assert_close(flat.mean(dim=(-2, -1)), image.mean(dim=(-2, -1)))


def test_auto_levels_stop_at_the_coarsest_side() -> None:
    assert auto_levels(512, 512, 20) == 5  # 512 .. 32 (ours: 4 patch widths)
    assert auto_levels(512, 768, 11) == 6  # 512 .. 16 (EbSynth: 2 * 5 + 1)
    assert auto_levels(16, 16, 11) == 1


def test_temporal_weight_is_the_released_codes() -> None:
    """Key frames 10 apart: the earlier key's weight is (10 - j) / 9, 1 next to it, 1/9 (not 0) next to the later."""
    assert [round(temporal_weight(j, 10), 6) for j in (1, 5, 9)] == [1.0, round(5 / 9, 6), round(1 / 9, 6)]
    assert temporal_weight(1, 2) == 1.0


def test_select_temporal_weighs_errors_and_carries_the_choice_along_the_flow() -> None:
    h = w = 8
    first_err = torch.full((3, h, w), 1.0)
    second_err = torch.full((3, h, w), 4.0)
    second_err[1, 2, 3] = 0.1  # frame 1: the later result wins at (x=3, y=2) only
    flow = torch.zeros(3, 2, h, w)
    flow[2, 0] = -1.0  # frame 2's pixel x comes from x - 1 in frame 1
    mask = select_temporal(first_err, second_err, [1.0, 0.5, 0.5], flow)
    assert mask.shape == (3, 1, h, w) and mask.dtype == torch.bool
    assert not mask[0].any()  # w = 1: the earlier key frame's result everywhere
    assert mask[1, 0].nonzero().tolist() == [[2, 3]]  # (1 - w) E_a >= w E_b there only
    assert mask[2, 0].nonzero().tolist() == [[2, 4]]  # carried one pixel right, although E_a < E_b there
    # ties go to the later key frame's result (the released code keeps the earlier only where strictly lower)
    assert select_temporal(first_err[:1], first_err[:1], [0.5], flow[:1]).all()


def test_meanstd_blend_keeps_the_reference_statistics_and_contrast() -> None:
    g = torch.Generator().manual_seed(0)
    first = (0.5 + 0.15 * torch.randn(1, 3, 64, 64, generator=g)).clamp(0, 1)
    second = (0.4 + 0.1 * torch.randn(1, 3, 64, 64, generator=g)).clamp(0, 1)
    reference = torch.where(torch.rand(1, 1, 64, 64, generator=g) < 0.5, first, second)
    blended = meanstd_blend(first, second, 0.5, reference)
    lab_out, lab_ref = rgb_to_lab(blended), rgb_to_lab(reference)
    torch.testing.assert_close(lab_out.mean((-2, -1)), lab_ref.mean((-2, -1)), atol=0.05, rtol=0)
    torch.testing.assert_close(lab_out.std((-2, -1)), lab_ref.std((-2, -1)), atol=0, rtol=0.02)
    assert (0.5 * (first + second)).std() / reference.std() < 0.85  # the plain mean loses contrast
    torch.testing.assert_close(meanstd_blend(first, first, 0.3, first), first, atol=2e-4, rtol=0)
    # weight 1: the first image, standardised, given the reference's statistics (here its own)
    torch.testing.assert_close(meanstd_blend(first, second, 1.0, first), first, atol=2e-4, rtol=0)


def test_blend_pair_modes() -> None:
    g = torch.Generator().manual_seed(1)
    first, second = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    choose = torch.rand(2, 1, 16, 16, generator=g) > 0.5
    torch.testing.assert_close(blend_pair(first, second, 0.5, choose, "select"), torch.where(choose, second, first))
    torch.testing.assert_close(blend_pair(first, second, torch.tensor([1.0, 0.0]), choose, "linear"),
                               torch.stack([first[0], second[1]]))
    smooth = smooth_texture(16).expand(2, -1, -1, -1)  # gradients within the released code's clip
    same = blend_pair(smooth, smooth, 0.5, choose, "meanstd", poisson=True)  # Poisson toward its own gradients
    torch.testing.assert_close(same, smooth, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="mode='median'"):
        blend_pair(first, second, 0.5, choose, "median")
