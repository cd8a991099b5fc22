"""Loading the metrics' Hugging Face models: one error that names the model and the ways out."""

from __future__ import annotations

from typing import Any, Callable

from vedit.metrics.base import MetricError


def load_or_explain(what: str, source: str, option: str, load: Callable[[], Any]) -> Any:
    """`load()`, or a MetricError naming `what` (the metric), the Hub id or path and the option to set."""
    try:
        return load()
    except MetricError:
        raise
    except Exception as e:  # noqa: BLE001 - the hub and transformers raise many types when weights are absent
        raise MetricError(
            f"cannot load {what} from {source!r}: {type(e).__name__}: {e}. Weights are read from the Hugging Face "
            f"cache: download {source} where there is network (HF_HOME pointing at that cache), or give a local "
            f"folder in metrics.options.{option}, or leave the metric out of metrics.names. Without network, "
            "HF_HUB_OFFLINE=1 skips the hub's retries") from e
