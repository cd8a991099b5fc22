"""Export a finished `suite=tgve2023` sweep into the LOVEU-TGVE-2023 submission layout.

    python -m vedit.export_tgve outputs/results submissions/vedit-pix2video --method pix2video

writes, as the challenge's README asks (and its scripts/run_eval.py reads):

    <out>/DAVIS_480p/<video>/{style,object,background,multiple}/00000.jpg ...
    <out>/youtube_480p/...
    <out>/videvo_480p/...

one frame file per edited frame at 480x480. Frames come from the cell's lossless edited.mkv (cells of
older versions: frames.pt, else edited.mp4). One configuration per export: a store holding several
methods, backbones or seeds needs --method / --backbone / --seed. Cells the suite lists but the store
lacks (not run, failed, or with another frame count) are reported and make the exit status 1;
everything found is written.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from vedit.data.tgve import CATEGORIES, SUBSETS, read_suite
from vedit.leaderboard import EmptyStoreError, load_records
from vedit.store import read_edited_frames
from vedit.untrusted import UntrustedInputError, check_written_under, plain_name
from vedit.video import VideoError, frames_to_uint8

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "suites" / "loveu-tgve-2023.yaml"


def select(records: list[dict], method: str | None = None, backbone: str | None = None,
           seed: int | None = None) -> dict[tuple[str, str], dict]:
    """(video id, category) -> the one finished TGVE record of the chosen configuration."""
    chosen = [r for r in records if r.get("status") == "ok" and (r.get("data") or {}).get("name") == "tgve"
              and r.get("prompt_category") and (method is None or r.get("method") == method)
              and (backbone is None or r.get("backbone_kind") == backbone) and (seed is None or r.get("seed") == seed)]
    configs = sorted({(str(r.get("method")), str(r.get("backbone_kind")), str(r.get("seed"))) for r in chosen})
    if len(configs) > 1:
        listed = ", ".join(f"method={m} backbone={b} seed={s}" for m, b, s in configs)
        raise SystemExit(f"error: the store holds several configurations ({listed}); choose one with "
                         "--method, --backbone and --seed")
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in chosen:
        cells[(r["video"], r["prompt_category"])].append(r)
    doubles = {k: [r["key"] for r in v] for k, v in cells.items() if len(v) > 1}
    if doubles:
        (video, category), keys = next(iter(doubles.items()))
        raise SystemExit(f"error: {len(doubles)} (video, category) pairs have several finished cells, e.g. {video} "
                         f"{category}: {keys} (different method parameters?); export from a store with one")
    return {k: v[0] for k, v in cells.items()}


def edited_frames(record: dict) -> torch.Tensor:
    """(T, 3, H, W) uint8: the cell's lossless edited.mkv (older cells: frames.pt, else edited.mp4)."""
    return read_edited_frames(Path(record["_dir"]), (record.get("outputs") or {}).get("edited", "edited.mp4"))


def write_frames(frames: torch.Tensor, folder: Path, ext: str = "jpg", size: int = 480, quality: int = 95) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(frames_to_uint8(frames)):
        image = Image.fromarray(np.ascontiguousarray(array))
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.LANCZOS)
        image.save(folder / f"{i:05d}.{ext}", **({"quality": quality} if ext == "jpg" else {}))


def submission_folder(out: Path, video: str, category: str) -> Path:
    """`out/<subset>/<video>/<category>` for a challenge id and category; a stored record is untrusted, so
    anything else (another subset, `..`, a path) is refused, and the folder must resolve under `out`."""
    subset, _, name = str(video).partition("/")
    if subset not in SUBSETS or category not in CATEGORIES:
        raise UntrustedInputError(f"({subset!r} is not one of {list(SUBSETS)} or {category!r} not one of "
                                  f"{list(CATEGORIES)})")
    folder = Path(out) / subset / plain_name(name, "video name") / category
    return check_written_under(folder, Path(out), "submission folder")


def expected_cells(suite: Path) -> dict[tuple[str, str], int]:
    """(video id, category) -> frame count, from the suite file."""
    videos = read_suite(suite)["videos"]
    return {(f"{e['subset']}/{name}", category): int(e["frames"])
            for name, e in videos.items() for category in e["edit_prompts"]}


def export(stores: list[str | Path], out: str | Path, method: str | None = None, backbone: str | None = None,
           seed: int | None = None, suite: str | Path = SUITE, ext: str = "jpg", size: int = 480,
           quality: int = 95) -> list[str]:
    """Write the submission folder; returns the problems (suite cells missing or of another length)."""
    cells = select(load_records([Path(s) for s in stores], strict=True), method, backbone, seed)
    expected = expected_cells(Path(suite))
    problems = []
    for (video, category), record in sorted(cells.items()):
        try:
            folder = submission_folder(Path(out), video, category)
        except UntrustedInputError as e:
            problems.append(f"{video!r} {category!r}: not a TGVE cell {e}, skipped")
            continue
        frames = edited_frames(record)
        want = expected.get((video, category))
        if want is not None and frames.shape[0] != want:
            problems.append(f"{video} {category}: {frames.shape[0]} frames, the suite has {want} (written anyway)")
        write_frames(frames, folder, ext, size, quality)
    problems += [f"{video} {category}: no finished cell" for video, category in sorted(set(expected) - set(cells))]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vedit.export_tgve", description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="+", help="result store(s) of the sweep")
    parser.add_argument("out", help="submission folder to write (<subset>/<video>/<category>/00000.jpg)")
    parser.add_argument("--method", default=None)
    parser.add_argument("--backbone", default=None, help="backbone kind: paper | tiny | random")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--suite", default=str(SUITE), help="suite file listing the expected cells")
    parser.add_argument("--ext", choices=["jpg", "png"], default="jpg", help="the challenge's scorer reads *.jpg")
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    args = parser.parse_args(argv)
    try:
        total = len(expected_cells(Path(args.suite)))
        problems = export(args.store, args.out, args.method, args.backbone, args.seed, args.suite, args.ext,
                          args.size, args.quality)
    except (EmptyStoreError, VideoError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    print(f"wrote {args.out}; {len(problems)} problem(s) against the suite's {total} cells")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
