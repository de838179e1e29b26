"""What every run records about itself: versions, machine, time."""
from __future__ import annotations

import importlib.metadata as md
import platform
import sys
import time
from typing import Any

from workbench._version import __version__

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
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return env
