"""Checks for what is read from stores, prompt files and suites: untrusted input.

Anyone who can write a shared store or hand over a prompts file must not be able to make vedit run
code or touch files outside the folder the input belongs to. Paths named inside such files are
relative, stay under their folder without `..`, and ids used as path parts are plain names;
everything written is checked to resolve under the output folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from vedit.video import VideoError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class UntrustedInputError(VideoError):
    """A file read from a store, prompts file or suite names something it may not."""


def inside(root: str | Path, relative: str | os.PathLike, what: str, allowed: str | Path | None = None) -> Path:
    """`root / relative` (normalised), refused unless `relative` is a relative path that stays, by its own
    parts, under `allowed` (default: `root`); links are not followed (see `check_written_under` for writes)."""
    text = str(relative)
    base = os.path.abspath(allowed if allowed is not None else root)
    full = os.path.abspath(os.path.join(root, text)) if text else ""
    if not text or Path(text).is_absolute() or PurePosixPath(text).is_absolute() or \
            (full != base and not full.startswith(base.rstrip(os.sep) + os.sep)):
        raise UntrustedInputError(f"{what}: path {text!r} must be relative and stay inside {base}; move the file "
                                  "there (or widen the allowed folder in the config)")
    return Path(os.path.normpath(os.path.join(root, text)))


def check_written_under(path: Path, root: Path, what: str) -> Path:
    """`path` if it resolves (links followed) under `root`; else UntrustedInputError."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise UntrustedInputError(f"{what}: {path} resolves to {resolved}, outside {base}; refusing to write it")
    return path


def plain_name(value: object, what: str) -> str:
    """`value` as a name usable as one path part (letters, digits, `_ . + -`; not starting with a dot)."""
    text = str(value)
    if not _NAME.match(text) or text in (".", ".."):
        raise UntrustedInputError(f"{what}: {text!r} is not a plain name (letters, digits, '_', '.', '+', '-', "
                                  "not starting with '.')")
    return text
