"""Extending the workbench from user code: a backbone, a head and a metric, each added
once from this file (no workbench file edited) and then used by the code that uses it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils.estimator_checks import check_estimator
from torch import nn

from _helpers import run as extract_fast
from _sweepdata import make_task, sweep_args
from workbench.backbones import REGISTRY, BackboneSpec, DataConfig, TapSpec, WeightsSpec, register_backbone
from workbench.core.registry import DuplicateNameError
from workbench.evaluation.metrics import METRIC_TABLE, MetricInfo, classification_metrics, metric_label, register_metric
from workbench.evaluation.store import ResultStore
from workbench.heads.tuned import TunedHead
from workbench.heads.zoo import HEADS, get_head, register_head
from workbench.report.tables import concatenation_table, to_markdown
from workbench.search.candidates import block_codes
from workbench.search.sweep import sweep


class TinyNet(nn.Module):
    """Two convolutions and a global pool: a 6-dim embedding, then 2 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _no_weights_file(model: nn.Module, path: str) -> None:  # only random weights here
    raise AssertionError("no weights file is loaded in this test")


@pytest.fixture
def tinynet():
    dc = DataConfig(input_size=32, resize_size=36, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                    interpolation="bilinear")
    spec = register_backbone(BackboneSpec(
        name="tinynet", family="custom", taps={"gap": TapSpec("gap", 6, "flatten", "global average pool")},
        weights={"none": WeightsSpec("none", dc)}, default_weights="none", build=TinyNet,
        load_state=_no_weights_file, code="Z"))
    yield spec
    REGISTRY.unregister("tinynet")


@pytest.fixture
def knn():
    spec = register_head("knn-test", lambda seed: KNeighborsClassifier(), {"n_neighbors": [3, 5]}, code="KNN")
    yield spec
    HEADS.unregister("knn-test")


@pytest.fixture
def youden():
    def j(y_true, y_pred, proba):  # sensitivity + specificity - 1 of class 1 vs the rest
        pos, said = y_true == 1, y_pred == 1
        if pos.all() or not pos.any():
            return float("nan")  # undefined with one class, as the table's own metrics are
        return float(np.mean(said[pos]) + np.mean(~said[~pos]) - 1)

    info = register_metric(MetricInfo("youden", "Youden J", binary_only=True, compute=j))
    yield info
    METRIC_TABLE.unregister("youden")


def test_a_registered_backbone_extracts_and_has_its_code_and_cam_layer(tinynet, make_dataset, tmp_path):
    ds = make_dataset(6)
    fs = extract_fast(ds.csv, ["tinynet@random:gap"], tmp_path / "cache")
    assert fs.names == ["tinynet@random:gap"] and np.asarray(fs["tinynet@random:gap"]).shape == (6, 6)
    assert block_codes(["tinynet@random:gap", "alexnet@random:fc6"]) == {
        "tinynet@random:gap": "Z", "alexnet@random:fc6": "A"}
    model = TinyNet()
    assert tinynet.cam_target(model) is model.conv2  # no cam_layer: the last convolution
    with pytest.raises(DuplicateNameError, match="already registered"):
        register_backbone(tinynet)


def test_a_registered_head_tunes_and_sweeps(knn, tmp_path):
    assert get_head("knn-test").calibrate is False  # KNN has predict_proba of its own
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    X = rng.normal(size=(40, 3)) + 2.0 * y[:, None]
    est = TunedHead("knn-test").fit(X, y)
    assert est.best_params_["n_neighbors"] in (3, 5) and est.predict_proba(X).shape == (40, 2)
    manifest, fs = make_task(n=48, test_every=4)
    frame = sweep(manifest, fs, out=tmp_path / "run", **sweep_args(
        heads=["knn-test"], cv=3, inner_cv=3, progress=False, ensembles=False, subsets="single"))
    assert set(frame["head"].dropna()) == {"knn-test"}
    with pytest.raises(Exception, match="n_neigbors"):
        register_head("bad", lambda seed: KNeighborsClassifier(), {"n_neigbors": [3]})


@pytest.mark.slow
def test_a_registered_head_follows_the_sklearn_contract(knn):
    check_estimator(TunedHead("knn-test"))


def test_a_registered_metric_is_computed_labelled_and_tabled(youden, knn, tmp_path):
    m = classification_metrics([0, 1, 1, 0], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]],
                               classes=["benign", "malignant"])
    assert m["youden"] == pytest.approx(0.5 + 0.5 - 1)
    assert metric_label("youden") == "Youden J" and metric_label("youden", capital=True) == "Youden J"
    manifest, fs = make_task(n=48, test_every=4)
    sweep(manifest, fs, out=tmp_path / "run", **sweep_args(
        heads=["knn-test"], cv=3, inner_cv=3, progress=False, ensembles=False, subsets=(2, 3)))
    records = ResultStore(tmp_path / "run").frame()
    # (this task's test split holds one class, so its Youden J is undefined: NaN)
    assert records.loc[records["fold"] != "test", "youden"].notna().all()
    text = to_markdown(concatenation_table(records, "youden"))
    assert "Youden J of the heads on concatenated features" in text and "knn-test" in text
