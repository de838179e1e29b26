"""Pixel store benchmark (issue 17, item 1): cold vs warm extraction on the CPU.

Three extraction passes of one backbone over all of BUSI, each into an empty feature
cache (so every row is forwarded):

- ``no store``: ``pixel_store=False``, the old path (decode every file);
- ``cold``: an empty pixel store (decode every file, store its pixels);
- ``warm``: the pixel store filled by ``cold`` (no file decoded).

It also times the loader's per-image work alone, single process: a PNG decode vs a read
from the store (memory-mapped, re-hashed), each followed by the backbone's resize, since
on the CPU the forward pass hides most of it. Features must be bit-identical in all three
passes (checked).

Usage::

    OMP_NUM_THREADS=2 nice python benchmarks/bench_pixel_store.py [--busi ../shared/data/busi]
        [--backbone tf_efficientnet_lite0] [--batch 32] [--write]
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from workbench.backbones import get_backbone
from workbench.data import Manifest, decode_image
from workbench.data.pixels import PixelStore
from workbench.features import ExtractOptions, Preprocess, extract

HERE = Path(__file__).resolve().parent


def machine() -> str:
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {torch.get_num_threads()} torch threads, {platform.system()} {platform.machine()}, torch {torch.__version__}"


def run_pass(csv: Path, backbone: str, cache: Path, batch: int,
             pixel_store: bool) -> tuple[float, float, int, np.ndarray]:
    """(wall seconds, pass seconds, images forwarded, features) of one extraction into ``cache``."""
    t0 = time.perf_counter()
    fs = extract(csv, [backbone], cache=cache, options=ExtractOptions(batch_size=batch, pixel_store=pixel_store),
                 progress=False)
    wall = time.perf_counter() - t0
    n = sum(fs.record["forward_images"].values())  # distinct images (BUSI holds one duplicate)
    assert n > 0 and all(v == n for v in fs.record["computed_rows"].values()), "every row must be computed"
    return wall, fs.record["pass_seconds"], n, fs[fs.names[0]]


def loader_rates(items, backbone: str, store: PixelStore) -> dict[str, float]:
    """Images/s of a decode vs a store read, alone and with the backbone's resize: one
    process, one torch thread, the two alternated, best of three (a shared machine)."""
    spec = get_backbone(backbone)
    geom = Preprocess.from_data_config(spec.data_config(None)).geometry
    reads = {"decode": lambda it: decode_image(it.path, keep_gray=True, expect_sha256=it.sha256),
             "store": store.get}
    best: dict[str, float] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(3):
            for name, read in reads.items():
                for resize in (False, True):
                    t0 = time.perf_counter()
                    for it in items:
                        x = read(it)
                        if resize:
                            geom(x)
                    key = name + ("+resize" if resize else "")
                    best[key] = min(best.get(key, float("inf")), time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return {k: len(items) / v for k, v in best.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busi", default=str(HERE.parent.parent / "shared" / "data" / "busi"))
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    csv = Path(args.busi) / "labels.csv"
    tmp = Path(tempfile.mkdtemp(prefix="bench_px_"))
    try:
        rows = {}
        rows["no store (decode every file)"] = run_pass(csv, args.backbone, tmp / "plain", args.batch, False)
        rows["cold (empty pixel store)"] = run_pass(csv, args.backbone, tmp / "c", args.batch, True)
        shutil.rmtree(tmp / "c" / "v1")  # drop the features, keep the pixels
        rows["warm (filled pixel store)"] = run_pass(csv, args.backbone, tmp / "c", args.batch, True)
        ref = rows["no store (decode every file)"][3]
        for name, (_, _, _, f) in rows.items():
            assert np.array_equal(f, ref), f"{name}: features differ from the no-store pass"
        store = PixelStore(tmp / "c" / "pixels")
        size = store.size()
        items = list(Manifest.load(csv).validate(progress=False))
        rates = loader_rates(items, args.backbone, store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = rows["cold (empty pixel store)"][2]
    cmd = "OMP_NUM_THREADS=2 nice python benchmarks/bench_pixel_store.py " + " ".join(argv or sys.argv[1:])
    lines = [
        f"Machine: {machine()}.", "", f"Command: `{cmd.strip()}`", "",
        f"{n} distinct BUSI images, {args.backbone} (default size), batch {args.batch}, fp32, default loader workers; "
        f"each pass into an empty feature cache. Features bit-identical in all three passes (checked).", "",
        "| pass | wall s | pass s | img/s (pass) |", "| --- | ---: | ---: | ---: |",
        *[f"| {k} | {w:.1f} | {p:.1f} | {m / p:.1f} |" for k, (w, p, m, _) in rows.items()], "",
        f"Loader work alone (one process, one torch thread, best of 3): PNG decode {rates['decode']:.0f} img/s, "
        f"pixel-store read (memory-mapped, re-hashed) {rates['store']:.0f} img/s "
        f"({rates['store'] / rates['decode']:.1f}x); with the resize to the backbone's size "
        f"{rates['decode+resize']:.0f} vs {rates['store+resize']:.0f} img/s "
        f"({rates['store+resize'] / rates['decode+resize']:.1f}x). "
        f"Store: {size['entries']} images, {size['bytes'] / 2**20:.0f} MiB.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(f"\n## Pixel store: cold vs warm extraction on the CPU ({time.strftime('%Y-%m-%d')})\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
