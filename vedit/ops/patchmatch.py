"""Guided patch synthesis (EbSynth-style, Jamriska et al. 2019) in PyTorch: PatchMatch and voting.

A nearest-neighbour field (NNF) maps every target pixel p to a source pixel q = nnf(p) (absolute
integer coordinates, channels (x, y)) so that the n x n guide patch around p in the target looks like
the one around q in the source. Patches are compared as unfolded feature vectors: every pixel holds
its C x n x n patch (replicate padding at the borders), pre-multiplied by the square root of its
channel weight, so the patch error is a plain sum of squared differences.

Error units follow EbSynth's: guide values in 0..255, squared differences summed over the patch's
pixels and channels, each guide's weight split evenly over its channels (`guide_features`).
Uniformity (Kaspar et al. 2015, as EbSynth uses it) adds `uniformity * omega(q) / omega_best` to
the error of using source patch q, where omega(q) is the mean, over the pixels of patch q, of how many
target patches currently cover that source pixel, and omega_best = n^2 |target| / |source| is that
count when every source pixel is used equally; so 3500 is the cost of a source patch used twice as
often as ideal, relative to using it ideally.

Search is parallel PatchMatch: every pixel of every batch item proposes candidates at once
(neighbours' matches at a jump-flooding step that halves each iteration, then random search in
shrinking windows), keeping a candidate where its error is lower. Batch items are independent
problems of equal size.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vedit.ops.cuda_graphs import Captured, capture
from vedit.ops.transfer import to_device


def guide_features(guides: list[tuple[torch.Tensor, float]], patch_size: int) -> torch.Tensor:
    """Stack weighted guides (B, C_i, H, W) in [0, 1] and unfold them -> (B, H*W, sum C_i * n^2).

    Each guide's weight is split over its channels, and values are scaled to EbSynth's 0..255 units
    after the squared difference (`patch_errors` multiplies by 255^2), so features stay small enough
    for float16.
    """
    scaled = [g * math.sqrt(w / g.shape[1]) for g, w in guides]
    return unfold_patches(torch.cat(scaled, dim=1), patch_size)


def unfold_patches(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C * n^2): each pixel's patch, replicate padding at the borders."""
    r = patch_size // 2
    padded = F.pad(image, (r, r, r, r), mode="replicate")
    return F.unfold(padded, patch_size).transpose(1, 2).contiguous()


def project_features(target: torch.Tensor, source: torch.Tensor, dims: int,
                     scatter: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Project target and source patch features (B, N, F) onto their top `dims` principal axes.

    Patches of natural images are highly redundant (neighbouring pixels correlate), so a few
    components keep nearly all of the squared distance while cutting the bytes every candidate
    evaluation reads by F / dims. Distances in the projection never exceed the full ones, and exact
    matches stay exact. One basis per batch item, from the source and target features together
    (`scatter`: their `scatter_matrices`, already on the host; None: computed here).
    """
    if dims >= target.shape[-1]:
        return target, source
    if scatter is None:
        scatter = scatter_matrices(torch.cat([source, target], 1)).cpu()
    basis = principal_axes(scatter, dims, source.dtype, source.device)
    return target @ basis, source @ basis


def pca_basis(features: torch.Tensor, dims: int, scatter: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, F) -> (B, F, min(dims, F)): the top principal axes of each batch item's features (`scatter`:
    their `scatter_matrices`, already on the host; None: computed here)."""
    if dims >= features.shape[-1]:
        return torch.eye(features.shape[-1], device=features.device, dtype=features.dtype).expand(features.shape[0], -1, -1)
    if scatter is None:
        scatter = scatter_matrices(features).cpu()
    return principal_axes(scatter, dims, features.dtype, features.device)


def scatter_matrices(features: torch.Tensor) -> torch.Tensor:
    """(B, N, F) -> (B, F, F) float64: the scatter matrix of each batch item's centred features (a subsample
    of at most ~8192 rows)."""
    step = max(1, features.shape[1] // 8192)
    sample = features[:, ::step].double()
    sample = sample - sample.mean(1, keepdim=True)
    return sample.transpose(1, 2) @ sample


def principal_axes(scatter: torch.Tensor, dims: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The top `dims` eigenvectors of scatter matrices (B, F, F) on the CPU -> (B, F, dims) on `device`.

    The F x F eigenproblem is tiny: it is solved on the CPU (float64), where it takes 1-2 ms per matrix;
    GPU eigensolvers spend tens of kernel launches and a sync on it, per call. It runs on one CPU thread: a
    thread pool costs more than it saves on a problem this small, and its time varies (H200 host, 16 threads,
    16-frame propagation: eigensolver 0.39-0.81 s and CPU time 12-18 s per propagation, against 0.28-0.31 s
    and 1.4 s on one thread), and one thread gives the same basis on every machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, vectors = torch.linalg.eigh(scatter)
    finally:
        torch.set_num_threads(threads)
    return to_device(vectors[..., -dims:].to(dtype), device)


def clamp_nnf(nnf: torch.Tensor, source_size: tuple[int, int]) -> torch.Tensor:
    """Clamp NNF coordinates (B, 2, H, W) into a (Hs, Ws) source."""
    hs, ws = source_size
    return torch.stack([nnf[:, 0].clamp(0, ws - 1), nnf[:, 1].clamp(0, hs - 1)], dim=1)


def _flat_index(nnf: torch.Tensor, width: int) -> torch.Tensor:
    """(B, 2, H, W) integer coordinates -> (B, H*W) flat source indices."""
    return torch.add(nnf[:, 0], nnf[:, 1], alpha=width).flatten(1)  # one kernel: x + width * y


def patch_errors(target: torch.Tensor, source: torch.Tensor, index: torch.Tensor,
                 split: int | None = None, split_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Squared patch distances in 0..255 units between target features and source features at `index`.

    target (B, N, F), source (B, M, F), index (B, N) -> (B, N) float32. Features from `split` on are
    multiplied per target pixel by `split_weight` (B, N) (used to switch a guide off where it is
    unreliable, e.g. the temporal guide where the flow is occluded).
    """
    batch = torch.arange(source.shape[0], device=source.device)[:, None]
    return _squared_errors(target, source[batch, index], split, split_weight)


def _squared_errors(target: torch.Tensor, picked: torch.Tensor, split: int | None,
                    split_weight: torch.Tensor | None) -> torch.Tensor:
    diff = target - picked
    sq = diff * diff
    if split is None:
        err = sq.sum(-1, dtype=torch.float32)
    else:
        err = sq[..., :split].sum(-1, dtype=torch.float32) + split_weight * sq[..., split:].sum(-1, dtype=torch.float32)
    return err * 255.0 ** 2


def occupancy(nnf: torch.Tensor, source_size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Mean over each source patch of how many target patches cover its pixels: (B, Hs, Ws)."""
    hs, ws = source_size
    b = nnf.shape[0]
    counts = torch.zeros(b, hs * ws, device=nnf.device, dtype=torch.float32)
    counts.scatter_add_(1, _flat_index(nnf, ws), torch.ones_like(counts[:, :1]).expand(b, nnf[0, 0].numel()))
    r = patch_size // 2
    box = torch.ones(1, 1, patch_size, patch_size, device=nnf.device)
    covered = F.conv2d(counts.view(b, 1, hs, ws), box, padding=r)
    return (F.conv2d(covered, box, padding=r) / patch_size ** 2)[:, 0]


@dataclass(frozen=True)
class RowWindow:
    """Rows [start, stop) of a batch of `total` items. Random draws are made for the whole batch and
    sliced, so a batch synthesised window by window, each from the same generator state, draws what
    one call over the whole batch would."""

    start: int
    stop: int
    total: int


def randint(low: int, high: int, shape: tuple[int, ...], device: torch.device | str,
            generator: torch.Generator | None, window: RowWindow | None = None) -> torch.Tensor:
    """torch.randint of `shape` (batch first), drawn over the whole batch of `window` when one is given."""
    if window is None:
        return torch.randint(low, high, shape, device=device, generator=generator)
    return torch.randint(low, high, (window.total, *shape[1:]), device=device,
                         generator=generator)[window.start:window.stop]


class PatchMatch:
    """Parallel PatchMatch between batched target and source features of one pyramid level."""

    def __init__(self, target: torch.Tensor, source: torch.Tensor, target_size: tuple[int, int],
                 source_size: tuple[int, int], patch_size: int, uniformity: float = 0.0,
                 split: int | None = None, split_weight: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, window: RowWindow | None = None) -> None:
        self.target, self.source = target, source
        self.target_size, self.source_size = target_size, source_size
        self.patch_size, self.uniformity = patch_size, uniformity
        self.split, self.split_weight = split, split_weight
        self.generator, self.window = generator, window
        self.omega_best = patch_size ** 2 * target_size[0] * target_size[1] / (source_size[0] * source_size[1])
        # Made once per level: this loop is bound by kernel launches, so every op per candidate counts.
        self.batch = torch.arange(source.shape[0], device=source.device)[:, None]
        # Built on the device (fills, not copies: a copy from pageable host memory can wait for the stream).
        self.low = torch.zeros(1, 2, 1, 1, dtype=torch.long, device=source.device)
        self.high = torch.stack([torch.full_like(self.low[:, 0], source_size[1] - 1),
                                 torch.full_like(self.low[:, 0], source_size[0] - 1)], 1)

    def clamp(self, nnf: torch.Tensor) -> torch.Tensor:
        return torch.clamp(nnf, self.low, self.high)

    def data_error(self, nnf: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        index = _flat_index(nnf, self.source_size[1]) if index is None else index
        err = _squared_errors(self.target, self.source[self.batch, index], self.split, self.split_weight)
        return err.view(nnf.shape[0], *self.target_size)

    def cost_map(self, omega: torch.Tensor, extra: float) -> torch.Tensor:
        """uniformity * (omega(q) + extra) / omega_best for every source pixel q: (B, Hs * Ws), looked up per
        candidate (the same arithmetic as per candidate, done once per iteration)."""
        return self.uniformity * (omega.flatten(1) + extra) / self.omega_best

    def improve(self, state: tuple[torch.Tensor, ...], candidate: torch.Tensor,
                cost: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Keep `candidate` (B, 2, H, W) where its cost beats the current; state = (nnf, data error, data error +
        uniformity cost); `cost` a `cost_map` (None: no uniformity term)."""
        nnf, err, total = state
        candidate = self.clamp(candidate)
        index = _flat_index(candidate, self.source_size[1])
        cand_err = self.data_error(candidate, index)
        cand_total = cand_err if cost is None else cand_err + cost.gather(1, index).view_as(cand_err)
        better = cand_total < total
        return (torch.where(better[:, None], candidate, nnf), torch.where(better, cand_err, err),
                torch.where(better, cand_total, total))

    def random_offsets(self, like: torch.Tensor, radius: int) -> torch.Tensor:
        return randint(-radius, radius + 1, tuple(like.shape), like.device, self.generator, self.window)

    def run(self, nnf: torch.Tensor, iterations: int, search_radius: int,
            extra_candidates: list[torch.Tensor] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Iterate propagation + random search from `nnf`; return (nnf, data error per pixel)."""
        nnf = self.clamp(nnf)
        err = self.data_error(nnf)
        state = (nnf, err, err)
        for candidate in extra_candidates:
            state = self.improve(state, candidate, None)
        # Unit offsets (x, y) of the four neighbours: +x, -x, +y, -y.
        eye = torch.eye(2, dtype=nnf.dtype, device=nnf.device)
        units = torch.stack([eye[0], -eye[0], eye[1], -eye[1]]).view(4, 1, 2, 1, 1)
        for it in range(iterations):
            cost = None
            if self.uniformity:
                omega = occupancy(state[0], self.source_size, self.patch_size)
                here = self.cost_map(omega, 0.0).gather(1, _flat_index(state[0], self.source_size[1]))
                state = (state[0], state[1], state[1] + here.view_as(state[1]))
                # A candidate adds this pixel's own use (1 per patch pixel, mean 1) to its occupancy.
                cost = self.cost_map(omega, 1.0)
            step = max(1, min(2 ** (iterations - 1 - it), max(self.target_size) // 2))
            offsets = units * step
            for k, (axis, sign) in enumerate(((0, 1), (0, -1), (1, 1), (1, -1))):
                # The neighbour at p + offset matched q; p proposes q - offset.
                neighbour = torch.roll(state[0], shifts=-sign * step, dims=-1 if axis == 0 else -2)
                state = self.improve(state, neighbour - offsets[k], cost)
            radius = search_radius
            while radius >= 1:
                state = self.improve(state, state[0] + self.random_offsets(state[0], radius), cost)
                radius //= 2
        return state[0], state[1]


@dataclass
class GraphedSearch:
    """`PatchMatch.run` replayed from CUDA graphs: one captured per distinct call (shapes, settings, rows).

    The search is bound by kernel launches (about 19 small kernels per candidate, ~1,000 per pyramid level),
    and a propagation makes the same calls at every step, so after its capture a call is one graph launch.
    `generator` (the matchers' own, None: the default one) is registered with each graph: a replay draws what
    the eager loop would from the generator's current state, so the results are bit-identical. The graphs
    share one memory pool, held until this object is dropped (make one per propagation); outputs are copied
    out after each replay.
    """

    generator: torch.Generator | None = None
    captured: dict[tuple, Captured] = field(default_factory=dict)
    pool: tuple | None = None

    def run(self, matcher: PatchMatch, nnf: torch.Tensor, iterations: int, search_radius: int,
            extra_candidates: list[torch.Tensor] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        if matcher.generator is not self.generator:
            raise ValueError("GraphedSearch.run: the matcher's generator is not the one the graphs draw from; "
                             "make a GraphedSearch per generator")
        weight = [] if matcher.split_weight is None else [matcher.split_weight]
        inputs = [matcher.target, matcher.source, nnf, *weight, *extra_candidates]
        key = (tuple((t.shape, t.dtype) for t in inputs), matcher.target_size, matcher.source_size,
               matcher.patch_size, matcher.uniformity, matcher.split, matcher.window, iterations, search_radius)
        entry = self.captured.get(key)
        if entry is None:
            entry = self.captured[key] = self._capture(matcher, inputs, iterations, search_radius, len(weight))
        outputs = entry.replay(inputs)
        return outputs[0].clone(), outputs[1].clone()

    def _capture(self, matcher: PatchMatch, inputs: list[torch.Tensor], iterations: int, search_radius: int,
                 weighted: int) -> Captured:
        graphed = copy.copy(matcher)

        def search(target, source, nnf, *rest):
            graphed.target, graphed.source = target, source
            graphed.split_weight = rest[0] if weighted else None
            return graphed.run(nnf, iterations, search_radius, list(rest[weighted:]))

        entry = capture(search, inputs, self.pool, self.generator)
        entry.keep = graphed  # the graph reads its tensors (bounds, batch index)
        self.pool = entry.graph.pool()
        return entry


def upsample_nnf(nnf: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Coarse NNF (B, 2, h, w) -> (B, 2, *size): q_fine(p) = 2 q_coarse(p // 2) + p mod 2."""
    h, w = size
    ys = torch.arange(h, device=nnf.device)
    xs = torch.arange(w, device=nnf.device)
    coarse = nnf[:, :, (ys // 2).clamp(max=nnf.shape[2] - 1)][:, :, :, (xs // 2).clamp(max=nnf.shape[3] - 1)]
    parity = torch.stack(torch.meshgrid(xs % 2, ys % 2, indexing="xy"))[None]
    return 2 * coarse + parity


def identity_nnf(batch: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([xs, ys])[None].expand(batch, 2, height, width).clone()


def vote(style: torch.Tensor, nnf: torch.Tensor, patch_size: int, error: torch.Tensor | None = None) -> torch.Tensor:
    """Average the overlapping source style patches the NNF selects.

    style (B, C, Hs, Ws), nnf (B, 2, H, W) -> (B, C, H, W): output(x) = mean over patch offsets d of
    style(nnf(x - d) + d), over the target patches that cover x. With `error` (B, H, W), the patch
    error at each target pixel, patch x - d weighs 1 / (1 + error(x - d) / n^2) (EbSynth's weighted vote).
    """
    b, c = style.shape[:2]
    h, w = nnf.shape[-2:]
    r = patch_size // 2
    patches = unfold_patches(style, patch_size)
    batch = torch.arange(b, device=style.device)[:, None]
    picked = patches[batch, _flat_index(nnf, style.shape[-1])].transpose(1, 2)
    padded = (h + 2 * r, w + 2 * r)
    if error is None:
        weight = torch.ones_like(picked[:1, :1])
    else:
        weight = (1 / (1 + error.flatten(1).to(picked.dtype) / patch_size ** 2))[:, None]
        picked = picked * weight
    summed = F.fold(picked, padded, patch_size)[..., r:r + h, r:r + w]
    count = F.fold(weight.expand(-1, patch_size ** 2, -1), padded, patch_size)[..., r:r + h, r:r + w]
    return summed / count


def vote_candidates(nnf: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The source pixels the overlapping patches propose for each target pixel.

    nnf (B, 2, H, W) -> (coordinates (B, 2, n^2, H, W), valid (B, 1, n^2, H, W)): candidate k of pixel x
    is nnf(y) + (x - y) for the patch centred at y = x + o_k; invalid where y lies outside the target.
    """
    b, _, h, w = nnf.shape
    r = patch_size // 2
    o = torch.arange(-r, r + 1, device=nnf.device)
    oy, ox = torch.meshgrid(o, o, indexing="ij")
    offsets = torch.stack([ox.flatten(), oy.flatten()]).view(1, 2, -1, 1, 1)
    shifted = F.unfold(F.pad(nnf.float(), (r, r, r, r)), patch_size).view(b, 2, -1, h, w)
    valid = F.unfold(F.pad(torch.ones_like(nnf[:, :1], dtype=torch.float32), (r, r, r, r)), patch_size)
    return shifted.long() - offsets, valid.view(b, 1, -1, h, w) > 0


def _gather(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """image (B, C, Hs, Ws) at integer coords (B, 2, ...) -> (B, C, ...), clamped to the image."""
    b, c, hs, ws = image.shape
    index = (coords[:, 1].clamp(0, hs - 1) * ws + coords[:, 0].clamp(0, ws - 1)).flatten(1)
    return image.flatten(2).gather(2, index[:, None].expand(-1, c, -1)).view(b, c, *coords.shape[2:])


def selective_vote(style: torch.Tensor, nnf: torch.Tensor, patch_size: int, source_guide: torch.Tensor,
                   target_guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target pixel, the one style value among the overlapping patches' proposals whose source guide
    pixel best matches the target guide pixel (instead of their mean, which blurs where they disagree).

    style (B, C, Hs, Ws), nnf (B, 2, H, W), guides (B, G, Hs, Ws) / (B, G, H, W) in [0, 1] ->
    (image (B, C, H, W), squared guide error of the chosen proposal (B, H, W) in 0..255 units).
    A mode-seeking vote in the spirit of Wexler et al. 2007, with the guide as the arbiter.
    """
    coords, valid = vote_candidates(nnf, patch_size)
    error = ((_gather(source_guide, coords) - target_guide[:, :, None]) ** 2).sum(1) * 255.0 ** 2
    error = error.masked_fill(~valid[:, 0], float("inf"))
    best, choice = error.min(1)
    chosen = coords.gather(2, choice[:, None, None].expand(-1, 2, 1, -1, -1))[:, :, 0]
    return _gather(style, chosen), best


def pyramid_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Sizes from the finest (index 0) to the coarsest, halving (ceil) per level."""
    sizes = [(height, width)]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def auto_levels(height: int, width: int, coarsest_side: int) -> int:
    """As many levels as keep the coarsest level's short side at least `coarsest_side` pixels.

    EbSynth's rule is coarsest_side = 2 * patch_size + 1 (11 px for 5x5 patches)."""
    levels = 1
    while levels < 32 and min(height, width) / 2 ** levels >= coarsest_side:
        levels += 1
    return levels


@dataclass
class Guide:
    """One guide pair: source (B, C, Hs, Ws) and target (B, C, H, W) in [0, 1] with a weight.

    A `masked` guide counts only where the synthesis' `target_mask` is 1 (per target pixel).
    """

    source: torch.Tensor
    target: torch.Tensor
    weight: float
    masked: bool = False


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)


def _level_nnf(nnf: torch.Tensor, target_size: tuple[int, int], source_scale: tuple[float, float]) -> torch.Tensor:
    """Full-resolution NNF (B, 2, H, W) -> a level's target grid, coordinates on the level's source grid."""
    h, w = nnf.shape[-2:]
    ys = ((torch.arange(target_size[0], device=nnf.device) + 0.5) * h / target_size[0]).long().clamp(max=h - 1)
    xs = ((torch.arange(target_size[1], device=nnf.device) + 0.5) * w / target_size[1]).long().clamp(max=w - 1)
    picked = nnf[:, :, ys][:, :, :, xs].float()
    x = ((picked[:, 0] + 0.5) * source_scale[0] - 0.5).round()
    y = ((picked[:, 1] + 0.5) * source_scale[1] - 0.5).round()
    return torch.stack([x, y], dim=1).long()


def _features(guides: list[tuple[torch.Tensor, float]], size: tuple[int, int], patch_size: int) -> torch.Tensor:
    return guide_features([(_resize(g, size), w) for g, w in guides], patch_size)


def guided_synthesis(guides: list[Guide], style: torch.Tensor, patch_size: int = 5, levels: int | None = None,
                     iterations: int = 6, uniformity: float = 3500.0, init: torch.Tensor | None = None,
                     target_mask: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                     feature_dims: int | None = 32, generator: torch.Generator | None = None,
                     style_weight: float = 0.0, search_vote_iters: int = 1,
                     weighted_vote: bool = False, vote_guide: Guide | None = None,
                     coarsest_side: int | None = None, window: RowWindow | None = None,
                     search: GraphedSearch | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthesise the target in the style of `style` (B, C, Hs, Ws) by guided patch matching.

    Coarse to fine: PatchMatch at each pyramid level from the upsampled NNF of the coarser one (`levels`
    None: down to a short side of `coarsest_side`, default 4 patch widths; see `auto_levels`); `init`
    (B, 2, H, W) source coordinates at full resolution (e.g. the flow chain) seeds the coarsest level
    and is re-proposed at every finer one. Returns (stylised target (B, C, H, W), per-pixel patch
    error (B, H, W) at full resolution, NNF (B, 2, H, W)). `feature_dims` compresses the patch
    features by PCA (see `project_features`); None compares full patches.

    With `style_weight` > 0 each level alternates search and vote `search_vote_iters` times (EbSynth,
    StyLit): the current estimate of the target's style (voted from the NNF, first from the upsampled
    or seeded one) is one more guide against `style`, which pulls neighbouring pixels onto patches that
    agree where they overlap, so the vote stops averaging unrelated patches (blur). `weighted_vote`
    weighs each patch's vote by 1 / (1 + its error / patch_size^2), so badly matched patches count less.
    With `vote_guide`, the final full-resolution result is its `selective_vote` instead of the mean, and
    the returned error is the chosen proposal's per-pixel guide error instead of the patch error.
    `window`: this batch is those rows of a larger one (random draws as in one call over that batch).
    `search`: replay the PatchMatch iterations from CUDA graphs (the same results, fewer launches).
    """
    if patch_size % 2 != 1:
        raise ValueError(f"guided_synthesis: patch_size={patch_size} must be odd")
    b, _, hs, ws = guides[0].source.shape
    h, w = guides[0].target.shape[-2:]
    levels = levels or auto_levels(min(h, hs), min(w, ws), coarsest_side or 4 * patch_size)
    target_sizes, source_sizes = pyramid_sizes(h, w, levels), pyramid_sizes(hs, ws, levels)
    blocks = [[g for g in guides if not g.masked], [g for g in guides if g.masked]]
    parts = len(guides) + (style_weight > 0)
    dims = [max(1, round(feature_dims * len(block) / parts)) for block in blocks] + [
        max(1, round(feature_dims / parts))] if feature_dims else None  # per block, then the style term's

    def block_features(level: int, k: int) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        """(target, source) patch features at `level` of the unmasked (k = 0) or masked (1) guides, or (None,
        style features) for the style term (2); None where there is none. Made when needed, one block at a time."""
        tsize, ssize = target_sizes[level], source_sizes[level]
        if k == 2:
            return None if style_weight <= 0 else (None, _features([(_resize(style, ssize), style_weight)], ssize,
                                                                   patch_size))
        if not blocks[k]:
            return None
        return (_features([(g.target, g.weight) for g in blocks[k]], tsize, patch_size),
                _features([(g.source, g.weight) for g in blocks[k]], ssize, patch_size))

    # Every level's PCA scatter matrices first, copied to the host at once: each level's eigenproblems then
    # run on the CPU while the GPU is still searching the coarser level, with no wait for the GPU in between.
    # The features are made again for the search: keeping them would hold every level's at once.
    scatters = {}
    if dims:
        for level in range(levels):
            for k in range(3):
                pair = block_features(level, k)
                if pair is not None and dims[k] < pair[1].shape[-1]:
                    scatters[level, k] = scatter_matrices(pair[1] if pair[0] is None else torch.cat(pair[::-1], 1))
                del pair
        if scatters:
            host = torch.cat([m.flatten() for m in scatters.values()]).cpu()
            scatters = {key: flat.view(m.shape) for (key, m), flat in
                        zip(scatters.items(), host.split([m.numel() for m in scatters.values()]))}
    nnf = None
    for level in reversed(range(levels)):
        tsize, ssize = target_sizes[level], source_sizes[level]
        target_parts, source_parts = [], []  # of the unmasked, then the masked guides
        for k in range(2):
            pair = block_features(level, k)
            if pair is not None and dims:
                pair = project_features(*pair, dims[k], scatters.get((level, k)))
            target_parts.append(None if pair is None else pair[0].to(dtype))
            source_parts.append(None if pair is None else pair[1].to(dtype))
        level_style = _resize(style, ssize)
        style_basis = None
        if style_weight > 0:
            style_source = block_features(level, 2)[1]
            if dims:
                style_basis = pca_basis(style_source, dims[2], scatters.get((level, 2)))
                style_source = style_source @ style_basis
            source_parts.insert(1, style_source.to(dtype))
        source = torch.cat([p for p in source_parts if p is not None], -1)
        split, split_weight = None, None
        if blocks[1]:
            split = source.shape[-1] - source_parts[-1].shape[-1]
            mask = target_mask if target_mask is not None else torch.ones_like(guides[0].target[:, :1])
            split_weight = _resize(mask.float(), tsize).flatten(1)
        seeded = None if init is None else _level_nnf(init, tsize, (ssize[1] / ws, ssize[0] / hs))
        extra, err_for_vote = [], None
        if nnf is None:
            nnf = seeded if seeded is not None else torch.stack(
                [randint(0, n, (b, *tsize), style.device, generator, window) for n in (ssize[1], ssize[0])], 1)
            radius = max(ssize) // 2
        else:
            nnf = clamp_nnf(upsample_nnf(nnf, tsize), ssize)
            extra = [seeded] if seeded is not None else []
            radius = min(4, max(ssize) // 2)
        for _ in range(search_vote_iters if style_weight > 0 else 1):
            target = target_parts[:1]
            if style_weight > 0:
                estimate = _features([(vote(level_style, nnf, patch_size, err_for_vote), style_weight)], tsize, patch_size)
                target.append((estimate if style_basis is None else estimate @ style_basis).to(dtype))
            target = torch.cat([p for p in target + target_parts[1:] if p is not None], -1)
            matcher = PatchMatch(target, source, tsize, ssize, patch_size, uniformity, split, split_weight, generator,
                                 window)
            if search is None:
                nnf, err = matcher.run(nnf, iterations, radius, extra)
            else:
                nnf, err = search.run(matcher, nnf, iterations, radius, extra)
            extra, radius = [], min(4, max(ssize) // 2)
            err_for_vote = err if weighted_vote else None
    if vote_guide is not None:
        image, err = selective_vote(style, nnf, patch_size, vote_guide.source, vote_guide.target)
        return image, err, nnf
    return vote(style, nnf, patch_size, err_for_vote), err, nnf
