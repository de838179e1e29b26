"""The append-only results store of a run folder.

Layout of ``runs/NAME/``::

    run.json              the protocol every record was made under (checked on reopen)
    records.jsonl         one JSON object per (candidate, fold or test), appended
    predictions/<candidate>/<fold>.npz   ids, true labels, scores and probabilities

A record is committed by its line: the predictions file is written (atomically) first,
then the line is appended and flushed. A killed run leaves at worst a torn last line,
which is ignored on reopen, so a restart recomputes exactly what has no line.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

__all__ = ["ResultStore", "RunMismatchError", "StoreCorruptError"]


class RunMismatchError(ValueError):
    """The run folder holds records made under a different protocol."""


class StoreCorruptError(ValueError):
    """A records file that cannot be read (other than a torn last line)."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResultStore:
    """Records and predictions of one run folder.

    Parameters
    ----------
    root : path
        The run folder; created on :meth:`open`.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.records_path = self.root / "records.jsonl"
        self.run_path = self.root / "run.json"

    # ---- protocol ----------------------------------------------------------------

    def open(self, protocol: dict[str, Any]) -> None:
        """Create the folder, or check that it was made under the same ``protocol``.

        Raises
        ------
        RunMismatchError
            Naming each protocol field that differs, when the folder already holds a
            run of another protocol (another manifest, split, folds, seed ...).
        """
        protocol = json.loads(json.dumps(protocol, default=str))
        if self.run_path.exists():
            old = json.loads(self.run_path.read_text())
            diff = sorted(k for k in set(old) | set(protocol) if old.get(k) != protocol.get(k))
            if diff:
                shown = "; ".join(f"{k}: {old.get(k)!r} there, {protocol.get(k)!r} now" for k in diff[:6])
                raise RunMismatchError(
                    f"{self.root} holds records of another protocol ({shown}). "
                    "Use a new --out folder, or delete this one to start over."
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.run_path, lambda f: f.write(json.dumps(protocol, indent=2).encode()))

    def protocol(self) -> dict[str, Any]:
        if not self.run_path.exists():
            raise FileNotFoundError(f"{self.root} is not a run folder (no run.json)")
        return json.loads(self.run_path.read_text())

    # ---- records -----------------------------------------------------------------

    def _lines(self) -> Iterator[dict[str, Any]]:
        if not self.records_path.exists():
            return
        raw = self.records_path.read_bytes()
        lines = raw.split(b"\n")
        torn = lines[-1] != b""  # the last write never reached its newline
        # Without a tear the last element is the empty string after the final newline.
        for i, line in enumerate(lines[:-1], start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise StoreCorruptError(f"{self.records_path} line {i} is not valid JSON ({e}); "
                                        "move the file aside to recompute its records") from None
        if torn:
            warnings.warn(f"{self.records_path}: ignoring a torn last line (an interrupted write); "
                          "its record will be recomputed", stacklevel=3)

    def records(self) -> list[dict[str, Any]]:
        """Every committed record, in the order written; the last wins for a repeated key."""
        by_key: dict[str, dict[str, Any]] = {}
        for rec in self._lines():
            by_key[rec["key"]] = rec
        return list(by_key.values())

    def done(self) -> set[str]:
        """Keys of committed records whose predictions file is present."""
        return {r["key"] for r in self.records() if (self.root / r["predictions"]).exists()}

    def append(self, record: dict[str, Any], predictions: dict[str, np.ndarray]) -> None:
        """Commit one record: its predictions file first, then its line."""
        rel = Path("predictions") / record["candidate_id"] / f"{record['fold']}.npz"
        _atomic_write(self.root / rel, lambda f: np.savez(f, **predictions))
        record = dict(record, predictions=str(rel))
        self._heal_torn_tail()
        line = json.dumps(record, separators=(",", ":"), default=_json_default) + "\n"
        with open(self.records_path, "ab") as f:
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())

    def _heal_torn_tail(self) -> None:
        """Cut a torn last line off before appending, so it cannot glue onto a new one."""
        p = self.records_path
        if not p.exists() or p.stat().st_size == 0:
            return
        with open(p, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            data = p.read_bytes()
            f.truncate(data.rfind(b"\n") + 1)

    def predictions(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        """The arrays stored with ``record``."""
        with np.load(self.root / record["predictions"], allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def frame(self) -> pd.DataFrame:
        """One row per record, metrics as columns, sorted by candidate and fold."""
        rows = []
        for r in self.records():
            row = {k: v for k, v in r.items() if k not in ("metrics", "versions", "cache_keys", "inner")}
            row.update(r.get("metrics", {}))
            rows.append(row)
        if not rows:
            return pd.DataFrame()
        df = pd.DataFrame(rows)
        # Folds in number order ("2" before "10"), the test split last.
        order = df["fold"].map(lambda f: (1, 0) if f == "test" else (0, int(f)))
        df = df.assign(_order=order).sort_values(["candidate", "_order"], kind="stable")
        return df.drop(columns="_order").reset_index(drop=True)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
