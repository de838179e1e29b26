"""GPU figures: extraction throughput, full-size fine-tuning time per epoch and test AUC, Grad-CAM.

Run on a machine with a GPU (falls back to the CPU with ``--smoke`` sizes for a dry run):

    python benchmarks/bench_gpu_finetune.py --busi ../shared/data/busi --out OUT [--smoke]

Writes ``OUT/gpu_results.json`` and prints a summary. Steps, each timed on its own:
1. what pretrained weights sit in ``~/.cache/torch`` and ``~/.cache/huggingface``;
2. feature extraction of every BUSI image with EfficientNet-Lite0 (packaged ImageNet
   weights), ResNet-50 and VGG-16 (random init: same speed) at their native sizes, bf16
   autocast, images per second, cold cache then warm;
3. fine-tuning Lite0 at 224 px on the benign-vs-malignant training split (15 % of it
   for early stopping), with and without Cut&Remain: seconds per epoch, test AUC;
4. Grad-CAM of the Cut&Remain network on the correctly classified malignant test
   images: share of maps peaking inside the lesion box;
5. ResNet-50 (torchvision ImageNet weights when cached, else random init, which only
   times the epoch) fine-tuned for a few epochs at 224 px: seconds per epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busi", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU dry run)")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WORKBENCH_FINETUNED", str(out / "finetuned"))
    import torch
    from sklearn.metrics import roc_auc_score

    from workbench.training.finetune import validation_split
    from workbench.training.finetune import FineTuneConfig, fine_tune, predict_proba
    from workbench.data.manifest import Manifest
    from workbench.features.extraction import extract
    from workbench.features.options import ExtractOptions

    res: dict = {"argv": sys.argv, "torch": torch.__version__,
                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    smoke = args.smoke

    def save():
        (out / "gpu_results.json").write_text(json.dumps(res, indent=1, default=str))

    def step(name, fn):
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as e:  # one failed step must not lose the others
            res[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
        res.setdefault("step_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(res[name], default=str)[:1500], flush=True)
        save()

    def caches():
        found = {}
        for d in ("~/.cache/torch", "~/.cache/huggingface", os.environ.get("TORCH_HOME", "~/.cache/torch")):
            p = Path(d).expanduser()
            files = [str(f) for f in p.rglob("*") if f.is_file() and f.suffix in (".pth", ".pt", ".bin", ".safetensors")] \
                if p.is_dir() else []
            found[str(p)] = {"exists": p.is_dir(), "weights_files": files[:50]}
        found["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                              "--format=csv,noheader"], capture_output=True, text=True).stdout.strip() \
            if torch.cuda.is_available() else None
        return found

    step("caches", caches)
    full = Manifest.load(Path(args.busi) / "labels.csv")
    if smoke:
        full = full.subset([it.id for it in full][::40])
    full = full.validate(progress=False)
    bm = full.select_classes(["benign", "malignant"])

    def extraction():
        out_rows = {}
        # Lite0 with its real weights; ResNet-50 and VGG-16 random: throughput depends on the
        # architecture, not the numbers in it.
        for name in ("tf_efficientnet_lite0:avgpool", "resnet50@random:avgpool", "vgg16@random:fc7"):
            for run in ("cold", "warm"):
                t0 = time.perf_counter()
                fs = extract(full, [name], cache=out / "cache", progress=False,
                             options=ExtractOptions(batch_size=64, image_size=64 if smoke else None))
                dt = time.perf_counter() - t0
                out_rows[f"{name} {run}"] = {"images": len(full), "seconds": round(dt, 2),
                                             "img_per_s": round(len(full) / dt, 1),
                                             "computed": sum(fs.record["computed_rows"].values())}
        return out_rows

    step("extraction", extraction)

    train_all = [it for it in bm if it.split == "train"]
    test = [it for it in bm if it.split == "test"]
    train, val = validation_split(train_all, 0.15, 0)
    y_test = np.array([bm.classes.index(it.label) for it in test])
    size = 64 if smoke else 224
    epochs = 2 if smoke else args.epochs
    nets = {}

    def finetune(backbone, cut_remain, cfg_kw):
        cfg = FineTuneConfig(epochs=epochs, image_size=size, cut_remain=cut_remain, **cfg_kw)
        t0 = time.perf_counter()
        ft = fine_tune(backbone, train, val, bm.classes, cfg, progress=False)
        wall = time.perf_counter() - t0
        p = predict_proba(ft.model, test, bm.classes, ft.geometry, ft.data_config)
        nets[(backbone, cut_remain)] = ft
        secs = [h["seconds"] for h in ft.history]
        return {"weights": ft.label, "image_size": size, "epochs_run": len(ft.history), "best_epoch": ft.best_epoch,
                "sec_per_epoch_median": round(float(np.median(secs)), 2), "first_epoch_s": secs[0],
                "wall_s": round(wall, 1), "rows_per_epoch": ft.history[0]["rows"],
                "test_auc": round(float(roc_auc_score(y_test, p[:, 1])), 4),
                "test_acc": round(float((p.argmax(1) == y_test).mean()), 4),
                "best_val_auc": ft.history[ft.best_epoch - 1].get("val_auc"), "config": cfg.to_dict()}

    lite_kw = dict(optimizer="adam", lr=3e-4, schedule="cosine", batch_size=32, patience=6)
    step("finetune_lite0", lambda: finetune("tf_efficientnet_lite0", False, lite_kw))
    step("finetune_lite0_cut_remain", lambda: finetune("tf_efficientnet_lite0", True, lite_kw))

    def cam():
        from workbench.baselines.explain import explain
        from workbench.report.gradcam import CamSet, write_cam_folder

        ft = nets[("tf_efficientnet_lite0", True)]
        p = predict_proba(ft.model, test, bm.classes, ft.geometry, ft.data_config)
        mal = [it for it, row in zip(test, p) if it.label == "malignant" and row.argmax() == 1]
        t0 = time.perf_counter()
        rep = CamSet.from_result(explain(mal, ft.label, device="cuda" if torch.cuda.is_available() else None))
        write_cam_folder(rep, out / "cam")
        return {"correct_malignant": len(mal), "peak_in_box_share": rep.peak_share(),
                "seconds": round(time.perf_counter() - t0, 2)}

    step("gradcam_lite0_cut_remain", cam)

    def resnet():
        from workbench.backbones.registry import get_backbone
        from workbench.backbones.weights import WeightsNotFoundError, resolve_weights

        spec = get_backbone("resnet50")
        try:
            resolve_weights(spec)
            weights = None
        except WeightsNotFoundError:
            weights = "random"
        cfg_kw = dict(optimizer="sgd", lr=1e-3, schedule="cosine", batch_size=32, patience=0)
        r = finetune_r(spec.name, weights, cfg_kw)
        r["weights_used"] = weights or spec.default_weights
        return r

    def finetune_r(backbone, weights, cfg_kw):
        cfg = FineTuneConfig(epochs=2 if smoke else 5, image_size=size, **cfg_kw)
        ft = fine_tune(backbone, train, val, bm.classes, cfg, weights=weights, progress=False)
        p = predict_proba(ft.model, test, bm.classes, ft.geometry, ft.data_config)
        secs = [h["seconds"] for h in ft.history]
        return {"epochs_run": len(secs), "sec_per_epoch_median": round(float(np.median(secs)), 2),
                "first_epoch_s": secs[0], "test_auc": round(float(roc_auc_score(y_test, p[:, 1])), 4)}

    step("finetune_resnet50", resnet)
    print(json.dumps(res, indent=1, default=str)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
