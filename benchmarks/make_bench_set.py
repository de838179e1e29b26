"""Make a benchmark set of N distinct PNG files from BUSI (issue 17, "Benchmarks").

Each output image ``bench_<k>.png`` is BUSI image ``k mod 780`` (in manifest order) with
transforms drawn from a generator seeded by ``(seed, k)`` alone, so a file's bytes do not
depend on ``--jobs`` or on which files already exist:

- a random crop of 80-100 % of the width and of the height (independently);
- a horizontal flip (p = 0.5) and a vertical flip (p = 0.5);
- a brightness factor in [0.9, 1.1] and Gaussian noise of sigma 1-4 grey levels;
- a long-side cap (``--size-cap``, default 256: BUSI's own cap, so a no-op there).

The noise makes every file's content (and SHA-256) differ; the script checks it. The
manifest ``manifest.csv`` (the workbench's CSV format: ``id, path, label, split, group,
bbox_*``) carries each source's label and split, its id as ``group`` (the copies of
one source image are not independent: a grouped split keeps them together), and the
lesion box moved with the crop, flips and cap; a box cropped away entirely is left
empty. Masks are not written. ``bench_set.json`` records the settings.

Idempotent: a re-run skips files already present (written by rename, so a present file
is whole), re-hashes them for the manifest and checks the count; a folder made with
another seed, cap or source is refused rather than mixed.

Usage::

    python benchmarks/make_bench_set.py --out /tmp/bench10k [--n 10000] [--seed 0]
        [--size-cap 256] [--jobs 8] [--busi ../shared/data/busi]

Rate (2 busy CPU cores, 200 images, ``--jobs 2``): see benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from workbench.core.io import atomic_write
from workbench.data.manifest import Manifest
from workbench.errors import WorkbenchError

HERE = Path(__file__).resolve().parent
DEFAULT_BUSI = HERE.parent.parent / "shared" / "data" / "busi"
MANIFEST_NAME = "manifest.csv"
SETTINGS_NAME = "bench_set.json"
#: Bump when the transforms change: files of another version are not mixed in.
GENERATOR_VERSION = 1
COLUMNS = ("id", "path", "label", "split", "group", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")


class BenchSetError(WorkbenchError, ValueError):
    """The output folder holds another set, or the set made is not what was asked for."""


@dataclass(frozen=True)
class Source:
    """One BUSI image the set draws from (plain fields: sent to worker processes)."""

    id: str
    path: str
    label: str
    split: str | None
    box: tuple[int, int, int, int] | None


def file_name(k: int) -> str:
    return f"bench_{k:05d}.png"


def load_sources(busi: Path) -> list[Source]:
    """BUSI's items in manifest order (no decoding: the transforms read the files)."""
    m = Manifest.load(busi / "labels.csv")
    return [Source(it.id, str(it.path), it.label, it.split, tuple(it.box) if it.box else None) for it in m]


def transform_box(box: tuple[int, int, int, int] | None, crop: tuple[int, int, int, int], hflip: bool,
                  vflip: bool, scale: float, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The lesion box after cropping to ``crop`` (x0, y0, x1, y1), flipping and scaling to
    ``size`` (w, h); None when the crop leaves no part of it."""
    if box is None:
        return None
    cx0, cy0, cx1, cy1 = crop
    x0, y0 = max(box[0], cx0) - cx0, max(box[1], cy0) - cy0
    x1, y1 = min(box[2], cx1) - cx0, min(box[3], cy1) - cy0
    if x1 <= x0 or y1 <= y0:
        return None
    cw, ch = cx1 - cx0, cy1 - cy0
    if hflip:
        x0, x1 = cw - x1, cw - x0
    if vflip:
        y0, y1 = ch - y1, ch - y0
    w, h = size
    # Outward rounding keeps the whole lesion inside the box; the clip keeps the box inside.
    x0, y0 = int(np.floor(x0 * scale)), int(np.floor(y0 * scale))
    x1, y1 = min(w, int(np.ceil(x1 * scale))), min(h, int(np.ceil(y1 * scale)))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def make_one(k: int, src: Source, seed: int, size_cap: int, out: str) -> dict[str, object]:
    """Write (or find) image ``k``; its manifest row and SHA-256."""
    rng = np.random.default_rng([seed, k])  # per file: independent of jobs and order
    with Image.open(src.path) as im:
        im.load()
        mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16") else "RGB"  # grey stays grey
        w, h = im.size
        fw, fh = rng.uniform(0.8, 1.0, size=2)
        cw, ch = max(1, round(w * fw)), max(1, round(h * fh))
        cx0, cy0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        hflip, vflip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        gain, sigma = float(rng.uniform(0.9, 1.1)), float(rng.uniform(1.0, 4.0))
        scale = min(1.0, size_cap / max(cw, ch))
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        box = transform_box(src.box, (cx0, cy0, cx0 + cw, cy0 + ch), hflip, vflip, scale, size)
        path = Path(out) / file_name(k)
        if path.exists():  # written by rename below: a present file is whole
            data = path.read_bytes()
        else:
            img = im.convert(mode).crop((cx0, cy0, cx0 + cw, cy0 + ch))
            if hflip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if vflip:
                img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
            if scale < 1.0:
                img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
            a = np.asarray(img, dtype=np.float32) * gain + rng.normal(0.0, sigma, size=(size[1], size[0]) +
                                                                      ((3,) if mode == "RGB" else ()))
            buf = io.BytesIO()
            Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode).save(buf, format="PNG")
            data = buf.getvalue()
            # A rename without fsync: a crash leaves the old state or the whole file, and
            # an fsync per file would cost more than the encoding on 10 000 small files.
            tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
            tmp.write_bytes(data)
            os.replace(tmp, path)
    return {"id": Path(file_name(k)).stem, "path": file_name(k), "label": src.label, "split": src.split or "",
            "group": src.id, "box": box, "sha256": hashlib.sha256(data).hexdigest(), "size": size}


def _make_star(args: tuple) -> dict[str, object]:
    return make_one(*args)


def _settings(n: int, seed: int, size_cap: int, sources: Sequence[Source], busi: Path) -> dict[str, object]:
    digest = hashlib.sha256("\n".join(s.id for s in sources).encode()).hexdigest()[:16]
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "size_cap": size_cap,
            "source": str(busi), "source_ids_digest": digest, "n": n}


def make_bench_set(out: str | os.PathLike, n: int = 10_000, *, seed: int = 0, size_cap: int = 256,
                   jobs: int | None = None, busi: str | os.PathLike = DEFAULT_BUSI,
                   progress: bool = True) -> Path:
    """Write ``n`` distinct PNG files and their manifest into ``out``; return the manifest path.

    Raises
    ------
    BenchSetError
        ``out`` holds a set made with other settings, bad ``n`` / ``size_cap``, or two
        files came out byte-identical.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BenchSetError(f"--n {n!r}: expected an integer >= 1")
    if isinstance(size_cap, bool) or not isinstance(size_cap, int) or size_cap < 16:
        raise BenchSetError(f"--size-cap {size_cap!r}: expected an integer >= 16")
    out, busi = Path(out), Path(busi)
    sources = load_sources(busi)
    settings = _settings(n, seed, size_cap, sources, busi)
    out.mkdir(parents=True, exist_ok=True)
    meta = out / SETTINGS_NAME
    if meta.exists():
        old = json.loads(meta.read_text())
        differ = {k: (old.get(k), v) for k, v in settings.items() if k not in ("n", "source") and old.get(k) != v}
        if differ:
            raise BenchSetError(f"{out} holds a benchmark set made with other settings {differ} "
                                f"(old, new): use another --out or remove it")
    elif any(out.glob("bench_*.png")):
        raise BenchSetError(f"{out} holds bench_*.png files but no {SETTINGS_NAME}: not made by this "
                            f"script (or by an older one); use another --out or remove them")
    atomic_write(meta, json.dumps(settings, indent=2).encode())  # before the files: claims the folder

    work = [(k, sources[k % len(sources)], seed, size_cap, str(out)) for k in range(n)]
    jobs = max(1, jobs if jobs is not None else (os.cpu_count() or 1))
    bar = tqdm(total=n, unit="img", desc="bench set", disable=not progress, dynamic_ncols=True)
    rows: list[dict[str, object]] = []
    with bar:
        if jobs == 1:
            for w in work:
                rows.append(make_one(*w))
                bar.update()
        else:
            with ProcessPoolExecutor(jobs) as pool:
                for r in pool.map(_make_star, work, chunksize=max(1, min(64, n // (4 * jobs)))):
                    rows.append(r)
                    bar.update()

    shas = [r["sha256"] for r in rows]
    if len(set(shas)) != n:
        dup = next(s for s in shas if shas.count(s) > 1)
        raise BenchSetError(f"{out}: two files have the same content (SHA-256 {dup}); try another --seed")
    present = len(list(out.glob("bench_*.png")))
    if present < n:
        raise BenchSetError(f"{out}: {present} bench_*.png files after the run, expected {n}")
    lines = io.StringIO()
    wr = csv.writer(lines, lineterminator="\n")
    wr.writerow(COLUMNS)
    for r in rows:
        box = r["box"] or ("", "", "", "")
        wr.writerow([r["id"], r["path"], r["label"], r["split"], r["group"], *box])
    manifest = out / MANIFEST_NAME
    atomic_write(manifest, lines.getvalue().encode())
    if present > n:  # a larger set made earlier with the same settings: the manifest lists the first n
        print(f"note: {out} holds {present} bench files; {MANIFEST_NAME} lists the first {n}", file=sys.stderr)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (images, manifest.csv, bench_set.json)")
    ap.add_argument("--n", type=int, default=10_000, help="number of images (default 10 000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size-cap", type=int, default=256, help="long side cap in pixels (BUSI's own: 256)")
    ap.add_argument("--jobs", type=int, default=None, help="processes (default: every CPU)")
    ap.add_argument("--busi", default=str(DEFAULT_BUSI), help="BUSI folder (labels.csv)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        manifest = make_bench_set(args.out, args.n, seed=args.seed, size_cap=args.size_cap, jobs=args.jobs,
                                  busi=args.busi, progress=not args.no_progress)
    except WorkbenchError as e:
        print(f"make_bench_set: error: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(f"{manifest}: {args.n} images in {dt:.1f} s ({args.n / dt:.0f} img/s, {args.jobs or os.cpu_count()} jobs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
