"""Files others read back: written atomically (temporary file, fsync, rename, folder fsync)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Iterator

__all__ = ["atomic_file", "atomic_write", "write_json_atomic", "os_error_naming"]


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
