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

import contextlib
import errno
import hashlib
import io
import json
import mmap
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Sequence

import numpy as np
from filelock import FileLock

from workbench.core.io import atomic_file, atomic_write, os_error_naming
from workbench.errors import WorkbenchError
from workbench.core.hashing import stable_hash

__all__ = ["FeatureCache", "CacheEntry", "CacheCorruptError", "CacheProblem", "entry_key", "FORMAT"]

FORMAT = "v1"
_KEY_BYTES = 64  # hex SHA-256


class CacheCorruptError(WorkbenchError, RuntimeError):
    """A cache entry that cannot be read as committed; the message names it."""


class _Damaged(ValueError):
    """Proof that a committed file is not what was committed (size, header, hash, missing)."""


#: Per-process memo of verified files: (device, inode, size, mtime_ns, ctime_ns) -> SHA-256.
#: Any rewrite changes mtime/ctime (or the inode, for a rename), so a changed file is hashed again.
_VERIFIED: dict[tuple[int, ...], str] = {}


@dataclass(frozen=True)
class CacheProblem:
    """One finding of :meth:`FeatureCache.verify`."""

    entry: str
    name: str  # backbone@weights:tap of the entry, when readable
    file: str
    problem: str
    # "error": proven damaged (gc --remove-corrupt deletes it); "unreadable": could not be
    # opened or read (too many open files, permissions, I/O error), so nothing is proven
    # and nothing is deleted; "warning": leftover of an interrupted write, removable by gc.
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.severity.upper()}: entry {self.entry[:16]} ({self.name}) {self.file}: {self.problem}"


def entry_key(fields: Mapping[str, Any]) -> str:
    """The cache key of an entry: SHA-256 of its canonical JSON fields."""
    return stable_hash(fields, compact=True)  # compact canonical JSON: the keys on disk


def _with_path(e: OSError, path: Path) -> OSError:
    """``e`` with ``path`` as its filename, so the command line can name the culprit;
    an error that names a file already is kept."""
    if e.filename is not None and e.errno is not None:
        return e
    named = os_error_naming(e, path)
    return named if named is not e else OSError(None, str(e), str(path))


def _atomic_save_npy(path: Path, array: np.ndarray) -> str:
    """Save ``array`` as .npy atomically; return the SHA-256 of the bytes written."""
    array = np.ascontiguousarray(array)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(array))
    digest = hashlib.sha256(head.getvalue())
    digest.update(array.data)
    with atomic_file(path) as f:
        # Plain writes, not ndarray.tofile: a full disk then raises ENOSPC, not numpy's
        # errno-less "2048 requested and 992 written".
        f.write(head.getvalue())
        f.write(array.data)
    return digest.hexdigest()


def _npy_nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Size of an .npy file holding ``shape``/``dtype`` (header included)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return buf.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize


def _sha256_of(f: BinaryIO) -> str:
    f.seek(0)
    return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def _verified(path: Path, sha256: str, shape: tuple[int, ...], dtype: np.dtype, *,
              force: bool = False) -> Iterator[tuple[BinaryIO, int]]:
    """Open a committed .npy file whose size, header and SHA-256 match its commit record.

    Yields the open file and the offset of its data. The hash is computed once per
    process per file identity (``force`` re-hashes). Raises :class:`_Damaged` for a
    file proven not to be what was committed, :class:`OSError` when it cannot be read.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        expected = _npy_nbytes(shape, dtype)
        if st.st_size != expected:
            raise _Damaged(f"{path.name} does not match its recorded SHA-256 "
                           f"(truncated or altered: {st.st_size} bytes, expected {expected})")
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if force or _VERIFIED.get(ident) != sha256:
            if _sha256_of(f) != sha256:
                raise _Damaged(f"{path.name} does not match its recorded SHA-256 (truncated or altered)")
            _VERIFIED[ident] = sha256
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            hshape, fortran, hdtype = reader(f)
        except ValueError as e:
            raise _Damaged(f"{path.name}: unreadable .npy header ({e})") from e
        if hshape != tuple(shape) or fortran or hdtype != np.dtype(dtype):
            raise _Damaged(f"{path.name} holds {hdtype}{list(hshape)}, its record says {np.dtype(dtype)}{list(shape)}")
        yield f, f.tell()


def _read_commit(path: Path) -> dict[str, Any]:
    """A shard's commit record, checked for the fields readers need."""
    try:
        rec = json.loads(path.read_text())
        rows, dim = int(rec["rows"]), int(rec["dim"])
        np.dtype(rec["dtype"])
        if rows < 0 or dim < 1 or not all(isinstance(rec[k], str) for k in ("npy_sha256", "keys_sha256")):
            raise ValueError("bad rows, dim or checksums")
    except (ValueError, KeyError, TypeError) as e:
        raise _Damaged(f"{path.name}: unreadable commit record ({e})") from e
    return rec


class CacheEntry:
    """One key's worth of features: rows for many images, appended in shards."""

    def __init__(self, root: Path, key: str, meta: Mapping[str, Any] | None = None):
        self.key = key
        self.dir = root / FORMAT / key[:2] / key
        self._meta = dict(meta) if meta is not None else None
        self._index: dict[str, tuple[str, int]] | None = None
        # Committed shards never change, so their records and keys are read once per entry object.
        self._records: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, np.ndarray] = {}

    # -- metadata -----------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            path = self.dir / "meta.json"
            try:
                text = path.read_text()
            except FileNotFoundError as e:
                raise CacheCorruptError(f"cache entry {self.dir}: meta.json is missing") from e
            except OSError as e:
                raise _with_path(e, path) from e  # cannot read is not damaged: never a corrupt verdict
            try:
                self._meta = json.loads(text)
            except ValueError as e:
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
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _with_path(e, self.dir) from e
        path = self.dir / "meta.json"
        if not path.exists():
            atomic_write(path, json.dumps(self.meta, indent=2, sort_keys=True).encode())

    # -- shards ---------------------------------------------------------------------------
    def _committed(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name[: -len(".json")] for p in self.dir.glob("shard-*.json"))

    def _corrupt(self, shard: str, cause: BaseException) -> CacheCorruptError:
        return CacheCorruptError(
            f"cache entry {self.key[:16]} ({self.name}), shard {shard}: {cause}. "
            f"Run `workbench cache verify` to list damage and `workbench cache gc --remove-corrupt` "
            f"to drop it (its rows are then recomputed)."
        )

    def _check(self, shard: str, part: str, *, force: bool = False):
        """Context manager over one verified file of ``shard`` (``part``: "npy" or "keys").

        Raises :class:`_Damaged` (a missing file of a committed shard counts) or OSError.
        """
        rec = self._records.get(shard)
        if rec is None or force:
            rec = self._records[shard] = _read_commit(self.dir / f"{shard}.json")
        rows = int(rec["rows"])
        if part == "npy":
            path, sha, dtype = self.dir / f"{shard}.npy", rec["npy_sha256"], rec["dtype"]
            shape: tuple[int, ...] = (rows, int(rec["dim"]))
        else:
            path, sha, shape, dtype = self.dir / f"{shard}.keys.npy", rec["keys_sha256"], (rows,), f"S{_KEY_BYTES}"
        if not path.exists():
            raise _Damaged(f"{path.name} is missing")
        return _verified(path, sha, shape, np.dtype(dtype), force=force)

    def _still_committed(self, shard: str) -> bool:
        # gc removes a shard's commit record first: a shard whose record has gone was
        # uncommitted (compacted or dropped) while we read, which is no damage.
        return (self.dir / f"{shard}.json").exists()

    def _shard_keys(self, shard: str) -> np.ndarray:
        keys = self._keys.get(shard)
        if keys is None:
            with self._check(shard, "keys") as (f, _):
                n = int(self._records[shard]["rows"])
                keys = np.frombuffer(f.read(n * _KEY_BYTES), dtype=f"S{_KEY_BYTES}", count=n)
            self._keys[shard] = keys
        return keys

    def _load_index(self) -> dict[str, tuple[str, int]]:
        index: dict[str, tuple[str, int]] = {}
        committed = self._committed()
        for gone in set(self._keys) - set(committed):
            self._keys.pop(gone, None)
            self._records.pop(gone, None)
        for shard in committed:
            try:
                keys = self._shard_keys(shard)
            except FileNotFoundError:
                if self._still_committed(shard):
                    raise
                continue
            except _Damaged as e:
                if not self._still_committed(shard):
                    continue
                raise self._corrupt(shard, e) from e
            for i, k in enumerate(keys):
                # Rows computed twice (two writers racing) are identical; keep the first.
                index.setdefault(k.decode("ascii"), (shard, i))
        return index

    def index(self, refresh: bool = False) -> dict[str, tuple[str, int]]:
        """Row key -> (shard, row) over all committed shards."""
        if self._index is None or refresh:
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
        """Append rows as one new shard, atomically; return the shard's name.

        A failed write (full disk, read-only file system) removes what it had placed and
        raises an OSError naming the file; the entry stays as it was.
        """
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
        placed = [self.dir / f"{shard}{suffix}" for suffix in (".npy", ".keys.npy", ".json")]
        try:
            rec = {
                "rows": len(row_keys),
                "dim": self.dim,
                "dtype": str(self.dtype),
                "npy_sha256": _atomic_save_npy(placed[0], features),
                "keys_sha256": _atomic_save_npy(placed[1], keys),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "writer": f"{socket.gethostname()}:{os.getpid()}",
            }
            # The commit record goes last: a shard without it does not exist for readers.
            atomic_write(placed[2], json.dumps(rec, indent=1).encode())
        except Exception:
            # Uncommitted, so no reader can be using these files: leave nothing half-written.
            for p in placed[:2]:
                with contextlib.suppress(OSError):
                    p.unlink(missing_ok=True)
            raise
        return shard

    def read(self, row_keys: Sequence[str]) -> np.ndarray:
        """Features for ``row_keys`` in that order, gathered from the verified shards.

        Raises
        ------
        KeyError
            Listing (up to five of) the row keys that are not cached.
        CacheCorruptError
            Naming the shard whose data does not match its commit record.
        OSError
            When a shard cannot be opened or read (the file is named).
        """
        for attempt in range(3):
            idx = self.index(refresh=True)
            absent = [k for k in row_keys if k not in idx]
            if absent:
                raise KeyError(
                    f"cache entry {self.name}: {len(absent)} rows not cached "
                    f"(e.g. {', '.join(a[:12] for a in absent[:5])})"
                )
            out = np.empty((len(row_keys), self.dim), dtype=self.dtype)
            by_shard: dict[str, tuple[list[int], list[int]]] = {}
            for pos, k in enumerate(row_keys):
                shard, row = idx[k]
                dst, src = by_shard.setdefault(shard, ([], []))
                dst.append(pos)
                src.append(row)
            try:
                for shard, (dst, src) in by_shard.items():
                    self._gather(shard, src, out, dst)
                return out
            except (FileNotFoundError, _Damaged) as e:
                if self._still_committed(shard) or attempt == 2:
                    if isinstance(e, _Damaged):
                        raise self._corrupt(shard, e) from e
                    raise
                # A concurrent gc compacted the entry under us: read the new index.
        raise AssertionError("unreachable")

    def _gather(self, shard: str, src: list[int], out: np.ndarray, dst: list[int]) -> None:
        with self._check(shard, "npy") as (f, offset):
            rec = self._records[shard]
            shape = (int(rec["rows"]), int(rec["dim"]))
            if shape[0] == 0:
                return
            # A map holds a duplicate descriptor while it lives: close it right after the
            # gather, so thousands of shards never hold thousands of descriptors.
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                rows = np.frombuffer(mm, dtype=self.dtype, count=shape[0] * shape[1], offset=offset)
                out[dst] = rows.reshape(shape)[src]
                del rows  # releases the buffer, so the map can close

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

    def check(self) -> None:
        """Fail early, naming the path, when the cache path exists but is not a folder."""
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.root))

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
        # v2: multi-page TIFFs are refused since; a memo from before would let one pass
        # validation unseen, so the old file is not read.
        return self.root / "checked-images.v2.jsonl"

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
        path = self._images_path
        # The leading newline ends a line torn by an earlier failed write, so it cannot
        # swallow this one; blank and torn lines are skipped by the reader.
        lines = "".join(json.dumps({"sha256": k, "w": w, "h": h}) + "\n" for k, (w, h) in sizes.items())
        data = ("\n" + lines).encode()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            finally:
                os.close(fd)
        except OSError as e:
            raise _with_path(e, path) from e

    def lock(self, entry: CacheEntry) -> FileLock:
        """A lock used by ``gc`` while it rewrites an entry's shards."""
        entry.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(entry.dir / ".lock"))

    # -- maintenance ----------------------------------------------------------------------
    def verify(self) -> list[CacheProblem]:
        """Re-hash every committed shard; report damaged, unreadable or incomplete files.

        Severity ``"error"`` is proven damage (wrong size, header or SHA-256, a missing
        file of a committed shard, an unreadable record); ``"unreadable"`` means the file
        could not be opened or read (too many open files, permissions, I/O), which proves
        nothing; ``"warning"`` is a leftover of an interrupted write.
        """
        problems: list[CacheProblem] = []
        for e in self.entries():
            problems.extend(self._verify_entry(e))
        return problems

    @staticmethod
    def _unreadable(e: CacheEntry, name: str, file: str, err: OSError) -> CacheProblem:
        what = err.strerror or str(err)
        return CacheProblem(e.key, name, file, f"cannot read {Path(err.filename).name if err.filename else file}: "
                            f"{what} (not judged damaged; fix the cause and verify again)", "unreadable")

    def _verify_entry(self, e: CacheEntry) -> list[CacheProblem]:
        problems: list[CacheProblem] = []
        try:
            meta = e.meta
            name = e.name
        except CacheCorruptError as err:
            if not (e.dir / "meta.json").exists() and not e._committed():
                # mkdir done, meta.json not yet: a writer at work or killed; no data to lose.
                return [CacheProblem(e.key, "?", "meta.json", "entry without meta.json (interrupted write)",
                                     "warning")]
            return [CacheProblem(e.key, "?", "meta.json", str(err))]
        except OSError as err:
            return [self._unreadable(e, "?", "meta.json", err)]
        if meta.get("key") != e.key or entry_key(meta.get("fields", {})) != e.key:
            problems.append(CacheProblem(e.key, name, "meta.json", "fields do not hash to the entry's key (altered)"))
        committed = set(e._committed())
        for shard in sorted(committed):
            try:
                for part in ("npy", "keys"):
                    with e._check(shard, part, force=True):
                        pass
            except (_Damaged, FileNotFoundError) as err:
                if not e._still_committed(shard):
                    continue  # removed by a concurrent gc while we looked
                if isinstance(err, _Damaged):
                    problems.append(CacheProblem(e.key, name, shard, str(err)))
                else:
                    problems.append(self._unreadable(e, name, shard, err))
            except OSError as err:
                problems.append(self._unreadable(e, name, shard, err))
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
            Delete shards that :meth:`verify` proves damaged; their rows get recomputed on
            demand. Shards that could not be read are never deleted (nor compacted).
        compact
            Merge an entry's shards into one (fewer files, faster reads).
        drop
            Entry keys (or unique prefixes) to delete whole.
        """
        stats = {"removed_files": 0, "removed_corrupt_shards": 0, "compacted_entries": 0, "dropped_entries": 0,
                 "corrupt_entries_left": 0, "unreadable_entries_left": 0}
        now = time.time()
        # Always verify first: compacting a damaged shard would re-hash altered rows
        # into a fresh, "valid" shard and hide the damage for good.
        problems = self.verify()
        bad_shards = {(p.entry, p.file) for p in problems if p.severity == "error"}
        damaged = {entry for entry, _ in bad_shards}
        unreadable = {p.entry for p in problems if p.severity == "unreadable"}
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
                if e.key in unreadable:
                    stats["unreadable_entries_left"] += 1  # compaction would have to read it
                    continue
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
