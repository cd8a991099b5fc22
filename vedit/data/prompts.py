"""Prompt files: {videos: {id: {source_prompt, edit_prompts}}} or the clips layout {clips: {id: {path, ...}}}.

`edit_prompts` is a list of prompts, or a mapping category -> prompt (LOVEU-TGVE's style / object /
background / multiple); the category travels with the prompt as `EditPrompt.category` into the records.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vedit.untrusted import inside
from vedit.video import VideoError

log = logging.getLogger("vedit.data")


class EditPrompt(str):
    """A target prompt: a plain `str` that also carries its category (None for a plain list of prompts)."""

    category: str | None

    def __new__(cls, text: str, category: str | None = None) -> EditPrompt:
        prompt = super().__new__(cls, text)
        prompt.category = category
        return prompt


@dataclass
class PromptEntry:
    source_prompt: str | None = None
    edit_prompts: list[str] = field(default_factory=list)  # EditPrompt where the file gives categories
    path: Path | None = None  # the clips layout names the video file or frame folder


PROMPT_KEYS = ("source_prompt", "edit_prompts", "path")
# Keys the shipped suites and clips files carry for people, not for vedit (read and ignored).
INFO_KEYS = ("frames", "subset", "origin", "category", "customized", "davis", "fps", "resolution", "license",
             "notes")


def load_prompts(prompts: str | Path | dict | None, base_dir: str | Path | None = None,
                 paths: bool = False, paths_root: str | Path | None = None) -> dict[str, PromptEntry]:
    """Read a prompts YAML (or an already-parsed dict). With `paths`, `path` entries (the clips layout) are
    read: relative to the file's folder, they must stay under `paths_root` (default: that folder), since a
    prompts file is untrusted input; without, they are ignored. A key that looks like a misspelt prompt key is an error naming the closest one."""
    if prompts is None:
        return {}
    if isinstance(prompts, dict):
        data, folder = prompts, Path(base_dir) if base_dir else None
    else:
        file = Path(prompts)
        if not file.exists():
            raise VideoError(f"prompts file {file} does not exist; fix the path or leave prompts unset")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as e:
            raise VideoError(f"prompts file {file} is not valid YAML: {e}") from e
        folder = file.parent
    if not isinstance(data, dict):
        raise VideoError(f"prompts {prompts}: expected a mapping with a 'videos' or 'clips' key")
    entries = data.get("videos", data.get("clips"))
    if not isinstance(entries, dict):
        raise VideoError(f"prompts {prompts}: expected a mapping with a 'videos' or 'clips' key, "
                         f"got keys {sorted(data)}")
    out = {}
    for vid, entry in entries.items():
        out[str(vid)] = _entry(entry or {}, f"prompts {prompts}: video {vid!r}", folder if paths else None,
                               paths_root, paths)
    return out


def _entry(entry: object, where: str, folder: Path | None, paths_root: str | Path | None,
           paths: bool) -> PromptEntry:
    if not isinstance(entry, dict):
        raise VideoError(f"{where}: expected a mapping with source_prompt and edit_prompts, got {entry!r}")
    for key in entry:
        if key not in PROMPT_KEYS + INFO_KEYS:
            close = difflib.get_close_matches(str(key), PROMPT_KEYS, n=1, cutoff=0.6)
            if close:
                raise VideoError(f"{where}: unknown key {key!r}; did you mean {close[0]!r}? "
                                 f"(prompt keys: {', '.join(PROMPT_KEYS)})")
            log.warning("%s: key %r is not one vedit reads (%s); ignored", where, key, ", ".join(PROMPT_KEYS))
    source = entry.get("source_prompt")
    if source is not None and not isinstance(source, str):
        raise VideoError(f"{where}: source_prompt must be a string, got {source!r}")
    edits = entry.get("edit_prompts") or []
    if isinstance(edits, str):
        edits = [edits]
    if isinstance(edits, dict):
        edits = [EditPrompt(str(text), str(category)) for category, text in edits.items()]
    elif isinstance(edits, list) and all(isinstance(e, str) for e in edits):
        edits = [str(e) for e in edits]
    else:
        raise VideoError(f"{where}: edit_prompts must be a prompt, a list of prompts or a mapping "
                         f"category -> prompt, got {edits!r}")
    path = entry.get("path") if paths else None
    if path:
        if folder is None:
            raise VideoError(f"{where}: path {path!r} needs a prompts file to be relative to")
        path = inside(folder, str(path), f"{where}: path", allowed=paths_root)
    return PromptEntry(source, edits, path or None)
