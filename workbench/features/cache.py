"""A content-addressed, append-only feature cache.

Layout (under ``root``, ``features_cache/`` by default)::

    v1/<key[:2]>/<key>/meta.json          what the key hashes (backbone, weights digest,
                                           tap, preprocessing, precision, dtype, code version)
    v1/<key[:2]>/<key>/<shard>.npy         (rows, dim) features, float32 or float16
    v1/<key[:2]>/<key>/<shard>.keys.npy    (rows,) row keys: hex SHA-256 of image bytes (+ box)
    v1/<key[:2]>/<key>/<shard>.json        commit record: rows, dim, dtype, SHA-256 of both files

An entry's key is the SHA-256 of its canonical ``meta.json`` fields, so anything that
changes a feature changes the key (joblib.Memory's rule; CLIP_benchmark's folder-name
cache is the mistake avoided). A shard counts only once its commit record exists; every
file is written to a temporary name and renamed into place, so a killed writer leaves
at most an orphan that ``gc`` removes, and concurrent writers never touch the same
file. Reads memory-map the shards.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from filelock import FileLock

from workbench.data.images import file_sha256

__all__ = ["FeatureCache", "CacheEntry", "CacheCorruptError", "CacheProblem", "entry_key", "FORMAT"]

FORMAT = "v1"
_KEY_BYTES = 64  # hex SHA-256


class CacheCorruptError(RuntimeError):
    """A cache entry that cannot be read as committed; the message names it."""


@dataclass(frozen=True)
class CacheProblem:
    """One finding of :meth:`FeatureCache.verify`."""

    entry: str
    name: str  # backbone@weights:tap of the entry, when readable
    file: str
    problem: str
    severity: str = "error"  # "error" (corrupt) or "warning" (interrupted write, removable by gc)

    def __str__(self) -> str:
        return f"{self.severity.upper()}: entry {self.entry[:16]} ({self.name}) {self.file}: {self.problem}"


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def entry_key(fields: Mapping[str, Any]) -> str:
    """The cache key of an entry: SHA-256 of its canonical JSON fields."""
    return hashlib.sha256(_canonical(fields)).hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> str:
    """Save ``array`` as .npy atomically; return the file's SHA-256."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    return digest


def _npy_nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Size of an .npy file holding ``shape``/``dtype`` (header included)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return buf.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize


class CacheEntry:
    """One key's worth of features: rows for many images, appended in shards."""

    def __init__(self, root: Path, key: str, meta: Mapping[str, Any] | None = None):
        self.key = key
        self.dir = root / FORMAT / key[:2] / key
        self._meta = dict(meta) if meta is not None else None
        self._index: dict[str, tuple[str, int]] | None = None
        self._arrays: dict[str, np.ndarray] = {}

    # -- metadata -----------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            try:
                self._meta = json.loads((self.dir / "meta.json").read_text())
            except (OSError, ValueError) as e:
                raise CacheCorruptError(f"cache entry {self.dir}: unreadable meta.json ({e})") from e
        return self._meta

    @property
    def name(self) -> str:
        m = self.meta.get("fields", {})
        return f"{m.get('backbone', '?')}@{m.get('weights_id', '?')}:{m.get('tap', '?')}"

    @property
    def dim(self) -> int:
        return int(self.meta["fields"]["dim"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["fields"]["dtype"])

    def ensure(self) -> None:
        """Create the entry folder and its ``meta.json`` if missing (idempotent, atomic)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "meta.json"
        if not path.exists():
            _atomic_write_bytes(path, json.dumps(self.meta, indent=2, sort_keys=True).encode())

    # -- shards ---------------------------------------------------------------------------
    def _committed(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name[: -len(".json")] for p in self.dir.glob("shard-*.json"))

    def _load_index(self) -> dict[str, tuple[str, int]]:
        index: dict[str, tuple[str, int]] = {}
        for shard in self._committed():
            keys = self._open_shard(shard)[1]
            for i, k in enumerate(keys):
                # Rows computed twice (two writers racing) are identical; keep the first.
                index.setdefault(k.decode("ascii"), (shard, i))
        return index

    def _open_shard(self, shard: str) -> tuple[np.ndarray, np.ndarray]:
        rec_path = self.dir / f"{shard}.json"
        try:
            rec = json.loads(rec_path.read_text())
            feats_path = self.dir / f"{shard}.npy"
            keys_path = self.dir / f"{shard}.keys.npy"
            shape = (int(rec["rows"]), int(rec["dim"]))
            for p, shp, dt in ((feats_path, shape, rec["dtype"]), (keys_path, (shape[0],), f"S{_KEY_BYTES}")):
                size = p.stat().st_size
                expected = _npy_nbytes(shp, np.dtype(dt))
                if size != expected:
                    raise ValueError(f"{p.name} is {size} bytes, expected {expected} (truncated or altered)")
            feats = np.load(feats_path, mmap_mode="r", allow_pickle=False)
            keys = np.load(keys_path, allow_pickle=False)
            if feats.shape != shape or keys.shape != (shape[0],):
                raise ValueError(f"shape {feats.shape} / {keys.shape} does not match its record {shape}")
        except (OSError, ValueError, KeyError) as e:
            raise CacheCorruptError(
                f"cache entry {self.key[:16]} ({self.name}), shard {shard}: {e}. "
                f"Run `workbench cache verify` to list damage and `workbench cache gc --remove-corrupt` "
                f"to drop it (its rows are then recomputed)."
            ) from e
        self._arrays[shard] = feats
        return feats, keys

    def index(self, refresh: bool = False) -> dict[str, tuple[str, int]]:
        """Row key -> (shard, row) over all committed shards."""
        if self._index is None or refresh:
            self._arrays.clear()
            self._index = self._load_index()
        return self._index

    def missing(self, row_keys: Iterable[str]) -> list[str]:
        """The row keys not yet in the entry, in the order given (duplicates dropped)."""
        idx = self.index(refresh=True)
        seen: set[str] = set()
        out = []
        for k in row_keys:
            if k not in idx and k not in seen:
                seen.add(k)
                out.append(k)
        return out

    def write(self, row_keys: Sequence[str], features: np.ndarray) -> str:
        """Append rows as one new shard, atomically; return the shard's name."""
        features = np.ascontiguousarray(features, dtype=self.dtype)
        if features.ndim != 2 or features.shape != (len(row_keys), self.dim):
            raise ValueError(
                f"cache entry {self.name}: got features of shape {features.shape} for "
                f"{len(row_keys)} rows of dim {self.dim}"
            )
        if not np.isfinite(features).all():
            bad = [row_keys[i][:12] for i in np.flatnonzero(~np.isfinite(features).all(axis=1))[:5]]
            raise ValueError(f"cache entry {self.name}: non-finite features for rows {bad}")
        self.ensure()
        shard = f"shard-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        keys = np.array([k.encode("ascii") for k in row_keys], dtype=f"S{_KEY_BYTES}")
        rec = {
            "rows": len(row_keys),
            "dim": self.dim,
            "dtype": str(self.dtype),
            "npy_sha256": _atomic_save_npy(self.dir / f"{shard}.npy", features),
            "keys_sha256": _atomic_save_npy(self.dir / f"{shard}.keys.npy", keys),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "writer": f"{socket.gethostname()}:{os.getpid()}",
        }
        # The commit record goes last: a shard without it does not exist for readers.
        _atomic_write_bytes(self.dir / f"{shard}.json", json.dumps(rec, indent=1).encode())
        return shard

    def read(self, row_keys: Sequence[str]) -> np.ndarray:
        """Features for ``row_keys`` in that order, gathered from memory-mapped shards.

        Raises
        ------
        KeyError
            Listing (up to five of) the row keys that are not cached.
        """
        idx = self.index(refresh=True)
        absent = [k for k in row_keys if k not in idx]
        if absent:
            raise KeyError(
                f"cache entry {self.name}: {len(absent)} rows not cached (e.g. {', '.join(a[:12] for a in absent[:5])})"
            )
        out = np.empty((len(row_keys), self.dim), dtype=self.dtype)
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        for pos, k in enumerate(row_keys):
            shard, row = idx[k]
            dst, src = by_shard.setdefault(shard, ([], []))
            dst.append(pos)
            src.append(row)
        for shard, (dst, src) in by_shard.items():
            out[dst] = self._arrays[shard][src]
        return out

    def stats(self) -> dict[str, Any]:
        shards = self._committed()
        size = sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file()) if self.dir.is_dir() else 0
        return {"rows": len(self.index(refresh=True)), "shards": len(shards), "bytes": size}


class FeatureCache:
    """The feature cache under ``root`` (created on first write).

    Examples
    --------
    >>> cache = FeatureCache("features_cache")          # doctest: +SKIP
    >>> entry = cache.entry({"backbone": "alexnet", ...})  # doctest: +SKIP
    >>> entry.missing(row_keys)                          # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike = "features_cache"):
        self.root = Path(root)

    def entry(self, fields: Mapping[str, Any]) -> CacheEntry:
        """The entry for ``fields`` (everything that determines the feature)."""
        key = entry_key(fields)
        return CacheEntry(self.root, key, {"key": key, "fields": dict(fields)})

    def entries(self) -> list[CacheEntry]:
        base = self.root / FORMAT
        if not base.is_dir():
            return []
        return [CacheEntry(self.root, d.name) for d in sorted(base.glob("*/*")) if d.is_dir()]

    # -- memo of images known to decode -------------------------------------------------
    @property
    def _images_path(self) -> Path:
        return self.root / "checked-images.jsonl"

    def known_images(self) -> dict[str, tuple[int, int]]:
        """SHA-256 -> (width, height) of image files that decoded cleanly before.

        Lets a warm re-run skip re-decoding every image during validation: the same
        bytes decode the same way. Torn lines (a killed writer) are ignored.
        """
        out: dict[str, tuple[int, int]] = {}
        try:
            with open(self._images_path) as f:
                for line in f:
                    try:
                        d = json.loads(line)
                        out[d["sha256"]] = (int(d["w"]), int(d["h"]))
                    except (ValueError, KeyError, TypeError):
                        continue
        except FileNotFoundError:
            pass
        return out

    def remember_images(self, sizes: Mapping[str, tuple[int, int]]) -> None:
        """Append newly checked images to the memo (one O_APPEND write: safe with concurrent writers)."""
        if not sizes:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps({"sha256": k, "w": w, "h": h}) + "\n" for k, (w, h) in sizes.items())
        fd = os.open(self._images_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)

    def lock(self, entry: CacheEntry) -> FileLock:
        """A lock used by ``gc`` while it rewrites an entry's shards."""
        entry.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(entry.dir / ".lock"))

    # -- maintenance ----------------------------------------------------------------------
    def verify(self) -> list[CacheProblem]:
        """Re-hash every committed shard; report truncated, altered or incomplete files."""
        problems: list[CacheProblem] = []
        for e in self.entries():
            try:
                meta = e.meta
                name = e.name
            except CacheCorruptError as err:
                problems.append(CacheProblem(e.key, "?", "meta.json", str(err)))
                continue
            if meta.get("key") != e.key or entry_key(meta.get("fields", {})) != e.key:
                problems.append(CacheProblem(e.key, name, "meta.json", "fields do not hash to the entry's key (altered)"))
            committed = set(e._committed())
            for shard in sorted(committed):
                try:
                    rec = json.loads((e.dir / f"{shard}.json").read_text())
                    for suffix, field_ in ((".npy", "npy_sha256"), (".keys.npy", "keys_sha256")):
                        p = e.dir / f"{shard}{suffix}"
                        if not p.exists():
                            raise ValueError(f"{p.name} is missing")
                        if file_sha256(p) != rec[field_]:
                            raise ValueError(f"{p.name} does not match its recorded SHA-256 (truncated or altered)")
                    e._open_shard(shard)
                except (OSError, ValueError, KeyError, CacheCorruptError) as err:
                    problems.append(CacheProblem(e.key, name, shard, str(err)))
            for p in e.dir.iterdir():
                stem = p.name.split(".")[0]
                if p.name.endswith(".part"):
                    problems.append(CacheProblem(e.key, name, p.name, "temporary file of an interrupted write", "warning"))
                elif p.name.startswith("shard-") and stem not in committed:
                    problems.append(CacheProblem(e.key, name, p.name, "shard without commit record (interrupted write)", "warning"))
        return problems

    def gc(self, *, grace_seconds: float = 3600.0, remove_corrupt: bool = False, compact: bool = True,
           drop: Sequence[str] = ()) -> dict[str, int]:
        """Tidy the cache.

        Parameters
        ----------
        grace_seconds
            Leftovers of interrupted writes are removed once older than this, so a
            writer still at work is never disturbed.
        remove_corrupt
            Delete shards that fail :meth:`verify`; their rows get recomputed on demand.
        compact
            Merge an entry's shards into one (fewer files, faster reads).
        drop
            Entry keys (or unique prefixes) to delete whole.
        """
        stats = {"removed_files": 0, "removed_corrupt_shards": 0, "compacted_entries": 0, "dropped_entries": 0,
                 "corrupt_entries_left": 0}
        now = time.time()
        # Always verify first: compacting a damaged shard would re-hash altered rows
        # into a fresh, "valid" shard and hide the damage for good.
        bad_shards = {(p.entry, p.file) for p in self.verify() if p.severity == "error"}
        damaged = {entry for entry, _ in bad_shards}
        for e in self.entries():
            if any(e.key.startswith(d) for d in drop if d):
                shutil.rmtree(e.dir)
                stats["dropped_entries"] += 1
                continue
            with self.lock(e):
                committed = set(e._committed())
                for p in list(e.dir.iterdir()):
                    stem = p.name.split(".")[0]
                    orphan = p.name.endswith(".part") or (p.name.startswith("shard-") and stem not in committed)
                    if orphan and now - p.stat().st_mtime > grace_seconds:
                        p.unlink(missing_ok=True)
                        stats["removed_files"] += 1
                if e.key in damaged and not remove_corrupt:
                    stats["corrupt_entries_left"] += 1  # left for the user to see in `verify`
                    continue
                if (e.key, "meta.json") in bad_shards:
                    # Its meta no longer says what its rows are: nothing in it can be trusted.
                    shutil.rmtree(e.dir)
                    stats["removed_corrupt_shards"] += len(committed)
                    continue
                for shard in sorted(committed):
                    if (e.key, shard) in bad_shards:
                        (e.dir / f"{shard}.json").unlink(missing_ok=True)  # uncommit first
                        for suffix in (".npy", ".keys.npy"):
                            (e.dir / f"{shard}{suffix}").unlink(missing_ok=True)
                        stats["removed_corrupt_shards"] += 1
                if compact and len(e._committed()) > 1:
                    self._compact(e)
                    stats["compacted_entries"] += 1
        return stats

    def _compact(self, e: CacheEntry) -> None:
        old = e._committed()
        idx = e.index(refresh=True)
        keys = list(idx)
        merged = e.read(keys)
        e.write(keys, merged)  # commit the merged shard before removing the parts
        for shard in old:
            (e.dir / f"{shard}.json").unlink(missing_ok=True)
            for suffix in (".npy", ".keys.npy"):
                (e.dir / f"{shard}{suffix}").unlink(missing_ok=True)
        e.index(refresh=True)
