"""Prompt files: {videos: {id: {source_prompt, edit_prompts}}} or the clips layout {clips: {id: {path, ...}}}.

`edit_prompts` is a list of prompts, or a mapping category -> prompt (LOVEU-TGVE's style / object /
background / multiple); the category travels with the prompt as `EditPrompt.category` into the records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vedit.video import VideoError


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


def load_prompts(prompts: str | Path | dict | None, base_dir: str | Path | None = None) -> dict[str, PromptEntry]:
    """Read a prompts YAML (or an already-parsed dict); `path` entries are resolved against the file's folder."""
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
        entry = entry or {}
        edits = entry.get("edit_prompts") or []
        if isinstance(edits, str):
            edits = [edits]
        if isinstance(edits, dict):
            edits = [EditPrompt(str(text), str(category)) for category, text in edits.items()]
        else:
            edits = [str(e) for e in edits]
        path = entry.get("path")
        out[str(vid)] = PromptEntry(entry.get("source_prompt"), edits,
                                    (folder / path) if (path and folder) else (Path(path) if path else None))
    return out
