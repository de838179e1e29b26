"""Features of the two preprocessing paths on BUSI: loader workers vs the device.

Extracts the same images twice (``preprocess_on="loader"`` and ``"device"``) into two
fresh caches that share one warm pixel store, and prints the max abs difference of the
features per block and input mode, with each pass's time. On the CPU the difference
must be 0 (the same ops on the same tensors); on a GPU it is the resize kernels'
rounding, which benchmarks/RESULTS.md states.

    .venv/bin/python benchmarks/bench_device_preprocess.py --n 60 --device cpu
    .venv/bin/python benchmarks/bench_device_preprocess.py --n 780 --device cuda --image-size 0
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from workbench.data.manifest import Manifest
from workbench.features import extract
from workbench.features.options import ExtractOptions

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi" / "labels.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default=str(BUSI))
    ap.add_argument("--n", type=int, default=60, help="first N images of the manifest (0: all)")
    ap.add_argument("--features", default="tf_efficientnet_lite0:avgpool")
    ap.add_argument("--image-size", type=int, default=96, help="0: each backbone's own")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()

    m = Manifest.load(args.manifest)
    if args.n:
        m = m.subset(m.ids[: args.n])
    m = m.validate(progress=False)
    features = args.features.split(";")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"{len(m)} images, {features}, size {args.image_size or 'native'}, {args.device}, {args.precision}")
        print(f"{'input':<6} {'block':<34} {'loader s':>9} {'device s':>9} {'max |diff|':>11} {'max |feat|':>11}")
        for input_ in ("whole", "box"):
            base = dict(input=input_, image_size=args.image_size or None, device=args.device,
                        precision=args.precision, batch_size=args.batch_size, num_workers=args.workers)
            # Warm the shared pixel store first, so both timed passes read it.
            extract(m, features, cache=tmp / f"warm-{input_}", options=ExtractOptions(**base), progress=False)
            out, secs = {}, {}
            for site in ("loader", "device"):
                cache = tmp / f"{site}-{input_}"
                cache.mkdir()
                (cache / "pixels").symlink_to(tmp / f"warm-{input_}" / "pixels")
                t0 = time.perf_counter()
                out[site] = extract(m, features, cache=cache, options=ExtractOptions(**base, preprocess_on=site),
                                    progress=False)
                secs[site] = time.perf_counter() - t0
            for b in out["loader"].blocks:
                a, d = out["loader"][b], out["device"][b]
                print(f"{input_:<6} {b:<34} {secs['loader']:>9.2f} {secs['device']:>9.2f} "
                      f"{float(np.abs(a - d).max()):>11.3g} {float(np.abs(a).max()):>11.3g}")


if __name__ == "__main__":
    main()
