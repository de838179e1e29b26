"""Issue 17's GPU benchmark in one command: per-backbone throughput and roofline share,
six backbones over 10k images cold and warm, fine-tuning epochs from the pixel store vs
PNG, peak GPU memory and host RSS. Sized to finish within ~8 minutes on one H200.

Usage (on the GPU machine; BUSI and the workbench checkout on ``PYTHONPATH``)::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python benchmarks/gpu/bench_scale.py \\
        --busi BUSI --out $OUT/scale.md [--set DIR] [--sections set,decode,six,backbones,finetune]

    python benchmarks/gpu/bench_scale.py --smoke --out /tmp/scale.md   # CPU dry run, ~20-60 s

Sections (``--sections``, in this order; each one in its own try/except, its error
recorded in the table, the rest still run; ``--budget-s`` skips what would start late):

``set``
    The 10k-image set (``benchmarks/make_bench_set.py``) into ``WORK/set``, unless
    ``--set DIR`` names one already made.
``decode``
    PNG decode rate of the set (``decode_image``) in as many processes as the extraction
    loader uses on this device.
``six``
    AlexNet, VGG-16, VGG-19, ResNet-18, ResNet-50, Inception-v3 in one ``extract`` over
    the set: cold (empty feature cache and pixel store: validation, decode, store,
    forward) then warm (pixel store filled, feature cache emptied).
``backbones``
    Per backbone (the six and EfficientNet-Lite0), batch >= 256: the bare tap model's
    img/s on synthetic device tensors, and the pipeline's (``extract`` from the filled
    pixel store, ``preprocess_on="device"`` where ``ExtractOptions`` has it): whole-pass
    img/s, and steady-state img/s from two passes of different sizes (their difference
    cancels worker start-up and the first batch). GMAC per image is counted with
    ``torch.utils.flop_counter.FlopCounterMode`` on the tap model; the roofline is the
    device's dense bf16 peak (``PEAK_BF16_TFLOPS``) over 2 x GMAC.
``finetune``
    EfficientNet-Lite0 and ResNet-50 on BUSI benign vs malignant (its training split,
    15 % held out for validation), native sizes: seconds per epoch read from PNG files vs
    from a pixel store (``fine_tune(pixels=...)`` where it has that argument); epoch 1 of
    the store run fills the store, later epochs read it.

All networks use seeded random weights (``@random``): throughput depends on the
architecture, not on the numbers; nothing is ever downloaded. Peak GPU memory is
``torch.cuda.max_memory_allocated`` per section; host peak RSS is ``getrusage`` of this
process and of its (waited-for) children. The Markdown is rewritten to ``--out`` after
every section, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SECTIONS = ("set", "decode", "six", "backbones", "finetune")
SIX = ("alexnet@random:fc7", "vgg16@random:fc7", "vgg19@random:fc7", "resnet18@random:avgpool",
       "resnet50@random:avgpool", "inception_v3@random:avgpool")
SEVEN = SIX + ("tf_efficientnet_lite0@random:avgpool",)
FINETUNE = ("tf_efficientnet_lite0", "resnet50")
#: Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by device-name substring (first
#: match wins). Sources: NVIDIA H200 datasheet (SXM: 1 979 TFLOP/s with sparsity, i.e.
#: 989.5 dense; NVL: 1 671 / 835.5) and the H100 datasheet (SXM 989.5, PCIe 756).
PEAK_BF16_TFLOPS = (("H200 NVL", 835.5), ("H200", 989.5), ("H100 PCIe", 756.0), ("H100", 989.5),
                    ("A100", 312.0))

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - _T0:6.1f}s] {msg}", flush=True)


def default_busi() -> Path:
    for p in (REPO / "shared" / "data" / "busi", REPO.parent / "shared" / "data" / "busi"):
        if (p / "labels.csv").is_file():
            return p
    return REPO.parent / "shared" / "data" / "busi"


def host_rss_mib() -> tuple[float, float]:
    """Peak RSS (MiB) of this process and of its largest waited-for child (ru_maxrss is KiB on Linux)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def peak_tflops(device_name: str, given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return given, "given with --peak-tflops"
    for key, v in PEAK_BF16_TFLOPS:
        if key in device_name:
            return v, f"NVIDIA datasheet, {key} dense bf16"
    return None, "unknown for this device (give --peak-tflops)"


def _decode_one(path: str) -> int:
    from workbench.data.images import decode_image

    return int(decode_image(path, keep_gray=True).numel())


class Bench:
    """The run's settings, results and the Markdown made from them."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.torch = torch
        self.dev = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
        self.cuda = self.dev.type == "cuda"
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_scale_"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.gpu = torch.cuda.get_device_name(0) if self.cuda else "none (CPU run)"
        self.peak, self.peak_src = peak_tflops(self.gpu, args.peak_tflops)
        self.tables: dict[str, list[str]] = {}
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.manifest = None  # the set's validated Manifest
        self.rates: dict[str, float] = {}  # decode rate, slowest backbone, cold/warm six

    # ---- plumbing ------------------------------------------------------------------

    def section(self, name: str, fn: Callable[[], None]) -> None:
        if name not in self.args.sections:
            return
        if time.perf_counter() - _T0 > self.args.budget_s:
            self.errors.append(f"{name}: skipped, the time budget (--budget-s {self.args.budget_s}) was spent")
            log(f"skip {name}: over budget")
            return
        log(f"section {name} ...")
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # one failed section must not lose the others
            self.errors.append(f"{name}: {type(e).__name__}: {e}\n\n```\n{traceback.format_exc()[-2000:]}```")
            log(f"section {name} FAILED: {type(e).__name__}: {e}")
        log(f"section {name} done in {time.perf_counter() - t0:.1f} s")
        self.write()

    def gpu_mib(self) -> str:
        return f"{self.torch.cuda.max_memory_allocated() / 2**20:.0f}" if self.cuda else "n/a"

    def options(self, **kw):
        from workbench.features.options import ExtractOptions

        fields = {f.name for f in dataclasses.fields(ExtractOptions)}
        if "preprocess_on" in fields and self.args.preprocess_on:
            kw["preprocess_on"] = self.args.preprocess_on
        kw.setdefault("batch_size", self.args.batch)
        kw.setdefault("image_size", self.args.image_size)
        kw.setdefault("device", str(self.dev))
        if self.cuda:
            kw.setdefault("precision", "bf16")
        return ExtractOptions(**kw)

    def extract(self, manifest, features, cache: Path, **kw):
        from workbench.features.extraction import extract

        t0 = time.perf_counter()
        fs = extract(manifest, list(features), cache=cache, options=self.options(**kw), progress=False)
        return fs, time.perf_counter() - t0

    # ---- sections ------------------------------------------------------------------

    def make_set(self) -> None:
        from workbench.data.manifest import Manifest

        if self.args.set:
            csv = Path(self.args.set) / "manifest.csv"
            how = f"given (`--set {self.args.set}`)"
        else:
            spec = importlib.util.spec_from_file_location("make_bench_set", HERE.parent / "make_bench_set.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules["make_bench_set"] = mod  # forked workers find its functions by name
            spec.loader.exec_module(mod)
            t0 = time.perf_counter()
            csv = mod.make_bench_set(self.work / "set", self.args.n, seed=0, jobs=self.args.jobs,
                                     busi=self.args.busi, progress=False)
            dt = time.perf_counter() - t0
            how = f"generated in {dt:.1f} s ({self.args.n / dt:.0f} img/s, {self.args.jobs or os.cpu_count()} processes)"
        t0 = time.perf_counter()
        self.manifest = Manifest.load(csv).validate(progress=False, n_jobs=self.args.jobs or 0)
        self.notes.append(f"Image set: {len(self.manifest)} PNG files, {how}; validated (hash + decode) in "
                          f"{time.perf_counter() - t0:.1f} s.")

    def need_set(self):
        if self.manifest is None:
            self.make_set()
        return self.manifest

    def loader_workers(self) -> int:
        from workbench.features.extraction import _default_workers

        return max(1, _default_workers(self.dev))

    def decode(self) -> None:
        m = self.need_set()
        paths = [str(it.path) for it in m]
        workers = self.loader_workers()
        t0 = time.perf_counter()
        with ProcessPoolExecutor(workers) as pool:
            n = sum(1 for _ in pool.map(_decode_one, paths, chunksize=max(1, len(paths) // (8 * workers))))
        dt = time.perf_counter() - t0
        self.rates["decode"] = n / dt
        self.tables["decode"] = [
            "| what | images | processes | s | img/s |", "| --- | ---: | ---: | ---: | ---: |",
            f"| PNG decode (`decode_image`, pool start included) | {n} | {workers} | {dt:.2f} | {n / dt:.0f} |"]

    def six(self) -> None:
        m = self.need_set()
        cache = self.work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        rows = ["| run | images | forward passes | wall s | pass s | img/s (wall) | img/s (pass) | peak GPU MiB |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        self.tables["six"] = rows
        feats = self.args.six
        for run in ("cold", "warm"):
            if run == "warm":
                shutil.rmtree(cache / "v1", ignore_errors=True)  # features gone; pixels and decode memo stay
            if self.cuda:
                self.torch.cuda.reset_peak_memory_stats()
            # The Manifest loaded fresh: validation (hash, and a decode unless the cache's
            # memo knows the file) is part of what a user's cold run pays.
            from workbench.data.manifest import Manifest

            fs, wall = self.extract(Manifest.load(m.source), feats, cache)
            fwd = sum(fs.record["forward_images"].values())
            ps = fs.record["pass_seconds"]
            self.rates[run] = len(m) / wall
            rows.append(f"| {run} | {len(m)} | {fwd} | {wall:.2f} | {ps:.2f} | {len(m) / wall:.0f} | "
                        f"{len(m) / ps:.0f} | {self.gpu_mib()} |")
            log(rows[-1])
            self.write()

    def backbones(self) -> None:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from workbench.backbones.loading import load_backbone
        from workbench.data.pixels import PixelStore
        from workbench.features.request import FeatureRequest

        m = self.need_set()
        cache = self.work / "cache"
        store = PixelStore(cache / "pixels")
        missing = [it for it in m if store.load(it.sha256) is None]
        if missing:  # fill it, so both passes read the store (timed apart, not in the table)
            t0 = time.perf_counter()
            fs, _ = self.extract(m.subset([it.id for it in missing]), [self.args.backbones[0]], cache)
            self.notes.append(f"Pixel store filled for the per-backbone passes: {len(missing)} images "
                              f"in {time.perf_counter() - t0:.1f} s.")
        small = m.subset(m.ids[: max(self.args.batch, len(m) // 4)])  # a quarter: n differs from the rest
        rows = ["| backbone | input px | GMAC / img | bare img/s | pipeline img/s (whole pass) | pipeline img/s "
                "(steady) | steady / bare | bare % of roofline | steady % of roofline | peak GPU MiB |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        self.tables["backbones"] = rows
        slowest = float("inf")
        for feat in self.args.backbones:
            if time.perf_counter() - _T0 > self.args.budget_s:
                rows.append(f"| {feat} | skipped: time budget spent | | | | | | | | |")
                continue
            try:
                if self.cuda:
                    torch.cuda.reset_peak_memory_stats()
                req = FeatureRequest.parse(feat)
                lb = load_backbone(req.backbone, req.weights, taps=list(req.taps))
                size = self.args.image_size or lb.data_config.input_size
                model = lb.model.eval()
                with FlopCounterMode(display=False) as fc, torch.inference_mode():
                    model(torch.zeros(1, 3, size, size))
                gmac = fc.get_total_flops() / 2e9
                bare = self.bare_rate(model, size)
                del model, lb
                shutil.rmtree(cache / "v1", ignore_errors=True)
                fs_s, _ = self.extract(small, [feat], cache)
                fs_l, _ = self.extract(m, [feat], cache)  # computes the rows the small pass lacks
                n_s, t_s = sum(fs_s.record["forward_images"].values()), fs_s.record["pass_seconds"]
                n_l, t_l = sum(fs_l.record["forward_images"].values()), fs_l.record["pass_seconds"]
                shutil.rmtree(cache / "v1", ignore_errors=True)
                whole = n_l / t_l
                steady = (n_l - n_s) / (t_l - t_s) if n_l > n_s and t_l > t_s else whole
                slowest = min(slowest, steady)
                roof = self.peak * 1e12 / (2 * gmac * 1e9) if self.peak else None
                pct = (lambda r: f"{100 * r / roof:.1f}") if roof else (lambda r: "n/a")
                rows.append(f"| {feat} | {size} | {gmac:.2f} | {bare:.0f} | {whole:.0f} | {steady:.0f} | "
                            f"{steady / bare:.2f} | {pct(bare)} | {pct(steady)} | {self.gpu_mib()} |")
            except Exception as e:  # one backbone's failure must not lose the others
                rows.append(f"| {feat} | ERROR: {type(e).__name__}: {str(e)[:200]} | | | | | | | | |")
                self.errors.append(f"backbones/{feat}: {type(e).__name__}: {e}\n\n```\n"
                                   f"{traceback.format_exc()[-2000:]}```")
            log(rows[-1])
            self.write()
        if slowest < float("inf"):
            self.rates["slowest"] = slowest

    def bare_rate(self, model, size: int) -> float:
        """img/s of the tap model alone on synthetic device tensors (as extraction runs it:
        channels_last and bf16 autocast on a GPU), warm-up excluded."""
        import contextlib

        import torch

        model = model.to(self.dev)
        x = torch.randn(self.args.batch, 3, size, size, device=self.dev)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()
        sync = torch.cuda.synchronize if self.cuda else (lambda: None)
        with torch.inference_mode(), amp:
            for _ in range(3):
                model(x)
            sync()
            n, t0 = 0, time.perf_counter()
            while n < 3 or time.perf_counter() - t0 < self.args.bare_seconds:
                model(x)
                n += 1
                if n % 5 == 0:
                    sync()
            sync()
            return n * self.args.batch / (time.perf_counter() - t0)

    def finetune(self) -> None:
        import numpy as np

        from workbench.data.manifest import Manifest
        from workbench.data.pixels import PixelStore
        from workbench.training.finetune import FineTuneConfig, fine_tune, validation_split

        bm = Manifest.load(Path(self.args.busi) / "labels.csv").select_classes(["benign", "malignant"])
        if self.args.smoke:
            bm = bm.subset(bm.ids[::25])
        bm = bm.validate(progress=False)
        train, val = validation_split([it for it in bm if it.split == "train"], 0.15, 0)
        has_pixels = "pixels" in inspect.signature(fine_tune).parameters
        rows = ["| network | read from | rows / epoch | epoch 1 s | later epochs s (median) | peak GPU MiB |",
                "| --- | --- | ---: | ---: | ---: | ---: |"]
        self.tables["finetune"] = rows
        for backbone in self.args.finetune:
            for source in ("PNG", "pixel store"):
                if source == "pixel store" and not has_pixels:
                    rows.append(f"| {backbone} | {source} | n/a: this fine_tune has no pixels= argument | | | |")
                    continue
                try:
                    if self.cuda:
                        self.torch.cuda.reset_peak_memory_stats()
                    cfg = FineTuneConfig(epochs=self.args.ft_epochs, batch_size=32 if not self.args.smoke else 4,
                                         image_size=self.args.image_size, patience=0, optimizer="adam", lr=3e-4)
                    # A store (and fine-tuned root) of its own per run: the PNG run must not
                    # find the other's network, and epoch 1 of the store run fills it.
                    tag = f"{backbone}-{'store' if source != 'PNG' else 'png'}"
                    root = self.work / "finetuned" / tag
                    shutil.rmtree(root, ignore_errors=True)
                    kw = {"pixels": PixelStore(self.work / "ft_pixels" / tag)} if source != "PNG" else {}
                    ft = fine_tune(backbone, train, val, bm.classes, cfg, weights="random", root=root,
                                   device=str(self.dev), progress=False, **kw)
                    secs = [h["seconds"] for h in ft.history]
                    later = f"{float(np.median(secs[1:])):.2f}" if len(secs) > 1 else "n/a"
                    rows.append(f"| {backbone} | {source} | {ft.history[0].get('rows', len(train))} | "
                                f"{secs[0]:.2f} | {later} | {self.gpu_mib()} |")
                except Exception as e:
                    rows.append(f"| {backbone} | {source} | ERROR: {type(e).__name__}: {str(e)[:200]} | | | |")
                    self.errors.append(f"finetune/{backbone}/{source}: {type(e).__name__}: {e}\n\n```\n"
                                       f"{traceback.format_exc()[-2000:]}```")
                log(rows[-1])
                self.write()

    # ---- output --------------------------------------------------------------------

    def markdown(self) -> str:
        import torch

        a = self.args
        cmd = "python benchmarks/gpu/bench_scale.py " + " ".join(a.argv)
        out = [f"# Scale benchmark ({time.strftime('%Y-%m-%d %H:%M')})", "",
               f"Machine: {self.gpu}; {os.cpu_count()} CPU cores; {platform.system()} {platform.machine()}; "
               f"Python {platform.python_version()}, torch {torch.__version__}; device {self.dev}"
               f"{', bf16 autocast + channels_last' if self.cuda else ', fp32'}.", "",
               f"Command: `{cmd.strip()}`", "",
               "Weights: seeded random (`@random`) for every network: throughput depends on the architecture, "
               "not the numbers. Nothing downloaded.", "",
               f"Batch {a.batch}; input size {a.image_size or 'native per backbone'}; "
               f"bf16 dense peak {self.peak or 'n/a'} TFLOP/s ({self.peak_src}); roofline img/s = peak / (2 x GMAC).",
               "", *self.notes, ""]
        titles = {"decode": "## PNG decode rate",
                  "six": f"## Six backbones together over the set ({', '.join(a.six)})",
                  "backbones": "## Per backbone, from the pixel store",
                  "finetune": f"## Fine-tuning epochs on BUSI benign vs malignant (random init, Adam, batch "
                              f"{4 if a.smoke else 32}, {a.ft_epochs} epochs, input {a.image_size or 'native'})"}
        for k, title in titles.items():
            if k in self.tables:
                out += [title, "", *self.tables[k], ""]
        r = self.rates
        if "cold" in r or "warm" in r:
            lines = []
            if "cold" in r:
                lines.append(f"- cold: {len(self.manifest) / r['cold']:.2f} s for {len(self.manifest)} images "
                             f"(goal <= 6 s for 10 000)")
            bound = min(v for k, v in r.items() if k in ("decode", "slowest")) if ("decode" in r or "slowest" in r) \
                else None
            if bound:
                for run in ("cold", "warm"):
                    if run in r:
                        lines.append(f"- {run}: {r[run]:.0f} img/s = {100 * r[run] / bound:.0f} % of the lesser of "
                                     f"the decode rate and the slowest backbone's steady rate ({bound:.0f} img/s; "
                                     f"goal >= 80 %)")
            out += ["Goals (issue 17):", "", *lines, ""]
        self_mib, child_mib = host_rss_mib()
        gpu_total = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (last section)" if self.cuda else "n/a"
        out += ["## Memory", "", "| what | peak |", "| --- | ---: |",
                f"| GPU memory allocated (torch.cuda.max_memory_allocated; per section in the tables) | {gpu_total} |",
                f"| host RSS, this process | {self_mib:.0f} MiB |",
                f"| host RSS, largest child (loader workers, pools) | {child_mib:.0f} MiB |", ""]
        if self.errors:
            out += ["## Errors", "", *[f"- {e}" for e in self.errors], ""]
        return "\n".join(out)

    def write(self) -> None:
        if self.args.out:
            Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(self.args.out) + ".part")
            tmp.write_text(self.markdown())
            os.replace(tmp, self.args.out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the Markdown here (rewritten after every section)")
    ap.add_argument("--busi", default=None, help="BUSI folder (labels.csv): the set's source and fine-tuning data")
    ap.add_argument("--set", default=None, help="a set made by make_bench_set.py (else generated into WORK/set)")
    ap.add_argument("--work", default=None, help="scratch folder (caches, stores); default a new temporary one")
    ap.add_argument("--n", type=int, default=10_000, help="images in the generated set")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=None, help="override every input size (default native)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--backbones", default=",".join(SEVEN), help="per-backbone section's features")
    ap.add_argument("--six", default=",".join(SIX), help="features run together in the six section")
    ap.add_argument("--finetune", default=",".join(FINETUNE), help="networks of the fine-tuning section")
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--preprocess-on", default="device",
                    help="ExtractOptions.preprocess_on where that option exists ('' to leave it out)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device, TFLOP/s")
    ap.add_argument("--bare-seconds", type=float, default=2.0, help="timed seconds of each bare-model run")
    ap.add_argument("--jobs", type=int, default=None, help="processes for the set and validation (default all)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="start no section after this many seconds")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny CPU run: 16 images, batch 4, 64 px, two backbones, 2 fine-tuning epochs")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.n, args.batch, args.image_size = 16, 4, 64
        args.backbones = "resnet18@random:avgpool,alexnet@random:fc7"
        args.six = args.backbones
        args.finetune = "resnet18,tf_efficientnet_lite0"
        args.ft_epochs, args.bare_seconds, args.jobs = 2, 0.2, args.jobs or 2
    args.busi = Path(args.busi) if args.busi else default_busi()
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        ap.error(f"--sections: unknown {bad}; choose from {', '.join(SECTIONS)}")
    for name in ("backbones", "six", "finetune"):
        setattr(args, name, [s.strip() for s in getattr(args, name).split(",") if s.strip()])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    b = Bench(args)
    log(f"device {b.dev} ({b.gpu}); work folder {b.work}; sections {','.join(args.sections)}")
    b.section("set", b.make_set)
    b.section("decode", b.decode)
    b.section("six", b.six)
    b.section("backbones", b.backbones)
    b.section("finetune", b.finetune)
    b.write()
    print(b.markdown(), flush=True)
    log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
