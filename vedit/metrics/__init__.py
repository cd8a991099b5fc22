"""Metrics: CLIP text/image/frame accuracy, warp error variants, motion alignment, cost. Look them up
through `vedit.registry.METRICS`; `docs/METRICS.md` compares each with the papers' numbers.

Every metric declares its `convention` (scale, pairing, resolution) and its `config(task)` (models,
flow estimator that ran, parameters): values are stored per configuration (`vedit.metrics.scoring`),
so results stay comparable only where conventions match and are never read back stale.
"""

from vedit.metrics.base import Metric, MetricError

__all__ = ["Metric", "MetricError"]
