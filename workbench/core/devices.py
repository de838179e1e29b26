"""Which device and which precision: one rule for extraction, fine-tuning and Y-Net boxes.

``None``/``"auto"`` means the GPU when there is one. torch is imported when a function
runs, so this bottom layer stays cheap to import (the command line's ``--help``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device", "resolve_precision"]


def resolve_device(device: "str | torch.device | None") -> "torch.device":
    """``None``/``"auto"``: ``cuda`` when a GPU is there, else ``cpu``; anything else as given."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: "torch.device") -> str:
    """``auto``: bf16 (fp16 without bf16 support) on a GPU, fp32 on the CPU; anything else as given."""
    import torch

    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    return precision
