"""The Video type and reading/writing videos (PyAV streams; folders of images).

Frames are kept as they were read (uint8 for decoded files: 1 byte per value) and converted to float
[0, 1] only where a method needs them, whole (`video.frames`) or a chunk at a time (`video.chunks`).
Reading and writing are streams: a reader with a transform holds only the transformed frames.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np
import torch


class FrameTransform(Protocol):
    """What `read_video` needs of a transform (vedit.data.transforms.Transform is one): this low-level
    module knows nothing of datasets."""

    stride: int

    def frames_needed(self) -> int | None: ...

    def stream(self, frames: Iterable[np.ndarray], video_id: str,
               expected: int | None = None) -> tuple[torch.Tensor, dict]: ...


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif")
CHUNK = 16  # frames per conversion / encoding chunk

log = logging.getLogger("vedit.video")


class VideoError(ValueError):
    """A video that cannot be used: unreadable, empty, too short, odd size."""


class Video:
    """Frames (T, C, H, W), uint8 or float32 in [0, 1], on the CPU; `fps`; `id`.

    `pixels` is the stored tensor; `frames` is float32 [0, 1] (a new tensor of 12 bytes per pixel
    when stored as uint8: use `chunks` for long videos). `meta` says where the frames came from
    (source size, crop box, output size, frame counts, warnings) and goes into every record.
    """

    def __init__(self, frames: torch.Tensor, fps: float, id: str, meta: dict | None = None) -> None:
        self.pixels, self.fps, self.id = frames, fps, id
        self._float: weakref.ref | None = None
        self.meta = dict(meta or {})
        f = frames
        if f.ndim != 4 or f.shape[1] != 3:
            raise VideoError(f"video {self.id!r}: frames must be (T, 3, H, W), got {tuple(f.shape)}")
        if f.shape[0] == 0:
            raise VideoError(f"video {self.id!r} has no frames")
        if f.dtype != torch.uint8 and not f.is_floating_point():
            raise VideoError(f"video {self.id!r}: frames must be uint8 or float in [0, 1], got {f.dtype}")

    def __repr__(self) -> str:
        return f"Video(id={self.id!r}, frames={tuple(self.pixels.shape)} {self.pixels.dtype}, fps={self.fps})"

    @property
    def frames(self) -> torch.Tensor:
        """(T, 3, H, W) float32 in [0, 1]. Converted on first use and shared while anyone holds it
        (a weak reference), so callers that each ask for it do not each get a copy; treat it as read-only."""
        if not self.pixels.is_floating_point():
            cached = self._float() if self._float is not None else None
            if cached is None:
                cached = to_float(self.pixels)
                self._float = weakref.ref(cached)
            return cached
        return self.pixels.float()

    def chunks(self, size: int = CHUNK) -> Iterator[torch.Tensor]:
        """Float32 [0, 1] frames, `size` at a time."""
        for start in range(0, self.num_frames, size):
            yield to_float(self.pixels[start:start + size])

    @property
    def num_frames(self) -> int:
        return self.pixels.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.pixels.shape[2], self.pixels.shape[3]

    def content_hash(self) -> str:
        """Hash of the frame contents (quantised to 8 bits, so re-reads hash the same)."""
        if not hasattr(self, "_hash"):
            h = hashlib.sha256()
            h.update(str(tuple(self.pixels.shape)).encode())
            for start in range(0, self.num_frames, CHUNK):
                h.update(to_uint8(self.pixels[start:start + CHUNK]).contiguous().numpy().tobytes())
            self._hash = h.hexdigest()[:16]
        return self._hash

    def check_editable(self, multiple: int = 8, min_frames: int = 2) -> None:
        """Raise a VideoError naming the video unless editors can process it."""
        t, (h, w) = self.num_frames, self.size
        if t < min_frames:
            raise VideoError(
                f"video {self.id!r} has {t} frame(s); editing needs at least {min_frames}. "
                "Use a longer clip or drop it from the dataset."
            )
        if h % multiple or w % multiple:
            raise VideoError(
                f"video {self.id!r} is {w}x{h}; width and height must be divisible by {multiple}. "
                "Set data.transform.size (e.g. data.transform.size=[512,512]) to resize."
            )
        if self.pixels.is_floating_point() and not all(torch.isfinite(c).all() for c in self.pixels.split(CHUNK)):
            raise VideoError(f"video {self.id!r} contains NaN or infinite pixel values")


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 [0, 1]; float tensors pass through (as float32)."""
    return frames.float().div_(255.0) if frames.dtype == torch.uint8 else frames.float()


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8 (rounded); uint8 passes through."""
    if frames.dtype == torch.uint8:
        return frames
    return frames.detach().float().clamp(0, 1).mul(255).round_().to(torch.uint8)


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] (or uint8) -> (T, H, W, 3) uint8."""
    return to_uint8(frames).permute(0, 2, 3, 1).cpu().numpy()


def exact_rate(fps: float | Fraction) -> Fraction:
    """The frame rate as a fraction: 29.97002997 -> 30000/1001 (NTSC rates stay exact)."""
    return Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(10)


def read_video(path: str | Path, video_id: str | None = None, max_frames: int | None = None,
               transform: FrameTransform | None = None, frame_rate: float | None = None) -> Video:
    """Read an mp4 (or other container) with PyAV, or a folder of image frames in name order, which
    plays at `frame_rate` (None: unknown, fps 0). `meta["fps"]` is the source's rate and where it came from.

    Frames are decoded one at a time; with a `transform` each is cut, cropped and resized as it
    arrives, so memory holds only the output (uint8). A file that decodes to fewer frames than its
    header says gives a warning, also kept in `video.meta["warnings"]`.
    """
    path = Path(path)
    vid = video_id or path.stem
    if transform is not None and transform.frames_needed() is not None:
        max_frames = min(max_frames or transform.frames_needed(), transform.frames_needed())
    if not path.exists():
        raise VideoError(f"video {vid!r}: {path} does not exist")
    meta: dict = {"path": str(path)}
    errors: list[str] = []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise VideoError(f"video {vid!r}: folder {path} holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
        files = files[:max_frames] if max_frames else files
        fps, expected, decoded = Fraction(frame_rate or 0), len(files), _image_frames(files, vid)
        meta["fps"] = {"value": float(fps), "from": "data.frame_rate" if frame_rate else "unknown"}
    else:
        container, fps, expected = _open(path, vid)
        meta["fps"] = {"value": float(fps), "from": "container"}
        decoded = _decoded_frames(container, path, vid, max_frames, errors)
    counter = _Counter(decoded)
    if transform is not None:
        pixels, geometry = transform.stream(counter, vid, expected=expected if not max_frames
                                            else min(expected or max_frames, max_frames))
        meta.update(geometry)
        fps = fps / transform.stride
    else:
        arrays = list(counter)
        if not arrays:
            raise VideoError(f"video {vid!r}: {path} decodes to no frames")
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    meta["decoded_frames"] = counter.count
    if expected:
        meta["header_frames"] = expected
        wanted = min(expected, max_frames) if max_frames else expected
        if counter.count < wanted or errors:
            message = (f"video {vid!r}: {path} decoded to {counter.count} frames but its header says {expected}"
                       + (f" ({errors[0]})" if errors else "")
                       + "; the file is probably truncated (the decoded frames are used)")
            log.warning(message)
            meta.setdefault("warnings", []).append(message)
    return Video(pixels, fps=float(fps), id=vid, meta=meta)


def _image_frames(files: list[Path], vid: str) -> Iterator[np.ndarray]:
    from PIL import Image

    for f in files:
        try:
            yield np.array(Image.open(f).convert("RGB"))
        except Exception as e:  # noqa: BLE001 - report which frame is broken
            raise VideoError(f"video {vid!r}: cannot read frame {f}: {e}") from e


def _open(path: Path, vid: str):
    import av

    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except Exception as e:  # noqa: BLE001 - PyAV raises many types for broken files
        raise VideoError(f"video {vid!r}: cannot decode {path}: {e}. Check the file plays, or re-encode it.") from e
    return container, Fraction(stream.average_rate or 0), int(stream.frames or 0)


def _decoded_frames(container, path: Path, vid: str, max_frames: int | None, errors: list[str]) -> Iterator[np.ndarray]:
    """Frames as (H, W, 3) uint8; a decoding error after some frames (a truncated file) ends the
    stream and is noted in `errors`, one before any frame is a VideoError."""
    n = 0
    try:
        with container:
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24")
                n += 1
                if max_frames and n >= max_frames:
                    break
    except VideoError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV raises many types for broken files
        if n == 0:
            raise VideoError(f"video {vid!r}: cannot decode {path}: {e}. Check the file plays, or re-encode it.") from e
        errors.append(f"decoding stopped after frame {n}: {type(e).__name__}: {e}")


class _Counter:
    """Iterates (H, W, 3) uint8 arrays and counts them."""

    def __init__(self, frames: Iterable[np.ndarray]) -> None:
        self.frames, self.count = frames, 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self.frames:
            self.count += 1
            yield frame


def write_video(path: str | Path, frames: torch.Tensor | Iterable[torch.Tensor], fps: float = 10.0,
                crf: int = 18, lossless: bool = False) -> None:
    """Write (T, 3, H, W) frames (uint8, or float in [0, 1]) -- or an iterable of such chunks -- as
    H.264 mp4 (yuv420p: odd sizes are padded), or with `lossless` as FFV1 RGB (any size, every value
    kept; Matroska), converting one chunk at a time. The frame rate is kept exact (29.97 fps is
    written as 30000/1001)."""
    import av

    chunks = frames.split(CHUNK) if isinstance(frames, torch.Tensor) else frames
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = None
        for chunk in chunks:
            arr = frames_to_uint8(chunk)
            _, h, w, _ = arr.shape
            ph, pw = (h, w) if lossless else (h + h % 2, w + w % 2)
            if (ph, pw) != (h, w):
                arr = np.pad(arr, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            if stream is None and lossless:
                stream = container.add_stream("ffv1", rate=exact_rate(fps))
                stream.width, stream.height, stream.pix_fmt = pw, ph, "bgr0"
            elif stream is None:
                stream = container.add_stream("libx264", rate=exact_rate(fps))
                stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
                stream.options = {"crf": str(crf), "preset": "ultrafast"}  # encoder setup dominates short clips
            for img in arr:
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)


def side_by_side(source: torch.Tensor, edited: torch.Tensor, chunk: int = CHUNK) -> Iterator[torch.Tensor]:
    """Chunks of source | edited (float [0, 1]) along width; the source is resized to the edited size.

    `source` is what the method saw (the video after the data transform), not the original file."""
    n = min(source.shape[0], edited.shape[0])
    for start in range(0, n, chunk):
        src, out = to_float(source[start:start + chunk]), to_float(edited[start:min(start + chunk, n)])
        src = src[:out.shape[0]]
        if src.shape[-2:] != out.shape[-2:]:
            src = torch.nn.functional.interpolate(src, size=out.shape[-2:], mode="bilinear", antialias=True)
        yield torch.cat([src, out], dim=-1)
