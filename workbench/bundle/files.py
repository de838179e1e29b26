"""A bundle's files on disk: digests, and fitted objects stored without pickle.

``bundle.json`` lists every other file of the bundle with its SHA-256; nothing is read
before all of them match (a file edited, truncated or swapped is refused by name).
Fitted scikit-learn objects are written with :mod:`skops.io` and read back with its
restricted loader: only types scikit-learn's own, numpy's, and those in
:data:`TRUSTED_TYPES` (or given by the caller) are rebuilt; any other type in the file,
a pickled object included, is refused before anything is constructed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from workbench.core.io import atomic_write
from workbench.errors import WorkbenchError

__all__ = ["BUNDLE_FORMAT", "BundleError", "TRUSTED_TYPES", "load_fitted", "read_json", "save_fitted",
           "sha256_file", "verify_bundle", "write_index"]

#: Version of the bundle layout; a loader refuses a newer one.
BUNDLE_FORMAT = 1
INDEX = "bundle.json"

#: Types outside scikit-learn's and numpy's that our heads are made of. Everything else a
#: file asks for is refused (``load_model(trusted=...)`` extends this for a user's heads).
TRUSTED_TYPES: tuple[str, ...] = (
    "workbench.heads.zoo.ScaledGammaSVC",
    "sklearn.tree._tree.Tree",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
)


class BundleError(WorkbenchError, ValueError):
    """A bundle that cannot be used as it is: the message names the file and why."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True, default=_jsonable) + "\n").encode())


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: missing; is this a model bundle (`workbench export` writes one)?") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None


def save_fitted(obj: Any, path: Path) -> None:
    """A fitted estimator as a skops file (no pickle), written atomically."""
    import skops.io as sio

    atomic_write(path, sio.dumps(obj))


def load_fitted(path: Path, trusted: Iterable[str] = ()) -> Any:
    """A skops file's estimator, refusing any type outside the trusted ones.

    Raises
    ------
    BundleError
        Naming the file and the types it would have to construct.
    """
    import skops.io as sio

    data = path.read_bytes()
    try:
        untrusted = set(sio.get_untrusted_types(data=data))
    except Exception as e:  # not a skops archive (e.g. a pickle renamed .skops)
        raise BundleError(f"{path}: not a skops file ({type(e).__name__}: {e}); bundles never hold pickles") from None
    refused = sorted(untrusted - set(TRUSTED_TYPES) - set(trusted))
    if refused:
        raise BundleError(f"{path}: refused: it would construct untrusted types {refused} (a bundle holds "
                          f"scikit-learn heads only; pass trusted=[...] to load_model for a head of your own)")
    try:
        return sio.loads(data, trusted=sorted(untrusted))
    except Exception as e:
        raise BundleError(f"{path}: unreadable skops file ({type(e).__name__}: {e})") from None


def write_index(root: Path, meta: dict[str, Any]) -> None:
    """``bundle.json``: the format, ``meta`` and the SHA-256 of every other file (written last)."""
    files = {p.relative_to(root).as_posix(): sha256_file(p)
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != INDEX}
    write_json(root / INDEX, {"format": BUNDLE_FORMAT, **meta, "files": files})


def verify_bundle(root: Path) -> dict[str, Any]:
    """Check every file against ``bundle.json``; return the index.

    Raises
    ------
    BundleError
        A missing index, a newer format, a listed file missing or changed (named), or a
        path that leaves the bundle.
    """
    if not root.is_dir():
        raise BundleError(f"{root}: not a folder; give the folder `workbench export` wrote")
    index = read_json(root / INDEX)
    fmt = index.get("format")
    if not isinstance(fmt, int) or fmt > BUNDLE_FORMAT:
        raise BundleError(f"{root / INDEX}: bundle format {fmt!r}; this workbench reads format {BUNDLE_FORMAT} "
                          f"(upgrade workbench)")
    files = index.get("files")
    if not isinstance(files, dict) or "model.json" not in files:
        raise BundleError(f"{root / INDEX}: no file list with model.json; the bundle is incomplete")
    base = root.resolve()
    for rel, digest in files.items():
        path = (root / rel).resolve()
        if base not in path.parents:
            raise BundleError(f"{root / INDEX}: file {rel!r} lies outside the bundle; refused")
        if not path.is_file():
            raise BundleError(f"{root / rel}: missing (listed in {INDEX}); the bundle is incomplete")
        actual = sha256_file(path)
        if actual != digest:
            raise BundleError(f"{root / rel}: does not match the SHA-256 in {INDEX} ({actual[:12]}... on disk, "
                              f"{str(digest)[:12]}... listed): changed or damaged since export; refused")
    return index
