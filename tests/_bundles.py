"""A small real run on a BUSI slice and the bundles exported from it (shared by the bundle,
explanation and serve tests).

Real EfficientNet-Lite0 ImageNet weights at 96 px; heads svm-rbf and rf over its avgpool
block, hard and soft votes and a stack over them; the fine-tuned Lite0 (1 epoch, 64 px)
as the end-to-end baseline. About a minute on 2 CPU cores; built once per test session.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"

CONFIG = """
name = "{name}"
manifest = "{csv}"
classes = ["benign", "malignant"]
positive = "malignant"
out = "run"
cache = "cache"
finetuned = "finetuned"

[protocol]
cv = 3
inner_cv = 2
seed = 0
top_k = 2

[features]
specs = ["tf_efficientnet_lite0:avgpool"]
image_size = {image_size}

[sweep]
heads = ["svm-rbf", "rf"]
grids = {{svm-rbf = {{C = [1.0, 10.0]}}, rf = {{max_features = ["sqrt"]}}}}
stacking = {stacking}
"""

BASELINES = """
[baselines]
names = ["lite0"]
set = {epochs = 1, image_size = 64}
"""


def config_text(csv: Path, *, name: str = "bundle_slice", image_size: int = 96, stacking: bool = True,
                baselines: bool = True, repeats: int = 1) -> str:
    """The experiment TOML of these runs (the fixture's by default)."""
    text = CONFIG.format(name=name, csv=csv, image_size=image_size, stacking=str(stacking).lower())
    if repeats != 1:
        text = text.replace("seed = 0\n", f"seed = 0\nrepeats = {repeats}\n", 1)
    return text + (BASELINES if baselines else "")

#: Candidates of the run, one per kind a bundle can hold.
KINDS = {
    "head": "[L] svm-rbf",
    "vote-soft": "[L] vote-soft(svm-rbf+rf)",
    "vote-hard": "[L] vote-hard(svm-rbf+rf)",
    "stack": "[L] stack(svm-rbf+rf)",
    "baseline": "CNN lite0",
}


@dataclass
class BundleRun:
    root: Path
    csv: Path
    run: Path
    cache: Path
    finetuned: Path
    bundles: dict[str, Path]


def slice_csv(folder: Path, per_class: dict[str, int]) -> Path:
    """A BUSI manifest of the first ``per_class[split]`` images of each class and split."""
    src = pd.read_csv(BUSI / "labels.csv")
    df = pd.concat([src[(src.split == s) & (src.label == c)].head(k) for s, k in per_class.items()
                    for c in ("benign", "malignant")])
    for col in ("path", "mask_path", "roi_path"):
        if col in df.columns:
            df[col] = [str(BUSI / p) if isinstance(p, str) else p for p in df[col]]
    path = folder / "labels.csv"
    df.to_csv(path, index=False)
    return path


def build_bundle_run(folder: Path) -> BundleRun:
    """Run the experiment in ``folder`` and export one bundle of every kind."""
    from workbench.bundle.export import Recommendation, export_model
    from workbench.experiment import run_experiment

    if not (BUSI / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {BUSI}")
    csv = slice_csv(folder, {"train": 24, "test": 12})
    cfg = folder / "exp.toml"
    cfg.write_text(config_text(csv))
    run_experiment(cfg, progress=False)
    bundles = {}
    for kind, name in KINDS.items():
        bundles[kind] = export_model(folder / "run", folder / "bundles" / kind, candidate=name, progress=False,
                                     recommendation=Recommendation(above="FNA recommended",
                                                                   below="FNA not recommended"))
    return BundleRun(folder, csv, folder / "run", folder / "cache", folder / "finetuned", bundles)
