"""A content-addressed, memory-mapped store of decoded pixels: decode each image once, ever.

Layout (under ``root``; the feature cache's ``<root>/pixels`` by default)::

    <key[:2]>/<key>.npy    (C, H, W) pixels, C in {1, 3}: uint8 for 8-bit images,
                           float32 (already in [0, 1]) for the rest
    <key[:2]>/<key>.json   commit record: source SHA-256, settings, shape, dtype and the
                           SHA-256 of the array's bytes

``key`` hashes the image file's SHA-256, the decode settings and :data:`PIXEL_FORMAT`,
so a change to any of them misses instead of reusing pixels. An entry counts only once
its record exists; both files are written to a temporary name and renamed into place
(:func:`workbench.core.io.atomic_file`), and two writers of one image write the same
bytes, so whichever rename lands last changes nothing.

Exactness is the rule (features must not change): :meth:`PixelStore.get` returns the
very tensor :func:`~workbench.data.images.decode_image` gives with ``keep_gray=True``.
An 8-bit image is stored as uint8 only when ``uint8 / 255`` reproduces the decoded
tensor bit for bit (checked at write time); anything else (16-bit, float images) is
stored as the decoded float32 itself. No long-side cap is applied: resizing here would
change the pixels every backbone's own resize sees. The settings in the key leave room
for one (``max_side``), so a capped store could never be confused with this one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from workbench.core.hashing import stable_hash
from workbench.core.io import atomic_file, write_json_atomic
from workbench.data.images import decode_image, file_sha256
from workbench.errors import WorkbenchError

__all__ = ["PixelStore", "PixelProblem", "PixelStoreError", "PIXEL_FORMAT", "pixel_key"]

logger = logging.getLogger(__name__)

#: Part of every key. Bump it when decoding or the stored representation changes.
PIXEL_FORMAT = "pixels-v1"
#: The one decode setting offered: ``decode_image(keep_gray=True)``, no resizing.
_SETTINGS: dict[str, Any] = {"channels": "native", "max_side": None}
_DTYPES = ("uint8", "float32")


class PixelStoreError(WorkbenchError, ValueError):
    """A pixel-store entry that is not what its record says; the message names the file."""


@dataclass(frozen=True)
class PixelProblem:
    """One finding of :meth:`PixelStore.verify` (``severity``: ``"error"`` or ``"warning"``)."""

    file: str
    problem: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.severity.upper()}: pixel store {self.file}: {self.problem}"


def pixel_key(sha256: str) -> str:
    """The store key of an image whose file bytes hash to ``sha256``."""
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise PixelStoreError(f"pixel store key: {sha256!r} is not a hex SHA-256")
    return stable_hash({"format": PIXEL_FORMAT, "sha256": sha256, "settings": _SETTINGS}, compact=True)


def _as_stored(t: torch.Tensor) -> np.ndarray:
    """The array to store for a decoded tensor: uint8 where that is exact, else float32."""
    x = np.ascontiguousarray(t.numpy(), dtype=np.float32)
    u8 = np.rint(x * np.float32(255.0)).clip(0, 255).astype(np.uint8)
    if np.array_equal(u8.astype(np.float32) / np.float32(255.0), x):
        return u8
    return x


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    """A stored array as the float tensor decode_image gives (the same arithmetic)."""
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.astype(np.float32) / np.float32(255.0))
    return torch.from_numpy(np.array(arr, dtype=np.float32))  # a copy: never hand out the mapping


class PixelStore:
    """Decoded pixels keyed by the image's content hash (see the module docstring).

    Parameters
    ----------
    root
        Folder of the store (created on first write).
    check_reads
        Re-hash an entry's bytes on every read (cheap next to a decode). A damaged entry
        is then decoded again, with a warning naming it, and rewritten: never wrong pixels.
    strict_writes
        A miss that cannot be stored (full disk, read-only store) raises the OSError,
        naming the file, as the feature cache does; False logs one warning and goes on
        decoding without storing.
    reserve_bytes
        A miss is stored only while its file system keeps this much free beyond it
        (default 1 GiB): pixels are a saving, and must not take the last space the
        features (or anything else) need. Below it, images are decoded without storing
        (said once per process).

    Examples
    --------
    >>> store = PixelStore("features_cache/pixels")          # doctest: +SKIP
    >>> x = store.get(item)  # == decode_image(item.path, keep_gray=True, expect_sha256=item.sha256)  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, *, check_reads: bool = True, strict_writes: bool = True,
                 reserve_bytes: int = 1 << 30) -> None:
        self.root = Path(root)
        self.check_reads = check_reads
        self.strict_writes = strict_writes
        self.reserve_bytes = int(reserve_bytes)
        self._low_space = False
        # Per-process counters (a DataLoader worker keeps its own).
        self.hits = self.misses = self.repaired = 0
        self._write_failed = False

    def __repr__(self) -> str:
        return f"PixelStore({str(self.root)!r})"

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / key[:2]
        return d / f"{key}.npy", d / f"{key}.json"

    # -- reading --------------------------------------------------------------------------
    def load(self, sha256: str) -> np.ndarray | None:
        """The stored (C, H, W) array of an image (memory-mapped), or None when absent.

        Raises
        ------
        PixelStoreError
            The entry exists but its file, header or bytes disagree with its record.
        """
        npy, rec = self._paths(pixel_key(sha256))
        if not rec.exists():
            return None  # not committed (a writer may be between its two renames)
        return self._read(npy, rec, check=self.check_reads)

    @staticmethod
    def _read(npy: Path, rec: Path, *, check: bool) -> np.ndarray:
        try:
            meta = json.loads(rec.read_text())
            shape, dtype, digest = tuple(meta["shape"]), str(meta["dtype"]), str(meta["data_sha256"])
            key = pixel_key(meta["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PixelStoreError(f"{rec}: unreadable commit record ({e})") from e
        if key != rec.stem:
            raise PixelStoreError(f"{rec}: its record is of another image (key differs)")
        try:
            arr = np.load(npy, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # numpy's header parser raises OSError, ValueError, EOFError, TokenError, ...
            raise PixelStoreError(f"{npy}: unreadable array ({type(e).__name__}: {e})") from e
        if arr.shape != shape or str(arr.dtype) != dtype or dtype not in _DTYPES or len(shape) != 3 \
                or shape[0] not in (1, 3):
            raise PixelStoreError(f"{npy}: header says {arr.dtype} {arr.shape}, its record {dtype} {shape}")
        if check and hashlib.sha256(memoryview(arr).cast("B")).hexdigest() != digest:
            raise PixelStoreError(f"{npy}: pixel bytes do not match the SHA-256 of its record")
        return arr

    def get(self, item_or_sha: Any, path: str | os.PathLike | None = None, *,
            decode: Callable[..., torch.Tensor] = decode_image, raw: bool = False) -> torch.Tensor | np.ndarray:
        """The decoded image as :func:`decode_image` gives it with ``keep_gray=True``.

        ``item_or_sha``: a manifest item (its ``sha256`` and ``path``) or a hex SHA-256
        with ``path``. Read from the store when there; otherwise the file is decoded
        (its bytes must still hash to the digest) and stored. ``decode``: the decoder
        for a miss, called as ``decode_image`` is (the caller's own reference to it).
        ``raw``: a hit is returned as the stored, memory-mapped array itself (uint8 for
        8-bit images, a quarter of the bytes to move; ``uint8 / 255`` is the tensor),
        not converted; a miss is still the decoded tensor.

        Raises
        ------
        ImageDecodeError
            As :func:`decode_image`, for an image the store lacks.
        OSError
            With ``strict_writes``, when a decoded image cannot be stored (names the file).
        """
        if isinstance(item_or_sha, str):
            sha, p = item_or_sha, path
        else:
            sha, p = item_or_sha.sha256, item_or_sha.path if path is None else path
        if p is None:
            raise PixelStoreError(f"pixel store get({sha!r}): no image path to decode a missing entry from")
        if sha is None:  # an unvalidated item: key it by the bytes it has now
            sha = file_sha256(p)
        try:
            arr = self.load(sha)
        except PixelStoreError as e:
            logger.warning(f"{e}; decoding {p} again and replacing the entry")
            self.repaired += 1
            arr = None
        if arr is not None:
            self.hits += 1
            return arr if raw else _to_tensor(arr)
        self.misses += 1
        t = decode(p, keep_gray=True, expect_sha256=sha)
        if not self._room_for(t):
            return t
        try:
            self.put(sha, t)
        except OSError as e:
            if self.strict_writes:
                raise
            # Said once per process, not once per image.
            if not self._write_failed:
                logger.warning(f"pixel store {self.root}: could not store {p} ({e}); decoding without storing")
            self._write_failed = True
        return t

    # -- writing --------------------------------------------------------------------------
    def _room_for(self, t: torch.Tensor) -> bool:
        """Whether storing ``t`` leaves :attr:`reserve_bytes` free (logged once when not)."""
        if self.reserve_bytes <= 0:
            return True
        where = self.root
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            return True  # cannot tell: let the write itself succeed or fail
        if free - t.numel() * 4 >= self.reserve_bytes:
            return True
        if not self._low_space:
            logger.info(f"pixel store {self.root}: under {self.reserve_bytes / 2**20:.0f} MiB free; "
                        f"decoding without storing")
        self._low_space = True
        return False

    def put(self, sha256: str, decoded: torch.Tensor) -> Path:
        """Store a tensor decoded with ``keep_gray=True`` under ``sha256``; return the .npy path."""
        if decoded.ndim != 3 or decoded.shape[0] not in (1, 3) or decoded.dtype != torch.float32:
            raise PixelStoreError(f"pixel store put({sha256[:12]}...): expected a float32 (1|3, H, W) tensor, "
                                  f"got {decoded.dtype} {tuple(decoded.shape)}")
        arr = _as_stored(decoded.detach().cpu())
        npy, rec = self._paths(pixel_key(sha256))
        with atomic_file(npy) as f:
            np.lib.format.write_array(f, arr, allow_pickle=False)
        # Written last: it commits the entry (readers ignore an .npy without it).
        write_json_atomic(rec, {"format": PIXEL_FORMAT, "sha256": sha256, "settings": _SETTINGS,
                                "shape": list(arr.shape), "dtype": str(arr.dtype),
                                "data_sha256": hashlib.sha256(memoryview(arr).cast("B")).hexdigest()})
        return npy

    # -- maintenance ----------------------------------------------------------------------
    def _files(self) -> Iterator[Path]:
        if self.root.is_dir():
            for d in sorted(self.root.iterdir()):
                if d.is_dir() and len(d.name) == 2:
                    yield from sorted(d.iterdir())

    def keys(self) -> list[str]:
        """Keys of the committed entries."""
        return [p.stem for p in self._files() if p.suffix == ".json" and not p.name.startswith(".")]

    def size(self) -> dict[str, int]:
        """``{"entries": n, "bytes": total}`` of the committed entries."""
        keys = self.keys()
        total = sum(sum(q.stat().st_size for q in self._paths(k) if q.exists()) for k in keys)
        return {"entries": len(keys), "bytes": total}

    def verify(self) -> list[PixelProblem]:
        """Re-read and re-hash every entry; list damaged entries and leftovers of interrupted writes."""
        problems: list[PixelProblem] = []
        for p in self._files():
            if p.name.endswith(".part"):
                problems.append(PixelProblem(str(p), "leftover of an interrupted write", "warning"))
            elif p.suffix == ".npy" and not p.with_suffix(".json").exists():
                problems.append(PixelProblem(str(p), "no commit record (an interrupted write)", "warning"))
            elif p.suffix == ".json":
                npy = p.with_suffix(".npy")
                if not npy.exists():
                    problems.append(PixelProblem(str(npy), "missing (its commit record exists)"))
                    continue
                try:
                    self._read(npy, p, check=True)
                except PixelStoreError as e:
                    bad = p if str(e).startswith(f"{p}: ") else npy  # the record or the array
                    problems.append(PixelProblem(str(bad), str(e).removeprefix(f"{bad}: ")))
        return problems
