"""Host -> device copies on the hot paths."""

from __future__ import annotations

import torch


def to_device(values: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor copied to `device` without waiting for it (pinned, non-blocking) where it is a GPU: a
    plain copy would wait for all queued work, and the host could not run ahead of the device."""
    if torch.device(device).type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)
