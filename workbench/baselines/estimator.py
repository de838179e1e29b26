"""A fine-tuned CNN as a scikit-learn classifier over image ids.

``CNNClassifier(...).fit(ids).predict_proba(ids)`` runs on the same outer folds and
test split as the classical heads, so the sweep's records and the search rank both
together. ``X`` is a 1-D array of manifest ids, or one column of them (the images are
the manifest's); ``y``, when given, must agree with the manifest's labels.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from workbench.data.manifest import Item, Manifest
from workbench.data.pixels import PixelStore
from workbench.errors import ConfigError
from workbench.evaluation.protocol import Protocol
from workbench.evaluation.splits import make_folds
from workbench.heads.nested import InnerSearch, grid_points, inner_search
from workbench.training.finetune import FineTuneConfig, FineTuned, fine_tune, predict_proba, validation_split

__all__ = ["CNNClassifier"]


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """End-to-end fine-tuned CNN baseline with the scikit-learn estimator contract.

    Parameters
    ----------
    backbone : str
        Registry backbone name.
    manifest : Manifest
        The images behind the ids (validated: content hashes set).
    weights : str or None
        Base weights id (the backbone's default when None).
    config : FineTuneConfig, dict or None
        Fine-tuning settings.
    grid : dict or None
        Settings to choose by ``tune_cv``-fold CV on the training ids (e.g.
        ``{"lr": [1e-3, 1e-2], "epochs": [10, 20]}``), each fold trained for the full
        epochs without early stopping and scored by AUC on its held-out images; the
        best point is then refit with early stopping. Never sees other ids.
    tune_cv : int
        Folds of that search (the study used 6).
    val_fraction : float
        Share of the training ids held out (stratified) for early stopping.
    root, device, progress
        Fine-tuned store, device (``None``: GPU when there is one), progress bars.
    context : dict or None
        Stored with the fine-tuned weights (e.g. the outer fold it was trained for).
    pixels : PixelStore, path or None
        Pixel store the images are read from (decoded only when it lacks them); the
        tensors are the same, so the fine-tuned ids are too. None decodes every epoch.
    """

    def __init__(self, backbone: str = "tf_efficientnet_lite0", manifest: Manifest | None = None, *,
                 weights: str | None = None, config: FineTuneConfig | dict | None = None,
                 grid: dict[str, Sequence[Any]] | None = None, tune_cv: int = 6,
                 val_fraction: float = 0.15, root: str | None = None, device: str | None = None,
                 progress: bool = False, context: dict | None = None,
                 pixels: PixelStore | str | os.PathLike | None = None):
        self.backbone = backbone
        self.manifest = manifest
        self.weights = weights
        self.config = config
        self.grid = grid
        self.tune_cv = tune_cv
        self.val_fraction = val_fraction
        self.root = root
        self.device = device
        self.progress = progress
        self.context = context
        self.pixels = pixels

    # -- helpers -------------------------------------------------------------------
    def _config(self) -> FineTuneConfig:
        c = self.config
        if c is None:
            return FineTuneConfig()
        return c if isinstance(c, FineTuneConfig) else FineTuneConfig.from_dict(dict(c))

    def _items(self, X) -> list[Item]:
        if self.manifest is None:
            raise ConfigError("CNNClassifier needs the manifest that holds the images (manifest=...)")
        ids = self._ids(X)
        return list(self.manifest.subset(ids))

    @staticmethod
    def _ids(X) -> list[str]:
        """Image ids from a 1-D array (or one column) of them; anything else is refused."""
        arr = np.asarray(X, dtype=object)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ConfigError(f"CNNClassifier: X holds image ids of the manifest (a 1-D array or one "
                             f"column of them), got an array of shape {arr.shape}")
        if len(arr) == 0:
            raise ConfigError("CNNClassifier: X holds 0 sample(s) (image ids); a minimum of 1 is required")
        return [str(i) for i in arr]

    def _pixels(self) -> PixelStore | None:
        p = self.pixels
        return p if p is None or isinstance(p, PixelStore) else PixelStore(p)

    def _fine_tune(self, train, val, config, context) -> FineTuned:
        return fine_tune(self.backbone, train, val, self.classes_, config, weights=self.weights, root=self.root,
                         device=self.device, context=context, progress=self.progress, pixels=self._pixels())

    # -- estimator contract ----------------------------------------------------------
    def fit(self, X, y=None) -> "CNNClassifier":
        """Fine-tune on the images with ids ``X`` (tuning ``grid`` first, if given)."""
        items = self._items(X)
        if y is not None:
            y = column_or_1d(y, warn=True)  # a column vector warns; 2-D targets raise
            check_classification_targets(y)  # continuous targets raise
            if len(y) != len(items):
                raise ConfigError(f"CNNClassifier: {len(items)} ids in X but {len(y)} labels in y")
            y = [str(v) for v in y]
            bad = [(it.id, it.label, v) for it, v in zip(items, y) if it.label != v]
            if bad:
                raise ConfigError(f"labels disagree with the manifest, e.g. (id, manifest, given) {bad[:3]}")
        present = {it.label for it in items}
        if len(present) < 2:
            raise ConfigError(f"the training ids hold a single class {sorted(present)}")
        self.classes_ = np.array(self.manifest.classes)
        self.n_features_in_ = 1  # one column: the image id
        config = self._config()
        context = dict(self.context or {})
        if self.grid and len(grid_points(self.grid)) > 1:
            self.search_ = self._tune(items, config, context)
            config = config.replace(**self.search_.best_params)
        else:
            self.search_ = None
        train, val = validation_split(items, self.val_fraction, config.seed)
        self.finetuned_ = self._fine_tune(train, val, config, context)
        self.weights_id_ = self.finetuned_.weights_id
        self.best_params_ = self.search_.best_params if self.search_ is not None else {}
        return self

    def _tune(self, items: list[Item], config: FineTuneConfig, context: dict) -> InnerSearch:
        # The grid search's own protocol: tune_cv folds of the training ids, seeded by the
        # fine-tuning seed, scored by AUC (checked here: tune_cv must be an integer >= 2).
        protocol = Protocol(cv=self.tune_cv, seed=config.seed, scoring="auc")
        classes = list(self.classes_)
        y = np.array([classes.index(it.label) for it in items])
        folds = make_folds(y, protocol.cv, protocol.seed)

        def score_fold(params, i, tr, va):
            cfg = config.replace(**params, patience=0)
            ft = self._fine_tune([items[j] for j in tr], [], cfg, {**context, "tune_fold": i})
            return predict_proba(ft.model, [items[j] for j in va], classes, ft.geometry, ft.data_config,
                                 device=self.device, pixels=self._pixels())

        return inner_search(score_fold, self.grid, y, folds, len(classes), scoring=protocol.scoring)

    def predict_proba(self, X) -> np.ndarray:
        """Softmax probabilities, columns in ``classes_`` order."""
        check_is_fitted(self)
        ft = self.finetuned_
        return predict_proba(ft.model, self._items(X), list(self.classes_), ft.geometry, ft.data_config,
                             device=self.device, progress=self.progress, pixels=self._pixels())

    def predict(self, X) -> np.ndarray:
        """The class of highest probability (first of equals)."""
        proba = self.predict_proba(X)  # first: it raises NotFittedError before fit
        return self.classes_[proba.argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False  # labels come from the manifest when y is None
        return tags
