"""One experiment from one TOML file: extract -> (fine-tune) -> sweep -> baselines -> search -> report.

``workbench run experiments/NAME.toml`` runs every stage, each resuming what the cache,
the fine-tuned store and the run folder already hold, so a second run computes nothing;
``workbench report runs/NAME`` rebuilds the report from the records alone.

Config (paths relative to the config file)::

    name = "busi_benign_malignant"
    manifest = "../../shared/data/busi/labels.csv"
    classes = ["benign", "malignant"]
    positive = "malignant"
    out = "runs/busi_benign_malignant"        # default: runs/<name> beside the config's folder
    cache = "features_cache"
    finetuned = "finetuned"                   # the fine-tuned store (default: $WORKBENCH_FINETUNED or ./finetuned)

    [protocol]   cv = 5, inner_cv = 3, seed = 0, scoring = "auc", metric = "auc", top_k = 3
    [features]   specs = ["tf_efficientnet_lite0:avgpool", ...], image_size = 224 (optional)
                 finetuned = ["tf_efficientnet_lite0"]  (adds BACKBONE@ft-...:taps blocks)
                 nested = false                        (true: BACKBONE@ftn-..., clean CV)
    [finetune]   any FineTuneConfig field (epochs, lr, image_size, cut_remain, ...)
    [sweep]      heads = ["svm-rbf", "rf"], subsets = "all", ensembles = true, stacking = false,
                 [sweep.grids] svm-rbf = {C = [1, 10]}
    [baselines]  names = ["lite0"], tune = false, [baselines.set] epochs = 5
"""
from __future__ import annotations

import json
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ExperimentConfig", "run_experiment", "build_report"]

_TOP = {"name", "manifest", "classes", "positive", "out", "cache", "finetuned", "protocol", "features", "finetune",
        "sweep", "baselines", "report"}
_SECTIONS = {
    "protocol": {"cv", "inner_cv", "seed", "scoring", "metric", "top_k"},
    "features": {"specs", "image_size", "finetuned", "nested", "resize", "input", "batch_size"},
    "sweep": {"heads", "subsets", "ensembles", "stacking", "grids", "ensemble_heads", "n_jobs"},
    "baselines": {"names", "tune", "tune_cv", "set", "val_fraction"},
    "report": {"alpha", "publish"},
}


@dataclass
class ExperimentConfig:
    """A validated experiment config; ``raw`` is the TOML as read (recorded verbatim)."""

    path: Path
    raw: dict[str, Any]
    name: str
    manifest: Path
    out: Path
    cache: Path
    finetuned: Path | None
    classes: list[str] | None
    positive: str | None
    protocol: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExperimentConfig":
        """Read and check a config; unknown keys, heads, baselines or settings are errors."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"experiment config not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
        bad = sorted(set(raw) - _TOP)
        if bad:
            raise ValueError(f"{path}: unknown keys {bad}; known: {sorted(_TOP)}")
        for sec, keys in _SECTIONS.items():
            extra = sorted(set(raw.get(sec, {})) - keys)
            if extra:
                raise ValueError(f"{path}: unknown keys {extra} in [{sec}]; known: {sorted(keys)}")
        for key in ("name", "manifest"):
            if key not in raw:
                raise ValueError(f"{path}: missing '{key}'")
        base = path.resolve().parent
        name = str(raw["name"])
        cfg = cls(
            path=path, raw=raw, name=name, manifest=(base / raw["manifest"]).resolve(),
            out=(base / raw.get("out", f"../runs/{name}")).resolve(),
            cache=(base / raw.get("cache", "../features_cache")).resolve(),
            finetuned=(base / raw["finetuned"]).resolve() if "finetuned" in raw else None,
            classes=list(raw["classes"]) if "classes" in raw else None, positive=raw.get("positive"),
            protocol={"cv": 5, "inner_cv": 3, "seed": 0, "scoring": "auc", "metric": "auc", "top_k": 3,
                      **raw.get("protocol", {})},
            features={"specs": [], "finetuned": [], "nested": False, **raw.get("features", {})},
            finetune=dict(raw.get("finetune", {})),
            sweep={"heads": ["svm-rbf", "rf"], "subsets": "all", "ensembles": True, "stacking": False,
                   **raw.get("sweep", {})},
            baselines={"names": [], "tune": False, "set": {}, **raw.get("baselines", {})},
            report={"alpha": 0.05, **raw.get("report", {})},
        )
        cfg._check_names()
        return cfg

    def _check_names(self) -> None:
        from workbench.backbones.registry import get_backbone
        from workbench.baselines.configs import get_baseline
        from workbench.baselines.finetune import FineTuneConfig
        from workbench.features.extraction import FeatureRequest
        from workbench.heads.zoo import get_head

        where = f"{self.path}"
        try:
            for spec in self.features["specs"]:
                r = FeatureRequest.parse(spec)
                b = get_backbone(r.backbone)
                for t in r.taps or ():
                    b.tap(t)
            for name in self.features["finetuned"]:
                get_backbone(name)
            for h in self.sweep["heads"]:
                get_head(h)
            for b in self.baselines["names"]:
                get_baseline(b)
            FineTuneConfig.from_dict(self.finetune)
            FineTuneConfig.from_dict(self.baselines["set"])
        except (KeyError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise ValueError(f"{where}: {msg}") from None
        if not self.features["specs"] and not self.features["finetuned"]:
            raise ValueError(f"{where}: [features] names no specs and no fine-tuned backbones")


def _log(progress: bool):
    return (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)


def run_experiment(config: str | os.PathLike | ExperimentConfig, *, progress: bool = True,
                   device: str | None = None) -> Path:
    """Run (or resume) every stage of the experiment; return the report folder."""
    cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.load(config)
    from workbench.backbones.finetuned import using_root

    # The fine-tuned store the config names, for this run only (weights ids resolve through it).
    with using_root(cfg.finetuned):
        return _run(cfg, progress, device)


def _run(cfg: "ExperimentConfig", progress: bool, device: str | None) -> Path:
    from workbench.baselines.finetune import FineTuneConfig
    from workbench.baselines.run import run_baselines
    from workbench.data.manifest import Manifest
    from workbench.features.extraction import extract
    from workbench.search.sweep import sweep

    say = _log(progress)
    p = cfg.protocol
    manifest = Manifest.load(cfg.manifest)
    if cfg.classes:
        manifest = manifest.select_classes(cfg.classes)
    manifest = manifest.validate(progress=progress)
    # A run folder made under another protocol is refused before any work.
    from workbench.search.protocol import build_task

    build_task(manifest, cv=p["cv"], inner_cv=p["inner_cv"], seed=p["seed"], scoring=p["scoring"],
               positive=cfg.positive).open_store(cfg.out)
    (cfg.out / "experiment.toml").write_text(cfg.path.read_text())  # the config, verbatim
    ext = {k: cfg.features[k] for k in ("image_size", "resize", "input", "batch_size") if k in cfg.features}

    # 1. fine-tuned features ("with fine-tuning")
    specs = list(cfg.features["specs"])
    ft_config = FineTuneConfig.from_dict(cfg.finetune)
    finetuned_labels = {}
    for backbone in cfg.features["finetuned"]:
        say(f"[{cfg.name}] fine-tuning {backbone} for features")
        if cfg.features["nested"]:
            from workbench.baselines.nested import fine_tune_nested

            ns = fine_tune_nested(backbone, manifest, ft_config, cv=p["cv"], inner_cv=p["inner_cv"], seed=p["seed"],
                                  scoring=p["scoring"], positive=cfg.positive, device=device, progress=progress,
                                  log=say)
            label = ns.label
        else:
            from workbench.baselines.estimator import CNNClassifier

            train_ids = [it.id for it in manifest if it.split != "test"]
            est = CNNClassifier(backbone, manifest, config=ft_config, device=device, progress=progress).fit(train_ids)
            label = est.finetuned_.label
        finetuned_labels[backbone] = label
        from workbench.backbones.registry import get_backbone

        taps = ",".join(get_backbone(backbone).taps)
        specs.append(f"{label}:{taps}")

    # 2. extraction (cache), 3. sweep
    say(f"[{cfg.name}] features: {', '.join(specs)}")
    fs = extract(manifest, specs, cache=cfg.cache, progress=progress, log=say, **ext)
    sw = cfg.sweep
    sweep(manifest, fs, out=cfg.out, heads=sw["heads"], subsets=sw["subsets"], cv=p["cv"], inner_cv=p["inner_cv"],
          seed=p["seed"], scoring=p["scoring"], grids=sw.get("grids"), ensembles=sw["ensembles"],
          ensemble_heads=sw.get("ensemble_heads"), stacking=sw["stacking"], positive=cfg.positive,
          n_jobs=sw.get("n_jobs", 1), progress=progress, log=say)

    # 4. end-to-end baselines on the same folds
    bl = cfg.baselines
    if bl["names"]:
        run_baselines(manifest, bl["names"], cfg.out, cv=p["cv"], inner_cv=p["inner_cv"], seed=p["seed"],
                      scoring=p["scoring"], positive=cfg.positive, overrides=bl["set"], tune=bl["tune"],
                      tune_cv=bl.get("tune_cv", 6), val_fraction=bl.get("val_fraction", 0.15), device=device,
                      progress=progress, log=say)
    (cfg.out / "finetuned.json").write_text(json.dumps(finetuned_labels, indent=1, sort_keys=True) + "\n")
    from workbench.backbones.finetuned import default_root

    inputs = {"manifest": cfg.raw["manifest"], "manifest_file": str(cfg.manifest),
              "finetuned_root": str(default_root().resolve()), "manifest_digest": manifest.digest(), "classes": manifest.classes,
              "n_images": len(manifest), "features": specs,
              # What this config runs: the report shows these candidates only, so
              # records an earlier config left in the (append-only) folder stay out of it.
              "scope": {"blocks": sorted(fs.blocks), "heads": list(sw["heads"]), "baselines": list(bl["names"])}}
    (cfg.out / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
    # 5. search and report, from the records alone
    report = build_report(cfg.out)
    publish = cfg.report.get("publish")
    if publish:  # a copy beside the config, e.g. to commit with it
        import shutil

        dest = (cfg.path.resolve().parent / publish).resolve()
        shutil.copytree(report, dest, dirs_exist_ok=True)
        say(f"[{cfg.name}] report copied to {dest}")
    return report


def build_report(run: str | os.PathLike) -> Path:
    """Rebuild ``RUN/report/`` (tables, figures, provenance) from the run folder's records."""
    from workbench.report.build import write_report

    return write_report(Path(run))
