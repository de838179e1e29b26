"""One stable hash: SHA-256 of canonical JSON (sorted keys), for ids, keys and fingerprints.

Two spellings of canonical JSON are in use and both are kept, because each already names
things on disk: run protocols and fine-tuned weights ids hash ``json.dumps`` with its
default separators; feature-cache keys hash the compact form (``","``, ``":"``).
Changing either would orphan every cache entry or fine-tuned network made before.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "stable_hash"]


def canonical_json(obj: Any, *, compact: bool = False) -> bytes:
    """``obj`` as JSON with sorted keys (non-JSON values by ``str``), UTF-8 encoded."""
    seps = (",", ":") if compact else None
    return json.dumps(obj, sort_keys=True, separators=seps, default=str).encode()


def stable_hash(obj: Any, *, compact: bool = False, length: int | None = None) -> str:
    """Hex SHA-256 of :func:`canonical_json` of ``obj``, cut to ``length`` characters."""
    digest = hashlib.sha256(canonical_json(obj, compact=compact)).hexdigest()
    return digest if length is None else digest[:length]
