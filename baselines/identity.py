"""`identity`: returns the source video. The sanity bound for temporal metrics."""

from __future__ import annotations

from vedit.editors.base import Editor, PhaseTimer
from vedit.registry import EDITORS
from vedit.task import EditResult, EditTask


@EDITORS.register("identity")
class IdentityEditor(Editor):
    name = "identity"
    prompts_needed = ()  # copies the source: runs on videos without prompts (data.prompts=null)

    def edit(self, task: EditTask) -> EditResult:
        self.check_inputs(task)
        timer = PhaseTimer()
        with timer.phase("sampling"):
            frames = task.video.pixels  # as stored (uint8 for decoded files): no float copy
        return timer.result(frames)
