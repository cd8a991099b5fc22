"""Errors shared by editors, estimators and the runner: each message names the input and what to do."""


class EditorError(ValueError):
    """Bad input to an editor: the message names the input and what to do."""


class EstimatorError(EditorError):
    """An estimate that cannot be produced: missing ground truth, model or weights."""


def error_summary(e: BaseException) -> str:
    """`Type: first line of the message` (at most 200 characters), for errors that wrap a library's."""
    first = next(iter(str(e).splitlines()), "")
    return f"{type(e).__name__}: {first[:200]}"
