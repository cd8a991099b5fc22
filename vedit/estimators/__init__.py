"""Preprocessing estimators (flow, depth, edges, masks, correspondence) with one disk cache.

`Estimators` is what editors receive: each method returns ground truth from the task's side data
when the dataset has it (synthetic), else runs the configured estimator, cached on disk per
(video content hash, estimator, parameters). One module per estimator; models are never downloaded
here: a missing weight file fails with a message naming it and the ways out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from vedit.errors import EstimatorError
from vedit.estimators.cache import DiskCache, KeyedDiskCache, model_fingerprint
from vedit.estimators.correspondence import DINO_MODEL, DINO_SIZE, SD_SIZE, load_dinov2, sd_dino_correspondence
from vedit.estimators.depth import (DEPTH_ANYTHING_MODEL, DEPTH_METHODS, depth_anything_depth, dpt_depth,
                                    load_depth_anything)
from vedit.estimators.edges import EDGE_METHODS, canny_edges, hed_edges, load_hed
from vedit.estimators.flow import (FLOW_KEYS, FLOW_METHODS, dis_flow, dis_flow_pairs, load_raft, raft_flow,
                                   raft_flow_pairs)
from vedit.estimators.masks import (GROUND_TRUTH_DATASETS, MASK_METHODS, SALIENT_MODEL, clipseg_masks,
                                    load_salient, whole_frame)
from vedit.ops.warp import chain_to_first, occlusion_masks, pixel_grid
from vedit.task import EditTask

FLOW_CHUNK = 8  # frame pairs per occlusion check
FLOW_PIECE = 16  # frame pairs per cached piece of estimated flow (what a metric holds at once)

__all__ = ["Estimators", "EstimatorError", "DiskCache", "KeyedDiskCache", "model_fingerprint", "dis_flow",
           "raft_flow", "load_raft", "dpt_depth", "depth_anything_depth", "canny_edges", "hed_edges", "load_hed",
           "clipseg_masks"]


def _choose(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise EstimatorError(f"unknown {what} estimator {value!r}; choose one of {', '.join(allowed)}")
    return value


class Estimators:
    """Per-task side data: ground truth when the task has it, else the configured estimator.

    flow: "auto" (gt if present, else raft where its weights load, else dis) | "raft" | "dis" | "gt"; depth: "auto" (gt, else dpt with
    the given model) | "dpt" | "depth_anything" (Depth Anything V2, `depth_anything_model`) | "gt";
    edges: "canny" | "hed"; masks: "dataset" (the dataset's masks, else the whole frame) | "salient"
    (CLIPSeg with the source prompt, `salient_model`) | "none" (the whole frame). `flow_model` /
    `hed_model` / `depth_model` (Depth Anything) / `salient` ((model, tokenizer)) / `dino_model`
    (DINOv2, SD-DINO correspondence) inject the networks
    (else loaded from local caches on first use); `raft_name` picks raft_large or raft_small,
    `raft_iters` its refinement iterations.
    """

    def __init__(self, flow: str = "auto", depth: str = "auto", edges: str = "canny", masks: str = "dataset",
                 cache_dir: str | Path | None = None, device: str = "cpu", raft_name: str = "raft_large",
                 raft_iters: int = 12, depth_anything_model: str = DEPTH_ANYTHING_MODEL,
                 salient_model: str = SALIENT_MODEL,
                 flow_model: torch.nn.Module | None = None, hed_model: torch.nn.Module | None = None,
                 depth_model: torch.nn.Module | None = None, salient: tuple | None = None,
                 dino_model: torch.nn.Module | None = None) -> None:
        self.flow_method = _choose(flow, FLOW_METHODS, "flow")
        self.depth_method = _choose(depth, DEPTH_METHODS, "depth")
        self.edges_method = _choose(edges, EDGE_METHODS, "edges")
        self.masks_method = _choose(masks, MASK_METHODS, "masks")
        self.cache = DiskCache(cache_dir)
        self.device, self.raft_name, self.raft_iters = device, raft_name, raft_iters
        self.depth_anything_model, self.salient_model = depth_anything_model, salient_model
        self.flow_model, self.hed_model, self.depth_model, self.salient = flow_model, hed_model, depth_model, salient
        self.dino_models: dict[str, torch.nn.Module] = {}  # Hub id -> DINOv2 (SD-DINO), loaded on first use
        self.dino_model = dino_model  # injected: used whatever the id
        self._raft_available = True  # until a load fails

    @property
    def cache_dir(self) -> Path | None:
        return self.cache.root

    def _cached(self, task: EditTask, name: str, params: dict, compute: Callable[[], Any]) -> Any:
        return self.cache.get_or_compute(task.video.content_hash(), name, params, compute)

    def flow(self, task: EditTask, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """flow_fwd, flow_bwd (T-1, 2, H, W) and occ_fwd, occ_bwd (T-1, 1, H, W); see vedit.task.

        The pieces of `iter_flow`, put together (an editor that needs every pair at once). Estimated
        flow is cached on disk as float32, as the estimator returns it (occlusion as bool): float16
        rounded up to 1/64 px below 32 px of motion and moved motion_alignment by up to 6.5e-6 px.
        Ground truth is returned as the dataset gives it.
        """
        if self.flow_method_for(task) == "gt":
            return self._ground_truth_flow(task)
        pieces = [piece for _, piece in self.iter_flow(task, dtype)]
        return {k: torch.cat([piece[k] for piece in pieces]) for k in FLOW_KEYS}

    def iter_flow(self, task: EditTask, dtype: torch.dtype = torch.float32
                  ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(index of the first pair, flow of up to FLOW_PIECE consecutive pairs) through the video.

        Each piece is estimated from its own frames (uint8, never the whole clip as float) and cached on
        its own, so a metric that walks the pieces holds one at a time however long the video is.
        """
        if task.video.num_frames < 2:
            raise EstimatorError(f"video {task.video.id!r} has one frame: optical flow needs at least two")
        method = self.flow_method_for(task)
        if method == "gt":
            full = self._ground_truth_flow(task)
            for start in range(0, full["flow_fwd"].shape[0], FLOW_PIECE):
                yield start, {k: v[start:start + FLOW_PIECE] for k, v in full.items()}
            return
        pixels = task.video.pixels
        if method == "dis":
            params, compute = {"preset": "medium"}, lambda f: dis_flow(f)
        else:
            model = self._raft()
            params = {"model": self.raft_name, "weights": model_fingerprint(model), "iters": self.raft_iters}
            compute = lambda f: raft_flow(f, model, self.raft_iters)  # noqa: E731
        params["storage"] = "float32"

        def with_occlusion(frames: torch.Tensor) -> dict[str, torch.Tensor]:
            fwd, bwd = compute(frames)
            occ_fwd = torch.empty(fwd.shape[0], 1, *fwd.shape[-2:], dtype=torch.bool)
            occ_bwd = torch.empty_like(occ_fwd)
            for i in range(0, fwd.shape[0], FLOW_CHUNK):
                f, b = fwd[i:i + FLOW_CHUNK].float(), bwd[i:i + FLOW_CHUNK].float()
                occ_f, occ_b = occlusion_masks(f, b)
                occ_fwd[i:i + FLOW_CHUNK], occ_bwd[i:i + FLOW_CHUNK] = occ_f > 0.5, occ_b > 0.5
            return {"flow_fwd": fwd, "flow_bwd": bwd, "occ_fwd": occ_fwd, "occ_bwd": occ_bwd}

        pairs = task.video.num_frames - 1
        for start in range(0, pairs, FLOW_PIECE):
            stop = min(pairs, start + FLOW_PIECE)
            piece = self._cached(task, f"flow-{method}", {**params, "pairs": [start, stop]},
                                 lambda: with_occlusion(pixels[start:stop + 1]))
            yield start, {k: v.to(dtype) for k, v in piece.items()}

    def iter_forward_flow(self, task: EditTask) -> Iterator[tuple[int, torch.Tensor]]:
        """(index of the first pair, flow_fwd of up to FLOW_PIECE consecutive pairs), float32, not cached:
        the forward flow alone (half of `iter_flow`'s estimate, no occlusion), for videos scored once."""
        if task.video.num_frames < 2:
            raise EstimatorError(f"video {task.video.id!r} has one frame: optical flow needs at least two")
        method = self.flow_method_for(task)
        if method == "gt":
            for start, piece in self.iter_flow(task):
                yield start, piece["flow_fwd"]
            return
        pixels, pairs = task.video.pixels, task.video.num_frames - 1
        for start in range(0, pairs, FLOW_PIECE):
            frames = pixels[start:min(pairs, start + FLOW_PIECE) + 1]
            if method == "dis":
                yield start, dis_flow(frames, backward=False)[0]
            else:
                yield start, raft_flow(frames, self._raft(), self.raft_iters, backward=False)[0]

    def _ground_truth_flow(self, task: EditTask) -> dict[str, torch.Tensor]:
        side = task.side
        if "flow_fwd" not in side or "flow_bwd" not in side:
            raise EstimatorError(self._no_gt(task, "optical flow", "estimators.flow=dis or raft"))
        if "occ_fwd" in side and "occ_bwd" in side:  # ground truth stays as exact as the dataset gives it
            return {k: side[k] for k in FLOW_KEYS}
        occ_fwd, occ_bwd = occlusion_masks(side["flow_fwd"], side["flow_bwd"])
        return {"flow_fwd": side["flow_fwd"], "flow_bwd": side["flow_bwd"], "occ_fwd": occ_fwd, "occ_bwd": occ_bwd}

    def flow_between(self, task: EditTask, pairs: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Flow directly between frames a and b of each pair (a < b), not chained over the frames between.

        flow_fwd (N, 2, H, W): pixel p of frame a moves to p + flow_fwd in frame b; flow_bwd: pixel p of
        frame b comes from p + flow_bwd in frame a; occ_fwd / occ_bwd (N, 1, H, W) by the forward-backward
        check. Ground truth (the synthetic dataset) is exact only for adjacent frames, so there the
        adjacent flows are chained (`chain_to_first`, occluded where the chain breaks).
        """
        pairs = [(int(a), int(b)) for a, b in pairs]
        t = task.video.num_frames
        bad = [p for p in pairs if not 0 <= p[0] < p[1] < t]
        if bad:
            raise EstimatorError(f"flow_between for video {task.video.id!r}: pairs {bad} must be (a, b) with "
                                 f"0 <= a < b < {t}")
        method = self.flow_method_for(task)
        if method == "gt":
            adjacent = self.flow(task)
            return _chained_pairs(adjacent, pairs)
        if method == "dis":
            params, compute = {"preset": "medium", "pairs": pairs}, lambda: dis_flow_pairs(task.video.pixels, pairs)
        else:
            model = self._raft()
            params = {"model": self.raft_name, "weights": model_fingerprint(model), "iters": self.raft_iters,
                      "pairs": pairs}
            compute = lambda: raft_flow_pairs(task.video.pixels, pairs, model, self.raft_iters)  # noqa: E731

        def with_occlusion() -> dict[str, torch.Tensor]:
            fwd, bwd = compute()
            occ_fwd, occ_bwd = occlusion_masks(fwd, bwd)
            return {"flow_fwd": fwd, "flow_bwd": bwd, "occ_fwd": occ_fwd, "occ_bwd": occ_bwd}

        return self._cached(task, f"flow-pairs-{method}", params, with_occlusion)

    def flow_method_for(self, task: EditTask) -> str:
        """The flow estimator that actually runs for this task ("gt", "raft" or "dis"), never "auto".

        auto: ground truth when the dataset has it, else RAFT when its weights load (injected or in the
        torch hub cache), else DIS.
        """
        if self.flow_method != "auto":
            return self.flow_method
        if "flow_fwd" in task.side and "flow_bwd" in task.side:
            return "gt"
        if self.flow_model is None and not self._raft_available:
            return "dis"
        try:
            self._raft()
        except EstimatorError:
            self._raft_available = False
            return "dis"
        return "raft"

    def _raft(self) -> torch.nn.Module:
        if self.flow_model is None:
            self.flow_model = load_raft(self.raft_name, self.device)
        return self.flow_model

    def depth(self, task: EditTask, model: torch.nn.Module | None = None, method: str | None = None) -> torch.Tensor:
        """(T, 1, H, W), larger = nearer. `model`: a transformers DPTForDepthEstimation (dpt); `method`:
        this call's estimator instead of the configured one (an editor whose paper names one)."""
        method = _choose(method or self.depth_method, DEPTH_METHODS, "depth")
        if method == "auto":
            method = "gt" if "depth" in task.side else "dpt"
        if method == "gt":
            if "depth" not in task.side:
                raise EstimatorError(self._no_gt(task, "depth", "estimators.depth=dpt with a depth model"))
            return task.side["depth"]
        if method == "depth_anything":
            if self.depth_model is None:
                self.depth_model = load_depth_anything(self.depth_anything_model, self.device)
            da = self.depth_model
            return self._cached(task, "depth-anything", {"model": model_fingerprint(da), "target": 518},
                                lambda: depth_anything_depth(task.video.frames, da))
        if model is None:
            raise EstimatorError(
                f"depth for video {task.video.id!r}: the dpt estimator needs a depth model; pass "
                "backbone.depth_estimator (the sd2-depth backbone carries one) or use a dataset with "
                "ground-truth depth (data=synthetic)")
        params = {"model": model_fingerprint(model), "resolution": 384}
        return self._cached(task, "depth-dpt", params, lambda: dpt_depth(task.video.frames, model))

    def edges(self, task: EditTask, kind: str | None = None, low: int = 50, high: int = 100) -> torch.Tensor:
        """(T, 1, H, W) edge maps in [0, 1]: "canny" (thresholds low/high) or "hed"."""
        kind = _choose(kind or self.edges_method, EDGE_METHODS, "edges")
        if kind == "canny":
            return self._cached(task, "edges-canny", {"low": low, "high": high, "image": "rgb"},
                                lambda: canny_edges(task.video.pixels, low, high))
        if self.hed_model is None:
            self.hed_model = load_hed(self.device)
        model = self.hed_model
        return self._cached(task, "edges-hed", {"model": model_fingerprint(model)},
                            lambda: hed_edges(task.video.frames, model))

    def mask(self, task: EditTask) -> torch.Tensor:
        """(T, 1, H, W) subject mask in {0, 1}; only from dataset annotations."""
        if "mask" not in task.side:
            raise EstimatorError(self._no_gt(task, "subject mask", "a dataset with mask annotations (data=synthetic)"))
        return task.side["mask"]

    def subject_mask(self, task: EditTask) -> tuple[torch.Tensor, str]:
        """(T, 1, H, W) subject mask and its source: "gt" / "dataset" (the dataset's masks; gt when
        generated), "salient" (CLIPSeg queried with the source prompt) or "none" (the whole frame:
        masks=none, or masks=dataset on a dataset without masks)."""
        if self.masks_method == "salient":
            if self.salient is None:
                self.salient = load_salient(self.salient_model, self.device)
            model, tokenizer = self.salient
            params = {"model": model_fingerprint(model), "prompt": task.source_prompt, "threshold": 0.5}
            masks = self._cached(task, "masks-salient", params,
                                 lambda: clipseg_masks(task.video.frames, task.source_prompt, model, tokenizer))
            return masks, "salient"
        if self.masks_method == "dataset" and "mask" in task.side:
            return task.side["mask"], "gt" if task.dataset in GROUND_TRUTH_DATASETS else "dataset"
        return whole_frame(task.video.pixels), "none"

    def correspondence(self, task: EditTask, method: str = "flow", backbone=None, prompt: str = "",
                       dino_model: str = DINO_MODEL, sd_size: int = SD_SIZE, dino_size: int = DINO_SIZE
                       ) -> torch.Tensor:
        """(T, 2, H, W) coordinates in frame 0 (NaN where none): ground truth where the task has it, else
        "flow" (adjacent flows chained to frame 0, NaN from the first occlusion on) or "sd_dino"
        (vedit.estimators.correspondence: SD-DINO nearest neighbours in frame 0 from `backbone`'s VAE
        and UNet conditioned on `prompt`, and DINOv2 `dino_model`, a Hub id or local path)."""
        if "correspondence" in task.side:
            return task.side["correspondence"]
        if method == "flow":
            flow = self.flow(task)
            return chain_to_first(flow["flow_bwd"], flow["occ_bwd"])
        if method != "sd_dino":
            raise EstimatorError(f"unknown correspondence estimator {method!r}; choose one of flow, sd_dino")
        if backbone is None:
            raise EstimatorError(f"correspondence=sd_dino for video {task.video.id!r} needs the SD backbone "
                                 "(the editor passes its own)")
        dino = self.dino_model
        if dino is None:
            if dino_model not in self.dino_models:
                self.dino_models[dino_model] = load_dinov2(dino_model, self.device)
            dino = self.dino_models[dino_model]
        params = {"dino": model_fingerprint(dino), "unet": model_fingerprint(backbone.unet),
                  "vae": model_fingerprint(backbone.vae), "prompt": prompt, "sizes": [sd_size, dino_size]}
        return self._cached(task, "correspondence-sd-dino", params, lambda: sd_dino_correspondence(
            task.video.frames, backbone, dino, backbone.encode_prompt(prompt), sd_size, dino_size))

    @staticmethod
    def _no_gt(task: EditTask, what: str, instead: str) -> str:
        source = f"dataset {task.dataset!r}" if task.dataset else "its dataset"
        return f"video {task.video.id!r}: {source} provides no ground-truth {what}; use {instead}"


def _chained_pairs(adjacent: dict[str, torch.Tensor], pairs: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Pair flows (as `Estimators.flow_between`) chained from adjacent-frame flows."""
    grid = None
    out: dict[str, list[torch.Tensor]] = {k: [] for k in FLOW_KEYS}
    for a, b in pairs:
        # backward: frame b's pixels into frame a; forward: the same chain over the reversed clip
        to_a = chain_to_first(adjacent["flow_bwd"][a:b], adjacent["occ_bwd"][a:b])[-1:]
        to_b = chain_to_first(adjacent["flow_fwd"][a:b].flip(0), adjacent["occ_fwd"][a:b].flip(0))[-1:]
        for coords, flow_key, occ_key in ((to_b, "flow_fwd", "occ_fwd"), (to_a, "flow_bwd", "occ_bwd")):
            if grid is None:
                grid = pixel_grid(*coords.shape[-2:], coords.dtype, coords.device)
            out[occ_key].append(torch.isnan(coords[:, :1]).float())
            out[flow_key].append(torch.nan_to_num(coords - grid, nan=0.0))
    return {k: torch.cat(v) for k, v in out.items()}
