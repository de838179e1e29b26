"""Fine-tuning CNNs: the training loop, its config, and nested sets (one network per outer fold).

:mod:`workbench.training.config` (the settings) imports no torch; import the training
loop from :mod:`workbench.training.finetune` where a command trains.
"""
from workbench.training.config import FineTuneConfig

__all__ = ["FineTuneConfig"]
