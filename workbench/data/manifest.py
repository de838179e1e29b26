"""Manifests: the list of labelled images an experiment runs on.

A manifest is read from a CSV (columns ``path,label`` plus optional ``id, split,
group, bbox_x0, bbox_y0, bbox_x1, bbox_y1, mask_path``) or from a folder with one
sub-folder per class (optionally under ``train/``, ``val/``, ``test/``).

Parsing never stops at the first bad row: every problem is collected as a
:class:`BadRow`, and :meth:`Manifest.validate` (which also decodes every image)
reports them all in one :class:`ManifestError`, so a dataset is fixed in one pass.

Labels are checked so that a typo never becomes a class of its own: surrounding
whitespace is stripped (with a :class:`ManifestWarning`), and a label that differs only
in case from another one, or that reads as a missing value (``NaN``, ``None``, ``null``,
``N/A`` ...), is a bad row. After validation every image's SHA-256 is known, and
:meth:`Manifest.duplicates` lists the images stored under more than one id (a
:class:`DuplicateImageWarning` names them).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from workbench.data.boxes import BOX_COLUMNS, Box, BoxValueError
from workbench.data.images import (
    SUPPORTED_SUFFIXES,
    ImageDecodeError,
    _decode_array,
    _read_bytes,
    image_size,
)
from workbench.errors import ConfigError, UnknownNameError, WorkbenchError

__all__ = [
    "Item", "BadRow", "ManifestError", "Manifest", "SPLITS", "BOX_COLUMNS",
    "DuplicateGroup", "ManifestWarning", "DuplicateImageWarning", "NULL_LABELS",
]

SPLITS = ("train", "val", "test")
_KNOWN_COLUMNS = ("id", "path", "label", "split", "group", *BOX_COLUMNS, "mask_path")

_FRAME_COLUMNS = (
    "id", "path", "label", "split", "group", *BOX_COLUMNS,
    "mask_path", "sha256", "width", "height", "row",
)

#: Labels that spreadsheets and pandas write for a missing value (compared case-folded).
#: Such a label is a bad row, unless it is named in ``classes`` on purpose.
NULL_LABELS = frozenset({
    "nan", "-nan", "none", "null", "na", "n/a", "#n/a", "#na", "<na>", "nat", "nil", "missing", "?",
})

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Item:
    """One labelled image of a manifest.

    ``row`` is the 1-based CSV line (the header is line 1) or, for folder manifests,
    the 1-based index in sorted order. ``sha256``, ``width`` and ``height`` are filled
    by :meth:`Manifest.validate`. ``box`` is (x0, y0, x1, y1), x1/y1 exclusive.
    """

    id: str
    path: Path
    label: str
    row: int
    split: str | None = None
    group: str | None = None
    box: Box | None = None
    mask_path: Path | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None

    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the image: the validated size, else read from the file's header."""
        if self.width is not None and self.height is not None:
            return self.width, self.height
        return image_size(self.path)


@dataclass(frozen=True)
class BadRow:
    """A manifest row that cannot be used, and why."""

    row: int
    id: str | None
    path: str | None
    reason: str

    def describe(self, unit: str = "line") -> str:
        """One line such as ``line 7 (id=abc, path=images/x.png): reason``."""
        parts = [f"id={self.id}"] if self.id is not None else []
        if self.path:
            parts.append(f"path={self.path}")
        where = f" ({', '.join(parts)})" if parts else ""
        return f"{unit} {self.row}{where}: {self.reason}"


class ManifestWarning(UserWarning):
    """A manifest was usable after a change the user should know of (e.g. a label stripped)."""


class DuplicateImageWarning(ManifestWarning):
    """The same image bytes are in the manifest under more than one id."""


@dataclass(frozen=True)
class DuplicateGroup:
    """Items of a manifest whose image files are byte-identical (same SHA-256).

    ``ids``, ``labels``, ``splits`` and ``rows`` are parallel, in manifest order.
    """

    sha256: str
    ids: tuple[str, ...]
    labels: tuple[str, ...]
    splits: tuple[str | None, ...]
    rows: tuple[int, ...]

    @property
    def conflicting_labels(self) -> bool:
        """The copies carry different labels: at least one of them is wrong."""
        return len(set(self.labels)) > 1

    @property
    def crosses_test(self) -> bool:
        """Some copies are in the test split and some are not: test leaks into training."""
        return len({s == "test" for s in self.splits}) > 1

    @property
    def conflict(self) -> bool:
        """Either conflict; such a group cannot be kept as it is without bias."""
        return self.conflicting_labels or self.crosses_test

    def describe(self) -> str:
        """``a (benign, test) = b (malignant, train): labels differ, crosses train/test``."""
        copies = " = ".join(f"{i} ({lab}, {sp or 'no split'})"
                            for i, lab, sp in list(zip(self.ids, self.labels, self.splits))[:6])
        if len(self.ids) > 6:
            copies += f" = ... ({len(self.ids)} copies)"
        issues = [m for ok, m in ((self.conflicting_labels, "labels differ"),
                                  (self.crosses_test, "crosses train/test")) if ok]
        return copies + (f": {', '.join(issues)}" if issues else ": same label and split")

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready record (for run provenance)."""
        return {"sha256": self.sha256, "ids": list(self.ids), "labels": list(self.labels),
                "splits": list(self.splits), "rows": list(self.rows),
                "conflicting_labels": self.conflicting_labels, "crosses_test": self.crosses_test}


class ManifestError(WorkbenchError, ValueError):
    """A manifest cannot be used as it is.

    Either a whole-file problem (``message`` set, ``bad_rows`` usually empty) or a
    list of bad rows, all of them, each on its own line of ``str(error)``.

    Attributes
    ----------
    source : Path
        The manifest file or folder.
    bad_rows : list of BadRow
        Every bad row found, in row order.
    """

    def __init__(
        self, source: PathLike, bad_rows: Iterable[BadRow] = (), *, message: str | None = None
    ) -> None:
        self.source = Path(source)
        self.bad_rows = sorted(bad_rows, key=lambda b: b.row)
        self.message = message
        super().__init__(self._format())

    def _format(self) -> str:
        n = len(self.bad_rows)
        header = f"manifest {self.source}: " + (
            self.message or f"{n} bad row{'s' if n != 1 else ''}"
        )
        # Folder manifests number files, not lines.
        unit = "item" if self.source.is_dir() else "line"
        return "\n".join([header, *(f"  {b.describe(unit)}" for b in self.bad_rows)])

    def __reduce__(self):  # keep it picklable across process pools
        return (_rebuild_manifest_error, (self.source, self.bad_rows, self.message))


def _rebuild_manifest_error(source, bad_rows, message):
    return ManifestError(source, bad_rows, message=message)


def _check_classes(classes: Sequence[str] | None) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        raise TypeError("classes must be a sequence of class names, not a single string")
    out = [str(c).strip() for c in classes]
    if not out or any(not c for c in out):
        raise ConfigError(f"classes must be non-empty names, got {list(classes)!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"duplicate class names in {out!r}")
    return out


def _unknown_label(label: str, classes: Sequence[str]) -> str:
    same = [c for c in classes if c.casefold() == label.casefold()]
    if same:
        return f"label {label!r} differs only in case from class {same[0]!r}"
    return f"unknown label {label!r} (classes: {', '.join(classes)})"


def _label_problem(label: str, given: Sequence[str] | None) -> str | None:
    """Why a (stripped) label cannot be used, or None; case variants are checked later."""
    if not label:
        return "empty label"
    if given is not None and label in given:
        return None  # named on purpose, even if it reads like a null
    if label.casefold() in NULL_LABELS:
        return f"label {label!r} reads as a missing value"
    if given is not None:
        return _unknown_label(label, given)
    return None


def _drop_case_variants(items: list[Item], root: Path) -> tuple[list[Item], list[BadRow]]:
    """Split off items whose label differs only in case from another label.

    The most frequent spelling (the first seen on a tie) is taken as meant; the rows of
    every other spelling are bad rows naming it, rather than a class of their own.
    """
    counts = Counter(it.label for it in items)
    spellings: dict[str, list[str]] = {}
    for label in counts:
        spellings.setdefault(label.casefold(), []).append(label)
    meant: dict[str, str] = {}
    for group in spellings.values():
        if len(group) > 1:
            best = max(group, key=counts.__getitem__)  # max keeps the first of equals
            meant.update({lab: best for lab in group if lab != best})
    if not meant:
        return items, []
    keep, bad = [], []
    for it in items:
        if it.label in meant:
            m = meant[it.label]
            bad.append(BadRow(it.row, it.id, _display_path(it.path, root),
                              f"label {it.label!r} differs only in case from {m!r} "
                              f"({counts[m]} row{'s' if counts[m] != 1 else ''}); use one spelling"))
        else:
            keep.append(it)
    return keep, bad


def _resolve(root: Path, raw: str) -> Path:
    # normpath, not resolve(): collapse "..", keep symlinks as the user named them.
    return Path(os.path.normpath(root / raw))


def _display_path(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _default_id(raw: str, root: Path) -> str:
    """The path as written relative to the manifest's folder, in posix form."""
    p = Path(raw)
    if p.is_absolute():
        return _display_path(Path(os.path.normpath(p)), root)
    return Path(os.path.normpath(p)).as_posix()


class Manifest:
    """An ordered list of :class:`Item` with its classes and provenance.

    Parameters
    ----------
    items : list of Item
        The usable items, ids unique.
    source : Path
        The CSV file or folder it came from; relative paths are relative to it.
    classes : list of str
        Class names; their order defines the label indices.
    bad_rows : list of BadRow
        Rows found unusable at parse time (reported by :meth:`validate`).
    skipped : list of BadRow
        Rows dropped by ``validate(skip_bad=True)``, kept so runs can record them.
    extra : mapping, optional
        Per-id values of CSV columns the manifest does not interpret; only
        carried into :meth:`to_frame`.
    """

    def __init__(
        self,
        items: Sequence[Item],
        *,
        source: PathLike,
        classes: Sequence[str],
        bad_rows: Sequence[BadRow] = (),
        skipped: Sequence[BadRow] = (),
        extra: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._items = tuple(items)
        self._source = Path(source)
        self._root = self._source if self._source.is_dir() else self._source.parent
        self._classes = list(classes)
        self._bad_rows = list(bad_rows)
        self._skipped = list(skipped)
        self._index = {it.id: i for i, it in enumerate(self._items)}
        if len(self._index) != len(self._items):
            raise ValueError("manifest items must have unique ids")
        unknown = sorted({it.label for it in self._items} - set(self._classes))
        if unknown:
            raise ValueError(f"item labels {unknown} are not among classes {self._classes}")
        self._extra = {i: dict(extra[i]) for i in self._index if extra and i in extra}

    # ---- construction -------------------------------------------------------------

    @classmethod
    def load(cls, path: PathLike, *, classes: Sequence[str] | None = None) -> Manifest:
        """Read a manifest from a CSV file or a class-per-folder directory."""
        p = Path(path)
        if p.is_dir():
            return cls.from_folder(p, classes=classes)
        if p.exists():
            return cls.from_csv(p, classes=classes)
        raise ManifestError(p, message="manifest not found")

    @classmethod
    def from_csv(cls, path: PathLike, *, classes: Sequence[str] | None = None) -> Manifest:
        """Parse a CSV manifest (``.tsv`` files are read tab-separated).

        Per-row problems become :attr:`bad_rows`; only whole-file problems raise.

        Raises
        ------
        ManifestError
            Missing or unreadable file, no header, missing ``path``/``label`` column,
            duplicate or incomplete known columns, or no data rows.
        """
        src = Path(path).absolute()
        given = _check_classes(classes)
        if not src.exists():
            raise ManifestError(src, message="manifest not found")
        if not src.is_file():
            raise ManifestError(src, message="not a file")
        header, records = _read_csv(src)
        rows = _CsvRows(src, header, given)
        for line, cells in records:
            rows.add(line, cells)
        rows.warn_stripped()
        items, bad = rows.items, rows.bad
        if given is None:
            items, case_bad = _drop_case_variants(items, rows.root)
            bad = sorted([*bad, *case_bad], key=lambda b: b.row)
        out_classes = given if given is not None else sorted({it.label for it in items})
        return cls(items, source=src, classes=out_classes, bad_rows=bad, extra=rows.extra)

    @classmethod
    def from_folder(cls, path: PathLike, *, classes: Sequence[str] | None = None) -> Manifest:
        """Build a manifest from ``<class>/`` or ``<split>/<class>/`` sub-folders.

        Images are found recursively below each class folder; hidden files and folders
        and files whose suffix is not in ``SUPPORTED_SUFFIXES`` are ignored, as are files
        directly in the root or split folders. Ids are the posix paths relative to the
        root; rows number the files in sorted order.
        """
        root = Path(path).absolute()
        given = _check_classes(classes)
        if not root.exists():
            raise ManifestError(root, message="manifest not found")
        if not root.is_dir():
            raise ManifestError(root, message="not a folder")
        subdirs = _visible_dirs(root)
        split_dirs = [d for d in subdirs if d.name.lower() in SPLITS]
        if split_dirs and len(split_dirs) != len(subdirs):
            others = [d.name for d in subdirs if d not in split_dirs]
            raise ManifestError(
                root,
                message=(
                    f"mixes split folders ({', '.join(d.name for d in split_dirs)}) with "
                    f"other folders ({', '.join(others)}); use <class>/ or <split>/<class>/"
                ),
            )
        class_dirs: list[tuple[str | None, Path]] = (
            [(sd.name.lower(), cd) for sd in split_dirs for cd in _visible_dirs(sd)]
            if split_dirs
            else [(None, cd) for cd in subdirs]
        )
        entries = sorted(
            (f.relative_to(root).as_posix(), f, cd.name, split)
            for split, cd in class_dirs
            for f in _walk_images(cd)
        )
        if not entries:
            raise ManifestError(
                root,
                message=(
                    "no image files found; expected <class>/ or <split>/<class>/ "
                    f"sub-folders holding {', '.join(SUPPORTED_SUFFIXES)} files"
                ),
            )
        items: list[Item] = []
        bad: list[BadRow] = []
        for row, (rel, f, label, split) in enumerate(entries, start=1):
            problem = _label_problem(label, given)
            if problem:
                bad.append(BadRow(row, rel, rel, problem))
            else:
                items.append(Item(id=rel, path=f, label=label, row=row, split=split))
        if given is None:
            items, case_bad = _drop_case_variants(items, root)
            bad = sorted([*bad, *case_bad], key=lambda b: b.row)
        out_classes = given if given is not None else sorted({it.label for it in items})
        return cls(items, source=root, classes=out_classes, bad_rows=bad)

    # ---- checking ------------------------------------------------------------------

    def validate(
        self,
        *,
        require_box: bool = False,
        skip_bad: bool = False,
        n_jobs: int = 4,
        progress: bool = False,
        known: dict[str, tuple[int, int]] | None = None,
    ) -> Manifest:
        """Decode every image (and mask) and check it against its row.

        Fills ``sha256``, ``width`` and ``height`` of every item. Problems found here
        (missing, empty, non-image or truncated files, boxes outside the image, missing
        or undecodable masks, masks of another size than their image, missing boxes
        when ``require_box``) join the parse-time :attr:`bad_rows`.

        Parameters
        ----------
        require_box : bool
            Every item needs a bounding box (for box-cropped inputs).
        skip_bad : bool
            Drop bad rows instead of raising; they are listed in ``.skipped`` of the
            result.
        n_jobs : int
            Threads checking files; ``<= 0`` means one per CPU.
        progress : bool
            Show a progress bar.
        known : dict, optional
            SHA-256 -> (width, height) of files that already decoded cleanly (the
            feature cache keeps this memo). A file whose bytes hash to a known digest is
            not decoded again: the same bytes decode the same way. Files decoded here
            are added to it.

        Returns
        -------
        Manifest
            A new manifest of validated items.

        Raises
        ------
        ManifestError
            Listing every bad row, if any and not ``skip_bad``; or if skipping leaves
            no items.
        """
        workers = n_jobs if n_jobs > 0 else (os.cpu_count() or 1)
        results = _check_items(self._items, self._root, require_box=require_box, known=known,
                               workers=workers, progress=progress)
        bad = list(self._bad_rows)
        good: list[Item] = []
        for item, reasons in results:
            if reasons:
                bad.append(BadRow(item.row, item.id, _display_path(item.path, self._root), "; ".join(reasons)))
            else:
                good.append(item)
        bad.sort(key=lambda b: b.row)
        if bad and not skip_bad:
            raise ManifestError(self._source, bad)
        if not good:
            n = len(bad)
            raise ManifestError(self._source, bad, message=f"no usable items left ({n} bad row{'s' if n != 1 else ''})")
        out = Manifest(good, source=self._source, classes=self._classes, skipped=[*self._skipped, *bad],
                       extra=self._extra)
        _warn_duplicates(self._source, out.duplicates())
        return out

    def duplicates(self) -> list[DuplicateGroup]:
        """Groups of items whose image files are byte-identical, in manifest order.

        Grouped by the image's SHA-256 alone (boxes and masks are not compared): the
        same bytes give the same whole-image features, whatever the ids say.

        Raises
        ------
        ValueError
            If the items have not been through :meth:`validate`.
        """
        if any(it.sha256 is None for it in self._items):
            raise ValueError("duplicates() needs validated items: call validate() first")
        by_hash: dict[str, list[Item]] = {}
        for it in self._items:
            by_hash.setdefault(it.sha256, []).append(it)  # type: ignore[arg-type]
        return [
            DuplicateGroup(h, tuple(i.id for i in g), tuple(i.label for i in g),
                           tuple(i.split for i in g), tuple(i.row for i in g))
            for h, g in by_hash.items() if len(g) > 1
        ]

    def drop_duplicates(self) -> tuple[Manifest, list[str]]:
        """Remove duplicate copies; return the manifest left and the ids removed.

        A group whose copies disagree on the label, or that lies partly in the test
        split, is removed entirely (no copy can be trusted to be unbiased); any other
        group keeps its first copy.
        """
        drop: list[str] = []
        for g in self.duplicates():
            drop.extend(g.ids if g.conflict else g.ids[1:])
        if not drop:
            return self, []
        gone = set(drop)
        kept = [i for i in self.ids if i not in gone]
        if not kept:
            raise ConfigError(f"manifest {self._source}: dropping duplicates leaves no items")
        return self.subset(kept), [i for i in self.ids if i in gone]

    # ---- access --------------------------------------------------------------------

    @property
    def items(self) -> list[Item]:
        return list(self._items)

    @property
    def source(self) -> Path:
        return self._source

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def bad_rows(self) -> list[BadRow]:
        """Rows found unusable at parse time."""
        return list(self._bad_rows)

    @property
    def skipped(self) -> list[BadRow]:
        """Rows dropped by ``validate(skip_bad=True)``."""
        return list(self._skipped)

    @property
    def ids(self) -> list[str]:
        return [it.id for it in self._items]

    @property
    def labels(self) -> list[str]:
        return [it.label for it in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items)

    def __getitem__(self, index: int) -> Item:
        return self._items[index]

    def __repr__(self) -> str:
        return (
            f"Manifest({len(self)} items, classes={self._classes}, source={str(self._source)!r}"
            + (f", bad_rows={len(self._bad_rows)}" if self._bad_rows else "")
            + (f", skipped={len(self._skipped)}" if self._skipped else "")
            + ")"
        )

    def subset(self, ids: Iterable[str]) -> Manifest:
        """The items with these ids, in the order given.

        Classes, parse-time bad rows and skipped rows are carried over unchanged, so a
        subset cannot hide problems of the whole manifest.
        """
        if isinstance(ids, str):
            raise TypeError("ids must be a collection of ids, not a single string")
        ids = list(ids)
        missing = [i for i in ids if i not in self._index]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise UnknownNameError(f"{len(missing)} id(s) not in the manifest: {shown}")
        if len(set(ids)) != len(ids):
            raise ConfigError("subset ids contain duplicates")
        return Manifest(
            [self._items[self._index[i]] for i in ids],
            source=self._source,
            classes=self._classes,
            bad_rows=self._bad_rows,
            skipped=self._skipped,
            extra=self._extra,
        )

    def select_classes(self, classes: Sequence[str]) -> Manifest:
        """The items of these classes only, with ``classes`` as the new class order.

        For a task on part of a dataset (benign vs malignant of a three-class set): the
        other items are left out of the task, not reported as bad rows.

        Raises
        ------
        ValueError
            If a class is not one of the manifest's, or no item is left.
        """
        chosen = _check_classes(classes)
        unknown = [c for c in chosen if c not in self._classes]
        if unknown:
            raise ConfigError(f"classes {unknown} are not in the manifest; its classes: {self._classes}")
        keep = [it for it in self._items if it.label in set(chosen)]
        if not keep:
            raise ConfigError(f"no items of classes {chosen} in the manifest")
        return Manifest(keep, source=self._source, classes=chosen, bad_rows=self._bad_rows,
                        skipped=self._skipped, extra=self._extra)

    def to_frame(self) -> pd.DataFrame:
        """One row per item; uninterpreted CSV columns are appended as strings."""
        rows = []
        for it in self._items:
            box = it.box or (None, None, None, None)
            rows.append(
                {
                    "id": it.id,
                    "path": str(it.path),
                    "label": it.label,
                    "split": it.split,
                    "group": it.group,
                    **dict(zip(BOX_COLUMNS, box)),
                    "mask_path": str(it.mask_path) if it.mask_path is not None else None,
                    "sha256": it.sha256,
                    "width": it.width,
                    "height": it.height,
                    "row": it.row,
                    **self._extra.get(it.id, {}),
                }
            )
        df = pd.DataFrame(rows, columns=None if rows else list(_FRAME_COLUMNS))
        for c in (*BOX_COLUMNS, "width", "height", "row"):
            df[c] = df[c].astype("Int64")
        return df

    def digest(self) -> str:
        """SHA-256 over ids, labels, splits, groups, boxes and image digests, in order.

        Raises
        ------
        ValueError
            If the items have not been through :meth:`validate`.
        """
        if any(it.sha256 is None for it in self._items):
            raise ValueError("digest() needs validated items: call validate() first")
        h = hashlib.sha256()
        for it in self._items:
            box = list(it.box) if it.box else None
            record = [it.id, it.label, it.split, it.group, box, it.sha256]
            h.update(json.dumps(record, separators=(",", ":")).encode())
            h.update(b"\n")
        return h.hexdigest()


# ---- helpers -----------------------------------------------------------------------


def _read_csv(src: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (first line number, cells) of every non-blank record."""
    delimiter = "\t" if src.suffix.lower() == ".tsv" else ","
    records: list[tuple[int, list[str]]] = []
    line_num = 0
    try:
        # utf-8-sig: spreadsheets often prepend a byte-order mark to the header.
        with open(src, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            line_num = reader.line_num
            for cells in reader:
                # A quoted cell may span lines: a record starts after the previous one ends.
                start, line_num = line_num + 1, reader.line_num
                if any(c.strip() for c in cells):
                    records.append((start, cells))
    except UnicodeDecodeError as e:
        raise ManifestError(
            src, message=f"cannot read CSV: not UTF-8 text ({e.reason} at byte {e.start})"
        ) from e
    except csv.Error as e:
        raise ManifestError(src, message=f"cannot parse CSV near line {line_num + 1}: {e}") from e
    except OSError as e:
        raise ManifestError(src, message=f"cannot read file: {e.strerror or e}") from e
    if header is None or not any(h.strip() for h in header):
        raise ManifestError(src, message="empty CSV (no header line)")
    if not records:
        raise ManifestError(src, message="no data rows")
    return header, records


def _column_index(src: Path, header: list[str]) -> dict[str, int]:
    """Positions of the known columns (matched case-insensitively)."""
    col: dict[str, int] = {}
    for i, h in enumerate(header):
        name = h.strip().lower()
        if name in _KNOWN_COLUMNS:
            if name in col:
                raise ManifestError(src, message=f"duplicate column {name!r}")
            col[name] = i
    missing = [c for c in ("path", "label") if c not in col]
    if missing:
        found = ", ".join(h.strip() for h in header)
        raise ManifestError(
            src, message=f"missing required column(s) {', '.join(missing)} (found: {found})"
        )
    present = [c for c in BOX_COLUMNS if c in col]
    if present and len(present) != len(BOX_COLUMNS):
        absent = [c for c in BOX_COLUMNS if c not in col]
        raise ManifestError(
            src, message=f"box columns come as a set of four; missing {', '.join(absent)}"
        )
    return col


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _walk_images(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in SUPPORTED_SUFFIXES:
                yield Path(dirpath) / name


class _NeedsDecode(Exception):
    """Raised by the memo-only check for a file whose bytes were never decoded."""


def _decoded_size(
    path: Path, known: dict[str, tuple[int, int]] | None, decode: bool = True
) -> tuple[str, int, int]:
    """(sha256, width, height) of an image file, decoding it fully unless its digest is known.

    With ``decode=False`` an unknown (or unreadable) file raises :class:`_NeedsDecode`.
    """
    try:
        data = _read_bytes(path)
    except ImageDecodeError:
        if not decode:
            raise _NeedsDecode from None
        raise
    digest = hashlib.sha256(data).hexdigest()
    if known is not None and digest in known:
        w, h = known[digest]
        return digest, w, h
    if not decode:
        raise _NeedsDecode
    h, w = _decode_array(path, data).shape[:2]
    if known is not None:
        known[digest] = (w, h)  # dict item assignment is atomic under the GIL
    return digest, w, h


def _check_item(
    item: Item,
    root: Path,
    require_box: bool,
    known: dict[str, tuple[int, int]] | None = None,
    decode: bool = True,
) -> tuple[Item, list[str]]:
    """Decode one item's image (and mask); the item with size and digest, and problems."""
    reasons: list[str] = []
    size: tuple[int, int] | None = None
    try:
        digest, w, h = _decoded_size(item.path, known, decode)
    except ImageDecodeError as e:
        reasons.append(e.reason)
    else:
        size = (w, h)
        item = replace(item, sha256=digest, width=w, height=h)
        if item.box is not None and not Box._make(item.box).fits(w, h):
            reasons.append(f"bounding box {tuple(item.box)} outside the image ({w}x{h})")
    if item.mask_path is not None:
        shown = _display_path(item.mask_path, root)
        try:
            _, mw, mh = _decoded_size(item.mask_path, known, decode)
        except ImageDecodeError as e:
            reasons.append(f"mask {shown}: {e.reason}")
        else:
            # Masks are drawn in image pixels; another size means a mismatched pair.
            if size is not None and (mw, mh) != size:
                reasons.append(f"mask {shown} is {mw}x{mh} but the image is {size[0]}x{size[1]}")
    if require_box and item.box is None:
        reasons.append("no bounding box (needed for --input box)")
    return item, reasons


# ---- parsing CSV rows ----------------------------------------------------------------


class _CsvRows:
    """The items, bad rows and extra cells of a CSV manifest, collected row by row.

    Every problem of a row becomes one :class:`BadRow` (reasons joined by ``"; "``), so
    a data set is fixed in one pass; labels stripped of whitespace are warned about
    once, at the end (:meth:`warn_stripped`).
    """

    def __init__(self, src: Path, header: list[str], given: list[str] | None) -> None:
        self.src, self.header, self.given = src, header, given
        self.col = _column_index(src, header)
        self.root = src.parent
        # Other columns ride along into to_frame(), unless they would shadow its own.
        self.extra_cols = [
            (i, h.strip())
            for i, h in enumerate(header)
            if h.strip() and h.strip().lower() not in (*self.col, *_FRAME_COLUMNS)
        ]
        self.items: list[Item] = []
        self.bad: list[BadRow] = []
        self.extra: dict[str, dict[str, str]] = {}
        self.first_line: dict[str, int] = {}
        self.stripped: list[tuple[int, str]] = []

    def add(self, line: int, cells: list[str]) -> None:
        """Parse one record: an item, or a bad row naming every problem."""
        def get(name: str) -> str:
            i = self.col.get(name)
            return cells[i].strip() if i is not None and i < len(cells) else ""

        raw_path = get("path")
        item_id = get("id") or (_default_id(raw_path, self.root) if raw_path else None)
        reasons = self._problems(line, cells, get, item_id)
        split = get("split").lower() or None
        box: Box | None = None
        try:
            box = Box.from_cells({k: get(k) for k in BOX_COLUMNS})
        except BoxValueError as e:
            reasons.append(str(e))
        if reasons:
            self.bad.append(BadRow(line, item_id, raw_path or None, "; ".join(reasons)))
            return
        assert item_id is not None
        mask = get("mask_path")
        self.items.append(Item(
            id=item_id, path=_resolve(self.root, raw_path), label=get("label"), row=line, split=split,
            group=get("group") or None, box=box, mask_path=_resolve(self.root, mask) if mask else None,
        ))
        if self.extra_cols:
            self.extra[item_id] = {h: (cells[i] if i < len(cells) else "") for i, h in self.extra_cols}

    def _problems(self, line: int, cells: list[str], get, item_id: str | None) -> list[str]:
        """Everything wrong with a record except its box: field count, path, label, id, split."""
        reasons: list[str] = []
        if len(cells) > len(self.header) and any(c.strip() for c in cells[len(self.header):]):
            reasons.append(f"{len(cells)} fields but the header has {len(self.header)}")
        if not get("path"):
            reasons.append("empty path")
        label = get("label")
        raw_label = cells[self.col["label"]] if self.col["label"] < len(cells) else ""
        label_problem = _label_problem(label, self.given)
        if label_problem:
            reasons.append(label_problem)
        elif raw_label != label:
            self.stripped.append((line, raw_label))
        if item_id is not None:
            if item_id in self.first_line:
                reasons.append(f"duplicate id {item_id!r} (first on line {self.first_line[item_id]})")
            else:
                self.first_line[item_id] = line
        split = get("split").lower() or None
        if split is not None and split not in SPLITS:
            reasons.append(f"invalid split {get('split')!r} (expected train, val or test)")
        return reasons

    def warn_stripped(self) -> None:
        """One :class:`ManifestWarning` for all labels stripped of surrounding whitespace."""
        if not self.stripped:
            return
        n = len(self.stripped)
        shown = ", ".join(f"line {line} {v!r}" for line, v in self.stripped[:5])
        more = f" and {n - 5} more" if n > 5 else ""
        warnings.warn(
            f"manifest {self.src}: stripped surrounding whitespace from {n} "
            f"label{'s' if n != 1 else ''} ({shown}{more})",
            ManifestWarning, stacklevel=3,  # the caller of Manifest.from_csv
        )


# ---- checking files ------------------------------------------------------------------


def _check_items(
    items: Sequence[Item],
    root: Path,
    *,
    require_box: bool,
    known: dict[str, tuple[int, int]] | None,
    workers: int,
    progress: bool,
) -> list[tuple[Item, list[str]]]:
    """:func:`_check_item` for every item, in item order: memo hits here, the rest in threads."""
    results: list[tuple[Item, list[str]]] = [None] * len(items)  # type: ignore[list-item]
    bar = tqdm(total=len(items), desc="checking images", unit="img") if progress else None
    try:
        # Images whose bytes are in the memo need no decode: check them here, in
        # one thread (a read and a hash each; a pool's overhead would dominate).
        todo = _check_known(items, root, require_box, known, results, bar) if known else list(range(len(items)))
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                futures = {pool.submit(_check_item, items[i], root, require_box, known): i for i in todo}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results


def _check_known(
    items: Sequence[Item],
    root: Path,
    require_box: bool,
    known: dict[str, tuple[int, int]],
    results: list[tuple[Item, list[str]]],
    bar,
) -> list[int]:
    """Check the items whose bytes the memo knows into ``results``; the indices left to decode."""
    todo = []
    for i, it in enumerate(items):
        try:
            results[i] = _check_item(it, root, require_box, known, decode=False)
        except _NeedsDecode:
            todo.append(i)
            continue
        if bar is not None:
            bar.update(1)
    return todo


def _warn_duplicates(source: Path, dups: list[DuplicateGroup]) -> None:
    """One :class:`DuplicateImageWarning` naming up to ten groups of byte-identical images."""
    if not dups:
        return
    n_conf = sum(g.conflict for g in dups)
    warnings.warn(
        f"manifest {source}: {len(dups)} image{'s are' if len(dups) != 1 else ' is'} "
        f"stored under more than one id (same SHA-256), {n_conf} with conflicting labels or "
        "across train/test:\n" + "\n".join(f"  {g.describe()}" for g in dups[:10])
        + (f"\n  ... and {len(dups) - 10} more (Manifest.duplicates())" if len(dups) > 10 else ""),
        DuplicateImageWarning, stacklevel=3,  # the caller of Manifest.validate
    )
