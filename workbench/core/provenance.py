"""What every run records about itself: package versions, the machine, a unique name."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys
import time
import uuid
from typing import Any

from workbench._version import __version__

__all__ = ["package_versions", "environment", "unique_record_name"]

_PACKAGES = ("torch", "torchvision", "timm", "numpy", "pandas", "scikit-learn", "pillow", "tifffile")


#: Distributions that install a module under another name (the CPU-only XGBoost wheel).
_ALIASES = {"xgboost": ("xgboost-cpu",)}


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    out = {"python": sys.version.split()[0], "workbench": __version__}
    for name in _PACKAGES + extra:
        for dist in (name, *_ALIASES.get(name, ())):
            try:
                out[name] = md.version(dist)
                break
            except md.PackageNotFoundError:
                out[name] = "not installed"
    return out


def environment() -> dict[str, Any]:
    """Versions plus the machine the run happened on."""
    import torch

    env: dict[str, Any] = {
        "versions": package_versions(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return env


def unique_record_name(prefix: str, suffix: str = ".json") -> str:
    """``PREFIX-YYYYmmddTHHMMSS-<8 hex>SUFFIX``: sorts by time, and runs started in the
    same second (several extracts launched together) never share a name."""
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}{suffix}"
