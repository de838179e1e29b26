"""Shared fixtures: tiny on-disk datasets and the path of the real BUSI data."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: Column order of the manifests written by :class:`TinyDataset`.
CSV_COLUMNS = ("id", "path", "label", "split", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")
LABELS = ("benign", "malignant")
SPLITS = ("train", "val", "test")
#: Image size (width, height) of the generated images.
IMAGE_SIZE = (48, 40)


def write_png(path: Path, *, seed: int, size: tuple[int, int] = IMAGE_SIZE, gray: bool = False) -> Path:
    """Write a random 8-bit PNG (RGB, or grayscale with ``gray``); same seed, same bytes."""
    w, h = size
    rng = np.random.default_rng(seed)
    shape = (h, w) if gray else (h, w, 3)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L" if gray else "RGB").save(path, format="PNG")
    return path


@dataclass
class TinyDataset:
    """A folder of small random PNGs with a ``labels.csv`` manifest.

    ``rows`` are dicts keyed by :data:`CSV_COLUMNS` (box cells may be ``""``); every
    change goes through :meth:`write_csv` so the CSV always matches ``rows``.
    """

    root: Path
    rows: list[dict] = field(default_factory=list)
    csv_name: str = "labels.csv"
    _next_seed: int = 0

    @property
    def csv(self) -> Path:
        return self.root / self.csv_name

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows]

    def path_of(self, item_id: str) -> Path:
        row = next(r for r in self.rows if r["id"] == item_id)
        return self.root / row["path"]

    def write_csv(self, rows: list[dict] | None = None, name: str | None = None) -> Path:
        """Write ``rows`` (default: all) to ``name`` (default: ``labels.csv``); return its path."""
        path = self.root / (name or self.csv_name)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for r in self.rows if rows is None else rows:
                w.writerow(r)
        return path

    def add_images(self, n: int, *, gray_every: int = 3, box: bool = True) -> list[str]:
        """Add ``n`` new random images (every ``gray_every``-th grayscale); return their ids."""
        new = []
        for _ in range(n):
            i = self._next_seed
            self._next_seed += 1
            item_id = f"img{i:03d}"
            rel = f"images/{item_id}.png"
            write_png(self.root / rel, seed=1000 + i, gray=bool(gray_every) and i % gray_every == gray_every - 1)
            x0, y0 = 2 + i % 5, 3 + i % 4
            cells = (x0, y0, x0 + 20 + i % 7, y0 + 18 + i % 5) if box else ("", "", "", "")
            self.rows.append(
                {
                    "id": item_id,
                    "path": rel,
                    "label": LABELS[i % 2],
                    "split": SPLITS[i % 3],
                    **dict(zip(CSV_COLUMNS[4:], cells)),
                }
            )
            new.append(item_id)
        self.write_csv()
        return new

    def add_row(self, item_id: str, rel_path: str, *, label: str = "benign", box=None) -> None:
        """Add a row for an existing (or deliberately broken) file."""
        cells = tuple(box) if box is not None else ("", "", "", "")
        self.rows.append(
            {"id": item_id, "path": rel_path, "label": label, "split": "train", **dict(zip(CSV_COLUMNS[4:], cells))}
        )
        self.write_csv()

    def add_duplicate(self, of_id: str, new_id: str) -> None:
        """Add ``new_id``: a byte-identical copy of ``of_id``'s image under another name."""
        src = self.path_of(of_id)
        rel = f"images/{new_id}.png"
        (self.root / rel).write_bytes(src.read_bytes())
        row = dict(next(r for r in self.rows if r["id"] == of_id), id=new_id, path=rel)
        self.rows.append(row)
        self.write_csv()

    def add_truncated(self, item_id: str) -> None:
        """Add a row whose PNG is cut in half (decodes as corrupt data)."""
        rel = f"images/{item_id}.png"
        p = write_png(self.root / rel, seed=99_999, size=(64, 64))
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        self.add_row(item_id, rel)


@pytest.fixture
def make_dataset(tmp_path: Path):
    """Factory: ``make_dataset(n=8, name="ds", gray_every=3, box=True) -> TinyDataset``.

    Writes ``n`` random 48x40 PNGs (every ``gray_every``-th grayscale, 0 = none)
    under ``tmp_path / name`` with a ``labels.csv`` of ``id,path,label,split,bbox_*``.
    Images are seeded by their index, so two datasets built alike hold the same bytes.
    """

    def make(n: int = 8, *, name: str = "ds", gray_every: int = 3, box: bool = True) -> TinyDataset:
        ds = TinyDataset(tmp_path / name)
        ds.root.mkdir(parents=True, exist_ok=True)
        ds.add_images(n, gray_every=gray_every, box=box)
        return ds

    return make


@pytest.fixture
def tiny_dataset(make_dataset) -> TinyDataset:
    """Eight random 48x40 PNGs (some grayscale), all with boxes."""
    return make_dataset(8)


@pytest.fixture
def busi_dir() -> Path:
    """The real BUSI data set (``../shared/data/busi``); skips when it is not there."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"
    if not (path / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {path} (expected {path / 'labels.csv'})")
    return path


@pytest.fixture(scope="session")
def bundle_run(tmp_path_factory):
    """A small real BUSI run and one exported bundle of every kind (``tests/_bundles.py``)."""
    from _bundles import build_bundle_run

    return build_bundle_run(tmp_path_factory.mktemp("bundle_run"))


@pytest.fixture
def served():
    """``served(model) -> url``: ``model``'s app on a real uvicorn (127.0.0.1, a free port),
    stopped after the test."""
    from workbench.serve import create_app, start_server

    stops = []

    def start(model) -> str:
        url, stop = start_server(create_app(model))
        stops.append(stop)
        return url

    yield start
    for stop in stops:
        stop()
