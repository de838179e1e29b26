"""What every run records about itself: versions, machine, time."""
from __future__ import annotations

import contextlib
import errno
import importlib.metadata as md
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Iterator

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


def os_error_naming(e: OSError, path: str | os.PathLike) -> OSError:
    """``e`` as an OSError naming ``path`` (the file asked for, not a temporary one).

    numpy's short write carries no errno ("2048 requested and 992 written"); its only
    cause in practice is a full disk. Other errors without an errno are kept as they are.
    """
    code = e.errno
    if code is None and "requested and" in str(e):
        code = errno.ENOSPC
    if code is None:
        return e
    return OSError(code, e.strerror if e.errno is not None and e.strerror else os.strerror(code), str(path))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A temporary file beside ``path``, fsynced and renamed onto it on success.

    A crash or a full disk leaves the old file or the new one, never half; the
    temporary file is removed on failure, and an OSError names ``path``. The folder is
    fsynced too, where the platform allows, so the rename itself survives a crash. The
    one way the workbench writes a file that others read back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):  # e.g. a read-only file system, where it never came to be
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            named = os_error_naming(e, path)
            if named is not e:
                raise named from e
        raise
    with contextlib.suppress(OSError):  # Windows cannot open a folder
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as f:
        f.write(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON through :func:`atomic_file`; return ``path``."""
    atomic_write(path, json.dumps(obj, indent=2, default=str).encode())
    return Path(path)
