"""End-to-end CNN baselines: fine-tuning, the estimator over image ids, ready configs, Grad-CAM."""
from workbench.baselines.configs import BaselineSpec, get_baseline, list_baselines
from workbench.baselines.estimator import CNNClassifier
from workbench.training.finetune import FineTuneConfig, FineTuned, fine_tune

__all__ = ["BaselineSpec", "CNNClassifier", "FineTuneConfig", "FineTuned", "fine_tune", "get_baseline",
           "list_baselines"]
