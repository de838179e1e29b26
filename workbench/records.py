"""What every run records about itself: versions, machine, time."""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path
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


def unique_record_name(prefix: str, suffix: str = ".json") -> str:
    """``PREFIX-YYYYmmddTHHMMSS-<8 hex>SUFFIX``: sorts by time, and runs started in the
    same second (several extracts launched together) never share a name."""
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}{suffix}"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON through a temporary file renamed into place.

    A full disk or a kill leaves either the old file or none, never half a record;
    the temporary file is removed on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(obj, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # e.g. a read-only file system, where the temporary file never came to be
        if isinstance(e, OSError) and e.errno is not None:
            # Name the record asked for, not the temporary file.
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise
    return path
