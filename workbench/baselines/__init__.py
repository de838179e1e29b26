"""End-to-end CNN baselines: the estimator over image ids, ready configs, Grad-CAM.

Names are imported lazily: the ready configs (and the command line that lists them)
need no torch; the estimator and fine-tuning do.
"""
from __future__ import annotations

from workbench.core.lazy import lazy_exports

_EXPORTS = {
    "BASELINES": "baselines.configs", "BaselineSpec": "baselines.configs", "get_baseline": "baselines.configs",
    "list_baselines": "baselines.configs", "register_baseline": "baselines.configs",
    "UnknownBaselineError": "baselines.configs",
    "CNNClassifier": "baselines.estimator",
    "FineTuneConfig": "training.config", "FineTuned": "training.finetune", "fine_tune": "training.finetune",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, {n: f"workbench.{m}" for n, m in _EXPORTS.items()}, globals())
