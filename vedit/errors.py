"""Errors shared by editors, estimators and the runner: each message names the input and what to do."""


class EditorError(ValueError):
    """Bad input to an editor: the message names the input and what to do."""


class EstimatorError(EditorError):
    """An estimate that cannot be produced: missing ground truth, model or weights."""
