"""Errors shared by editors, estimators and the runner: each message names the input and what to do."""

from __future__ import annotations

from typing import Any, Callable


class EditorError(ValueError):
    """Bad input to an editor: the message names the input and what to do."""


class EstimatorError(EditorError):
    """An estimate that cannot be produced: missing ground truth, model or weights."""


def error_summary(e: BaseException) -> str:
    """`Type: first line of the message` (at most 200 characters), for errors that wrap a library's."""
    first = next(iter(str(e).splitlines()), "")
    return f"{type(e).__name__}: {first[:200]}"


def load_estimator_weights(load: Callable[[], Any], needs: str, source: str, ways_out: str) -> Any:
    """`load()`, or an EstimatorError: "<needs> <source> and could not load them: <why>. Put them in the
    Hugging Face cache (HF_HOME), <ways_out>"."""
    try:
        return load()
    except Exception as e:  # noqa: BLE001 - hub, OS and parse errors all mean "not available"
        raise EstimatorError(f"{needs} {source!r} and could not load them: {error_summary(e)}. "
                             f"Put them in the Hugging Face cache (HF_HOME), {ways_out}") from e
