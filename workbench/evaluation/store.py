"""The append-only results store of a run folder.

Layout of ``runs/NAME/``::

    run.json              the protocol every record was made under (checked on reopen)
    labels.json           which grid each head's plain label stands for (see the sweep)
    records.jsonl         one JSON object per (candidate, fold or test), appended
    predictions/<candidate>/<fold>.npz   ids, true labels, scores and probabilities

A record is committed by its line: the predictions file is written (atomically) first,
then the line, carrying the file's size and SHA-256, is appended and flushed. A killed
run leaves at worst a torn last line, which is ignored on reopen, so a restart
recomputes exactly what has no line. A predictions file that no longer matches its line
(truncated, replaced) is not "done": the sweep recomputes it, and reading it names it.
Every other run-state file is written through :func:`atomic_write` (temporary file,
fsync, rename), so a crash never leaves half a file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from workbench.core.io import atomic_write  # re-exported: run-state files go through it
from workbench.errors import MissingFileError, WorkbenchError
from workbench.evaluation.settings import fold_sort_key

__all__ = ["ResultStore", "RunMismatchError", "StoreCorruptError", "atomic_write"]

#: Fields every record line must hold (``predictions`` is added by :meth:`ResultStore.append`).
REQUIRED_FIELDS = ("key", "candidate_id", "candidate", "fold", "predictions")


class RunMismatchError(WorkbenchError, ValueError):
    """The run folder holds records made under a different protocol."""


class StoreCorruptError(WorkbenchError, ValueError):
    """A records file that cannot be read (other than a torn last line)."""


def _read_json(path: Path) -> Any:
    """A run-state JSON file, or StoreCorruptError naming it."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreCorruptError(f"{path} is not valid JSON ({e}); restore it or delete the run folder") from None


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
            old = _read_json(self.run_path)
            if not isinstance(old, dict):
                raise StoreCorruptError(f"{self.run_path} holds {type(old).__name__}, not a protocol object")
            diff = sorted(k for k in set(old) | set(protocol) if old.get(k) != protocol.get(k))
            if diff:
                shown = "; ".join(f"{k}: {old.get(k)!r} there, {protocol.get(k)!r} now" for k in diff[:6])
                raise RunMismatchError(
                    f"{self.root} holds records of another protocol ({shown}). "
                    "Use a new --out folder, or delete this one to start over."
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.run_path, json.dumps(protocol, indent=2).encode())

    def protocol(self) -> dict[str, Any]:
        if not self.run_path.exists():
            raise MissingFileError(f"{self.root} is not a run folder (no run.json)")
        proto = _read_json(self.run_path)
        if not isinstance(proto, dict):
            raise StoreCorruptError(f"{self.run_path} holds {type(proto).__name__}, not a protocol object")
        return proto

    # ---- labels ------------------------------------------------------------------

    def plain_label_grids(self, grids: dict[str, Any]) -> dict[str, Any]:
        """The grid each head's plain label (no grid suffix) stands for in this folder.

        The first grid a head is swept with here owns its plain label (so a folder
        swept once keeps the labels it always had); heads in ``grids`` not seen before
        are claimed for their grid now and written to ``labels.json``.
        """
        path = self.root / "labels.json"
        owned = _read_json(path) if path.exists() else {}
        if not isinstance(owned, dict) or not isinstance(owned.get("plain_grids", {}), dict):
            raise StoreCorruptError(f"{path} does not hold a {{'plain_grids': {{head: grid}}}} object")
        plain = dict(owned.get("plain_grids", {}))
        new = {h: g for h, g in grids.items() if h not in plain}
        if new:
            plain.update(json.loads(json.dumps(new, default=str)))
            atomic_write(path, json.dumps({"plain_grids": plain}, indent=1, sort_keys=True).encode())
        return plain

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
            where = f"{self.records_path} line {i}"
            try:
                rec = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise StoreCorruptError(f"{where} is not valid UTF-8 ({e}); "
                                        "move the file aside to recompute its records") from None
            except json.JSONDecodeError as e:
                raise StoreCorruptError(f"{where} is not valid JSON ({e}); "
                                        "move the file aside to recompute its records") from None
            if not isinstance(rec, dict):
                raise StoreCorruptError(f"{where} holds a JSON {type(rec).__name__}, not a record object; "
                                        "move the file aside to recompute its records")
            missing = [k for k in REQUIRED_FIELDS if not isinstance(rec.get(k), str)]
            if missing:
                raise StoreCorruptError(f"{where} is not a record: no (text) field {', '.join(missing)}; "
                                        "move the file aside to recompute its records")
            yield rec
        if torn:
            warnings.warn(f"{self.records_path}: ignoring a torn last line (an interrupted write); "
                          "its record will be recomputed", stacklevel=3)

    def records(self) -> list[dict[str, Any]]:
        """Every committed record, in the order written; the last wins for a repeated key.

        Raises
        ------
        StoreCorruptError
            Naming the file and line of a line that is not a UTF-8 JSON record object
            (a torn last line, an interrupted write, is skipped with a warning).
        """
        by_key: dict[str, dict[str, Any]] = {}
        for rec in self._lines():
            by_key[rec["key"]] = rec
        return list(by_key.values())

    def verify(self, record: dict[str, Any]) -> str | None:
        """Why the predictions file of ``record`` cannot be trusted, or None when it can.

        Records that carry ``predictions_size`` / ``predictions_sha256`` are checked
        against them; older ones must at least open as an ``.npz`` with readable arrays.
        """
        path = self.root / record["predictions"]
        if not path.is_file():
            return f"{path} is missing"
        size, digest = record.get("predictions_size"), record.get("predictions_sha256")
        if size is not None and path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, its record says {size}"
        if digest is not None:
            got = hashlib.sha256(path.read_bytes()).hexdigest()
            return None if got == digest else f"{path} does not match the SHA-256 in its record"
        try:
            with np.load(path, allow_pickle=False) as z:
                for k in z.files:
                    z[k]
        except Exception as e:  # noqa: BLE001 - any failure to read means "recompute"
            return f"{path} cannot be read ({type(e).__name__}: {e})"
        return None

    def done(self) -> set[str]:
        """Keys of committed records whose predictions file is present and intact."""
        return {r["key"] for r in self.records() if self.verify(r) is None}

    def append(self, record: dict[str, Any], predictions: dict[str, np.ndarray]) -> None:
        """Commit one record: its predictions file first, then its line (with the file's digest)."""
        rel = Path("predictions") / record["candidate_id"] / f"{record['fold']}.npz"
        buf = io.BytesIO()
        np.savez(buf, **predictions)
        data = buf.getvalue()
        atomic_write(self.root / rel, data)
        record = dict(record, predictions=str(rel), predictions_size=len(data),
                      predictions_sha256=hashlib.sha256(data).hexdigest())
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
        """The arrays stored with ``record``.

        Raises
        ------
        StoreCorruptError
            Naming the file (and the record) when it is missing, does not match the
            digest in its record, or is not a readable ``.npz``.
        """
        path = self.root / record["predictions"]
        what = f"the predictions of {record.get('candidate', record['key'])!r} fold {record.get('fold')}"
        hint = "re-run the sweep (or baselines) into this folder to recompute it"
        if not path.is_file():
            raise StoreCorruptError(f"{path} ({what}) is missing; {hint}")
        data = path.read_bytes()
        digest = record.get("predictions_sha256")
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise StoreCorruptError(f"{path} ({what}) does not match the SHA-256 in its record "
                                    f"(damaged or replaced); {hint}")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
            raise StoreCorruptError(f"{path} ({what}) is not a readable .npz ({type(e).__name__}: {e}); "
                                    f"{hint}") from None

    def current_records(self) -> list[dict[str, Any]]:
        """:meth:`records` less those superseded by a newer rule's record of the same
        label (see :meth:`frame`): what the search, tables and figures read."""
        return _drop_superseded(self.records())

    def frame(self) -> pd.DataFrame:
        """One row per record, metrics as columns, sorted by candidate and fold.

        Records of an ensemble made under an older ensemble rule (``ensemble_rule``),
        or of a baseline under an older ``record_version``, are left out where a newer
        rule's record of the same label exists: the old
        lines stay in the append-only file, the newer computation replaces them.
        """
        recs = self.current_records()
        rows = []
        for r in recs:
            row = {k: v for k, v in r.items()
                   if k not in ("metrics", "versions", "cache_keys", "inner", "predictions_size",
                                "predictions_sha256")}
            row.update(r.get("metrics", {}))
            rows.append(row)
        if not rows:
            return pd.DataFrame()
        df = pd.DataFrame(rows)
        # CV folds in (repeat, number) order ("2" before "10"), the test split, external sets.
        order = df["fold"].map(fold_sort_key)
        df = df.assign(_order=order).sort_values(["candidate", "_order"], kind="stable")
        return df.drop(columns="_order").reset_index(drop=True)


def _rule(r: dict[str, Any]) -> int:
    """Version of the rule a record was made under: ``ensemble_rule`` for ensembles,
    ``record_version`` for baselines (absent: 1)."""
    return int(r.get("ensemble_rule") or r.get("record_version") or 1)


def _drop_superseded(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leave out records whose label has records of a newer rule (:func:`_rule`)."""
    newest: dict[tuple[str, Any], int] = {}
    for r in records:
        k = (r["candidate"], r.get("kind"))
        newest[k] = max(newest.get(k, 1), _rule(r))
    return [r for r in records if _rule(r) >= newest[(r["candidate"], r.get("kind"))]]


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
