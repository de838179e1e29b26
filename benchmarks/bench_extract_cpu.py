"""CPU extraction benchmarks (issue: foundation).

1. Pipeline efficiency per backbone: images/s of ``extract()`` (decode in a loader
   worker, resize, normalise, forward, cache write) divided by images/s of the bare
   tap model's forward on pre-decoded, pre-resized tensors at the same batch size.
   Goal >= 0.9: decoding is hidden behind compute.
2. Warm re-run vs cold run of ``extract()`` on all of BUSI: goal >= 100x faster and
   zero forward passes.

Usage::

    python benchmarks/bench_extract_cpu.py [--busi ../shared/data/busi] [--n 96] [--write]

``--write`` appends the results to benchmarks/RESULTS.md with the machine and command.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.backbones import load_backbone
from workbench.data import Manifest, decode_image
from workbench.data.pixels import PixelStore
from workbench.features import ExtractOptions, Preprocess, extract

HERE = Path(__file__).resolve().parent
BACKBONES = ["tf_efficientnet_lite0", "resnet18@random", "alexnet@random", "resnet50@random"]


def bare_rate(spec: str, items, batch: int) -> float:
    """Forward images/s on tensors decoded and resized beforehand (warm-up excluded)."""
    name, _, weights = spec.partition("@")
    lb = load_backbone(name, weights or None)
    pre = Preprocess.from_data_config(lb.data_config)
    x = torch.stack([pre.normalize(pre.geometry(decode_image(it.path))[None])[0] for it in items])
    with torch.inference_mode():
        lb.model(x[:batch])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            lb.model(x[i:i + batch])
        return len(x) / (time.perf_counter() - t0)


def pipeline_rate(spec: str, manifest: Manifest, batch: int, pixels: Path | None = None) -> float:
    """extract() images/s over its decode+forward pass, into a fresh cache; with
    ``pixels``, reading a pixel store filled beforehand (no decoding), else decoding
    every image (the store off)."""
    with tempfile.TemporaryDirectory() as tmp:
        if pixels is not None:
            os.symlink(pixels, Path(tmp) / "pixels")  # the cache's store is <cache>/pixels
        opts = ExtractOptions(batch_size=batch, pixel_store=pixels is not None)
        fs = extract(manifest, [spec], cache=tmp, options=opts, progress=False)
        assert sum(fs.record["forward_images"].values()) == len(manifest)
        return len(manifest) / fs.record["pass_seconds"]


def warm_cold(csv: Path, spec: str, batch: int) -> dict:
    tmp = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        cold = extract(csv, [spec], cache=tmp, options=ExtractOptions(batch_size=batch), progress=False)
        t_cold = time.perf_counter() - t0
        t_warm = float("inf")
        for _ in range(3):  # best of three warm runs
            t0 = time.perf_counter()
            warm = extract(csv, [spec], cache=tmp, options=ExtractOptions(batch_size=batch), progress=False)
            t_warm = min(t_warm, time.perf_counter() - t0)
        name = warm.names[0]
        assert (warm[name] == cold[name]).all()
        return {"n": len(warm), "cold_s": t_cold, "warm_s": t_warm,
                "forward_warm": sum(warm.record["forward_images"].values())}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def machine() -> str:
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {torch.get_num_threads()} torch threads, {platform.system()} {platform.machine()}, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busi", type=Path, default=HERE.parent.parent / "shared" / "data" / "busi")
    ap.add_argument("--n", type=int, default=96, help="images per backbone for the efficiency runs")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the best counts")
    ap.add_argument("--backbones", nargs="*", default=BACKBONES)
    ap.add_argument("--skip-warm-cold", action="store_true")
    ap.add_argument("--warm-pixels", action="store_true",
                    help="the pipeline reads a pixel store filled beforehand (issue 17: decode once, ever), "
                         "instead of decoding every image")
    ap.add_argument("--write", action="store_true", help="append results to benchmarks/RESULTS.md")
    args = ap.parse_args()

    csv = args.busi / "labels.csv"
    full = Manifest.load(csv)
    sub = full.subset(full.ids[: args.n]).validate()
    pixels = None
    if args.warm_pixels:  # fill a store once: every pipeline run below then reads pixels, decodes nothing
        pixels = Path(tempfile.mkdtemp()) / "pixels"
        store = PixelStore(pixels)
        for it in sub:
            store.get(it, decode=decode_image)
    lines = ["| backbone | bare forward img/s | pipeline img/s | ratio (goal >= 0.9) |", "| --- | ---: | ---: | ---: |"]
    for spec in args.backbones:
        # This machine's speed drifts (shared host): alternate the two and keep each one's best.
        bare = pipe = 0.0
        for _ in range(args.repeats):
            bare = max(bare, bare_rate(spec, list(sub), args.batch))
            pipe = max(pipe, pipeline_rate(spec, sub, args.batch, pixels))
        lines.append(f"| {spec} | {bare:.2f} | {pipe:.2f} | {pipe / bare:.2f} |")
        print(lines[-1], flush=True)
    if not args.skip_warm_cold:
        wc = warm_cold(csv, "tf_efficientnet_lite0:avgpool", args.batch)
        lines += ["", "| run (all BUSI, tf_efficientnet_lite0:avgpool) | images | seconds | forward passes |",
                  "| --- | ---: | ---: | ---: |",
                  f"| cold (empty cache) | {wc['n']} | {wc['cold_s']:.2f} | {wc['n']} |",
                  f"| warm (same command again) | {wc['n']} | {wc['warm_s']:.3f} | {wc['forward_warm']} |",
                  f"| **speed-up** (goal >= 100x) | | **{wc['cold_s'] / wc['warm_s']:.0f}x** | |"]
        print("\n".join(lines[-5:]))
    if args.write:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
        block = [f"\n## CPU extraction ({time.strftime('%Y-%m-%d')}, commit {rev})", "",
                 f"Machine: {machine()}.", "",
                 f"Command: `python benchmarks/bench_extract_cpu.py --n {args.n} --batch {args.batch} --repeats {args.repeats}"
                 f"{' --warm-pixels' if args.warm_pixels else ''}{' --skip-warm-cold' if args.skip_warm_cold else ''} "
                 f"--write`", "",
                 "Pipeline input: " + ("a pixel store filled beforehand (no decoding)." if args.warm_pixels
                                       else "every image decoded from its file (pixel store off)."), "",
                 f"Efficiency: {args.n} BUSI images per backbone, batch {args.batch}, fp32, default loader "
                 "workers; the pipeline's time covers its whole decode-and-forward pass (first batch and "
                 "worker start included), the bare model's excludes a warm-up batch. Best of "
                 f"{args.repeats} alternating runs each.", "", *lines, ""]
        with open(HERE / "RESULTS.md", "a") as f:
            f.write("\n".join(block))
        print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    sys.exit(main())
