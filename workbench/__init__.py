"""Image-classification research workbench (medical imaging first).

Data flow: manifest -> images decoded once -> backbones (one registry) -> feature
cache (content-addressed) -> feature blocks aligned by image id -> sweep (heads over
every block subset, vote ensembles, nested CV on fixed folds) -> append-only records
-> search (rank on CV, select, test against the fine-tuned CNN baselines) -> report.

The whole flow from Python::

    import workbench as wb

    fs = wb.extract("labels.csv", ["tf_efficientnet_lite0"], options=wb.ExtractOptions(image_size=160))
    df = wb.sweep("labels.csv", fs, out="runs/x", protocol=wb.Protocol(cv=5),
                  options=wb.SweepOptions(heads=("svm-rbf", "rf")))
    wb.run_experiment("experiments/busi_benign_malignant.toml")  # every stage, from a TOML

The public names below are imported lazily, so ``import workbench`` (and ``workbench
--help``) does not pay for importing torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.core.lazy import lazy_exports

from workbench._version import __version__

#: Public name -> the module defining it (imported on first use).
_EXPORTS = {
    # errors
    "WorkbenchError": "workbench.errors",
    "ConfigError": "workbench.errors",
    "UnknownNameError": "workbench.errors",
    # data
    "Manifest": "workbench.data.manifest",
    "ManifestError": "workbench.data.manifest",
    # evaluation
    "Protocol": "workbench.evaluation.settings",
    "ResultStore": "workbench.evaluation.store",
    "summarize": "workbench.evaluation.summary",
    # backbones
    "get_backbone": "workbench.backbones",
    "list_backbones": "workbench.backbones",
    "register_backbone": "workbench.backbones",
    "load_backbone": "workbench.backbones",
    # training
    "FineTuneConfig": "workbench.training.config",
    "fine_tune": "workbench.training.finetune",
    "fine_tune_nested": "workbench.training.nested",
    # features
    "ExtractOptions": "workbench.features.options",
    "FeatureCache": "workbench.features.cache",
    "FeatureRequest": "workbench.features.request",
    "FeatureSet": "workbench.features.featureset",
    "extract": "workbench.features.extraction",
    # heads
    "TunedHead": "workbench.heads",
    "get_head": "workbench.heads",
    "list_heads": "workbench.heads",
    "register_head": "workbench.heads",
    # baselines
    "CNNClassifier": "workbench.baselines.estimator",
    "get_baseline": "workbench.baselines.configs",
    "list_baselines": "workbench.baselines.configs",
    "register_baseline": "workbench.baselines.configs",
    "run_baselines": "workbench.baselines.run",
    # search
    "SweepOptions": "workbench.search.options",
    "Execution": "workbench.search.options",
    "sweep": "workbench.search.sweep",
    # search() itself is workbench.search.search: the name ``workbench.search`` is the
    # sub-package (Python binds it on import), so it cannot also be the function.
    # report and experiments
    "write_report": "workbench.report.build",
    "run_search": "workbench.search.select",
    "run_experiment": "workbench.experiment",
    # model bundles: export a run's candidate, load it, predict and explain
    "export_model": "workbench.bundle.export",
    "load_model": "workbench.bundle.model",
    "BundleModel": "workbench.bundle.model",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:  # for type checkers and IDEs
    from workbench.backbones import get_backbone, list_backbones, load_backbone, register_backbone
    from workbench.baselines.configs import get_baseline, list_baselines, register_baseline
    from workbench.baselines.estimator import CNNClassifier
    from workbench.baselines.run import run_baselines
    from workbench.data.manifest import Manifest, ManifestError
    from workbench.errors import ConfigError, UnknownNameError, WorkbenchError
    from workbench.evaluation.settings import Protocol
    from workbench.evaluation.store import ResultStore
    from workbench.evaluation.summary import summarize
    from workbench.experiment import run_experiment
    from workbench.features.cache import FeatureCache
    from workbench.features.extraction import extract
    from workbench.features.featureset import FeatureSet
    from workbench.features.options import ExtractOptions
    from workbench.features.request import FeatureRequest
    from workbench.heads import TunedHead, get_head, list_heads, register_head
    from workbench.report.build import write_report
    from workbench.search.select import run_search
    from workbench.search.options import Execution, SweepOptions
    from workbench.search.sweep import sweep
    from workbench.training.config import FineTuneConfig
    from workbench.training.finetune import fine_tune
    from workbench.training.nested import fine_tune_nested
