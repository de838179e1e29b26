"""Fine-tuning on a BUSI slice: loss goes down, ids, resume after a kill, the fine-tuned
store through the registry and the cache, the optimistic mark, the estimator contract
and baseline records beside a classical head's.

Real EfficientNet-Lite0 ImageNet weights at 64-96 px on 40-60 real images: a few seconds
per fine-tune on 2 CPU cores.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone

from _helpers import busi_two_class_slice, fine_tune_killed_at_epoch_2, history_numbers
from workbench.backbones.adapt import adapt_for_task
from workbench.backbones.finetuned import FineTunedNotFoundError, list_finetuned
from workbench.backbones.loading import CheckpointMismatchError, build_model, load_backbone
from workbench.backbones.registry import get_backbone, state_dict_digest
from workbench.backbones.weights import resolve_weights
from workbench.baselines.configs import UnknownBaselineError, get_baseline
from workbench.baselines.estimator import CNNClassifier
from workbench.training.finetune import validation_split
from workbench.training.finetune import CHECKPOINT_FORMAT, FineTuneConfig, fine_tune, finetune_id, predict_proba
from workbench.baselines.run import run_baselines
from workbench.data.manifest import Manifest
from workbench.evaluation.protocol import Protocol
from workbench.features.options import ExtractOptions
from workbench.search.options import SweepOptions

pytestmark = pytest.mark.slow

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"
LITE = "tf_efficientnet_lite0"
CLASSES = ["benign", "malignant"]
FAST = FineTuneConfig(epochs=3, batch_size=16, image_size=96, optimizer="adam", lr=1e-3, schedule="cosine",
                      patience=0, seed=0)


@pytest.fixture(scope="module")
def busi_slice() -> Manifest:
    """30 benign + 30 malignant images (20 + 20 from the training split, 10 + 10 test)."""
    return busi_two_class_slice(20, 10)


def _train_val(m: Manifest):
    train = [it for it in m if it.split == "train"]
    return validation_split(train, 0.2, 0)


def _loss(model, items, m, size=96) -> float:
    from workbench.data.preprocess import Geometry

    spec = get_backbone(LITE)
    dc = spec.data_config()
    p = predict_proba(model, items, CLASSES, Geometry(size, interpolation=dc.interpolation), dc)
    y = np.array([CLASSES.index(it.label) for it in items])
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1))))


def test_short_finetune_lowers_training_loss_and_gets_its_own_id(busi_slice, tmp_path):
    train, val = _train_val(busi_slice)
    spec = get_backbone(LITE)
    base = resolve_weights(spec)
    torch.manual_seed(FAST.seed)  # the untrained head exactly as fine_tune draws it
    before_model = adapt_for_task(build_model(spec, base), 2)
    before = _loss(before_model, train, busi_slice)
    ft = fine_tune(LITE, train, val, CLASSES, FAST, root=tmp_path, progress=False)
    after = _loss(ft.model, train, busi_slice)
    assert after < 0.8 * before, (before, after)
    assert ft.weights_id.startswith("ft-") and ft.weights_id != base.id
    assert state_dict_digest(ft.model) != state_dict_digest(before_model)
    assert ft.weights_id == finetune_id(LITE, base, train, val, CLASSES, FAST)
    # Another config or other data: another id.
    assert finetune_id(LITE, base, train, val, CLASSES, FAST.replace(lr=1e-4)) != ft.weights_id
    assert finetune_id(LITE, base, train[1:], val, CLASSES, FAST) != ft.weights_id
    meta = json.loads((ft.folder / "meta.json").read_text())
    assert meta["train_ids"] == sorted(it.id for it in train) and len(meta["history"]) == 3
    assert not (ft.folder / "checkpoint.pt").exists()
    # A finished id is loaded, not trained again.
    again = fine_tune(LITE, train, val, CLASSES, FAST, root=tmp_path, progress=False)
    assert not again.trained_now and again.weights_id == ft.weights_id
    assert state_dict_digest(again.model) == state_dict_digest(ft.model)


def test_resume_after_kill_equals_uninterrupted_run(busi_slice, tmp_path, caplog):
    train, val = _train_val(busi_slice)
    whole = fine_tune(LITE, train, val, CLASSES, FAST, root=tmp_path / "whole", progress=False)
    fine_tune_killed_at_epoch_2("test_finetune", "FAST", tmp_path / "killed", BUSI / "labels.csv", busi_slice.ids)
    folder = tmp_path / "killed" / LITE / whole.weights_id
    assert (folder / "checkpoint.pt").is_file() and not (folder / "weights.pth").exists()
    with caplog.at_level(logging.INFO, logger="workbench"):
        resumed = fine_tune(LITE, train, val, CLASSES, FAST, root=tmp_path / "killed", progress=False)
    logs = [r.getMessage() for r in caplog.records]
    assert any("resuming" in s and "after epoch 2" in s for s in logs), logs
    assert history_numbers(resumed.history) == history_numbers(whole.history)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_another_architecture_is_refused(busi_slice, tmp_path):
    train, val = _train_val(busi_slice)
    wid = finetune_id(LITE, resolve_weights(get_backbone(LITE)), train, val, CLASSES, FAST)
    folder = tmp_path / LITE / wid
    folder.mkdir(parents=True)
    other = load_backbone("resnet18", "random").model.state_dict()
    torch.save({"backbone": LITE, "weights_id": wid, "format": CHECKPOINT_FORMAT, "model": other},
               folder / "checkpoint.pt")
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint\.pt: it does not fit"):
        fine_tune(LITE, train, val, CLASSES, FAST, root=tmp_path, progress=False)
    # A checkpoint of another run (copied into the wrong folder) names both.
    torch.save({"backbone": "resnet18", "weights_id": "ft-000000000000", "model": other}, folder / "checkpoint.pt")
    with pytest.raises(CheckpointMismatchError, match="resnet18@ft-000000000000"):
        fine_tune(LITE, train, val, CLASSES, FAST, root=tmp_path, progress=False)
    assert (folder / "checkpoint.pt").is_file()  # nothing deleted


def test_finetuned_weights_extract_through_the_registry_and_the_cache(busi_slice, tmp_path, monkeypatch):
    from workbench.features.extraction import extract
    from workbench.search.sweep import SweepInputError, sweep

    monkeypatch.setenv("WORKBENCH_FINETUNED", str(tmp_path / "ft"))
    train, val = _train_val(busi_slice)
    ft = fine_tune(LITE, train, val, CLASSES, FAST.replace(epochs=1), progress=False)
    assert list_finetuned(LITE) == [ft.weights_id]
    block = f"{LITE}@{ft.weights_id}:avgpool"
    fs = extract(busi_slice, [block], cache=tmp_path / "cache", options=ExtractOptions(image_size=96),
                 progress=False)
    assert fs.record["computed_rows"] == {block: len(busi_slice)}
    fs2 = extract(busi_slice, [block], cache=tmp_path / "cache", options=ExtractOptions(image_size=96),
                 progress=False)
    assert fs2.record["computed_rows"] == {block: 0}
    np.testing.assert_array_equal(fs[block], fs2[block])
    # The cached features are the fine-tuned network's own pre-logits.
    from workbench.data.augment import TrainImageDataset

    ds = TrainImageDataset(list(busi_slice)[:4], CLASSES, ft.geometry, ft.data_config.mean, ft.data_config.std)
    x = torch.stack([ds[i]["image"] for i in range(4)])
    with torch.no_grad():
        emb = ft.model.forward_head(ft.model.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(fs[block][:4], emb, rtol=1e-4, atol=1e-4)
    # Base features differ: the id reaches the cache key.
    base = extract(busi_slice, [f"{LITE}:avgpool"], cache=tmp_path / "cache", options=ExtractOptions(image_size=96),
                 progress=False)
    assert not np.allclose(base[f"{LITE}:avgpool"], fs[block])

    # Sweep: CV records on features of a network fine-tuned on the whole training split are
    # optimistic; its test records are not.
    df = sweep(busi_slice, fs, out=tmp_path / "run", protocol=Protocol(cv=2, inner_cv=2),
               options=SweepOptions(heads=("logreg",), grids={"logreg": {}}, ensembles=False), progress=False)
    cv = df[df.fold != "test"]
    assert len(cv) == 2 and cv["optimistic"].eq(True).all()
    assert df.loc[df.fold == "test", "optimistic"].isna().all()
    recs = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert all(r.get("optimistic_blocks") == [block] for r in recs if r["fold"] != "test")

    # A network that saw test images: refused before anything is written.
    test_items = [it for it in busi_slice if it.split == "test"]
    leaky = fine_tune(LITE, train + test_items[:2], val, CLASSES, FAST.replace(epochs=1), progress=False)
    lblock = f"{LITE}@{leaky.weights_id}:avgpool"
    fsl = extract(busi_slice, [lblock], cache=tmp_path / "cache", options=ExtractOptions(image_size=96),
                 progress=False)
    with pytest.raises(SweepInputError, match="fine-tuned on images of this task's test split"):
        sweep(busi_slice, fsl, out=tmp_path / "leaky", protocol=Protocol(cv=2, inner_cv=2),
              options=SweepOptions(heads=("logreg",)), progress=False)
    assert not (tmp_path / "leaky" / "records.jsonl").exists()

    with pytest.raises(FineTunedNotFoundError, match=ft.weights_id):
        resolve_weights(get_backbone(LITE), "ft-0123456789ab")


def test_cnn_classifier_contract(busi_slice, tmp_path):
    train_ids = [it.id for it in busi_slice if it.split == "train"]
    test_ids = [it.id for it in busi_slice if it.split == "test"]
    est = CNNClassifier(LITE, busi_slice, config=FAST.replace(epochs=1), root=str(tmp_path))
    assert clone(est).get_params()["config"] == est.config
    est.fit(train_ids)
    p = est.predict_proba(test_ids)
    assert p.shape == (len(test_ids), 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert list(est.classes_) == CLASSES
    assert set(est.predict(test_ids)) <= set(CLASSES)
    assert est.weights_id_.startswith("ft-")
    with pytest.raises(ValueError, match="disagree"):
        CNNClassifier(LITE, busi_slice, root=str(tmp_path)).fit(train_ids[:4], ["malignant"] * 4)
    with pytest.raises(KeyError, match="not in the manifest"):
        est.predict_proba(["no-such-image"])


def test_grid_is_chosen_by_cv_on_the_training_ids_only(busi_slice, tmp_path):
    train_ids = [it.id for it in busi_slice if it.split == "train"]
    est = CNNClassifier(LITE, busi_slice, config=FAST.replace(epochs=1, image_size=64),
                        grid={"lr": [1e-5, 1e-3]}, tune_cv=2, root=str(tmp_path)).fit(train_ids)
    assert est.search_ is not None and len(est.search_.scores) == 2
    assert est.best_params_ in ({"lr": 1e-5}, {"lr": 1e-3})
    metas = [json.loads(p.read_text()) for p in (tmp_path / LITE).glob("*/meta.json")]
    seen = set().union(*[set(m["train_ids"]) | set(m["val_ids"]) for m in metas])
    assert seen <= set(train_ids)  # no test image ever reached a fine-tune
    assert len(metas) == 2 * 2 + 1  # grid x folds, then the refit


def test_baseline_records_rank_beside_a_classical_heads(busi_slice, tmp_path, monkeypatch):
    from workbench.features.extraction import extract
    from workbench.evaluation.store import ResultStore
    from workbench.evaluation.summary import summarize
    from workbench.search.sweep import sweep

    monkeypatch.setenv("WORKBENCH_FINETUNED", str(tmp_path / "ft"))
    kw = dict(protocol=Protocol(cv=2, inner_cv=2, seed=0))
    fs = extract(busi_slice, [f"{LITE}:avgpool"], cache=tmp_path / "cache", options=ExtractOptions(image_size=96),
                 progress=False)
    sweep(busi_slice, fs, out=tmp_path / "run", options=SweepOptions(heads=("logreg",), grids={"logreg": {}},
                                                                     ensembles=False), progress=False, **kw)
    df = run_baselines(busi_slice, ["lite0"], tmp_path / "run", overrides={"epochs": 1, "image_size": 64},
                       progress=False, **kw)
    assert sorted(df.fold) == ["0", "1", "test"] and (df.kind == "baseline").all()
    assert df.weights_id.str.startswith("ft-").all() and df.weights_id.nunique() == 3
    ranked = summarize(ResultStore(tmp_path / "run").frame(), "auc")
    assert set(ranked.kind) == {"head", "baseline"} and "CNN lite0" in set(ranked.candidate)
    # Rerun: nothing is trained again.
    again = run_baselines(busi_slice, ["lite0"], tmp_path / "run", overrides={"epochs": 1, "image_size": 64},
                          progress=False, **kw)
    assert again.equals(df)
    # Another protocol is refused.
    from workbench.evaluation.store import RunMismatchError

    with pytest.raises(RunMismatchError):
        run_baselines(busi_slice, ["lite0"], tmp_path / "run", protocol=Protocol(cv=3, inner_cv=2),
                      progress=False, overrides={"epochs": 1})


def test_cut_remain_adds_masked_copies_and_counts_boxless_images(busi_slice, tmp_path, caplog):
    m = Manifest.load(BUSI / "labels.csv")  # three classes: normal images have no box
    train = [it for it in m if it.split == "train"]
    keep = [it.id for c in m.classes for it in [t for t in train if t.label == c][:8]]
    m3 = m.subset(keep).validate(progress=False)
    classes = m.classes
    n_box = sum(it.box is not None for it in m3)
    assert 0 < n_box < len(m3)
    with caplog.at_level(logging.INFO, logger="workbench"):
        ft = fine_tune(LITE, list(m3), [], classes, FAST.replace(epochs=1, image_size=64, cut_remain=True),
                       root=tmp_path, progress=False)
    logs = [r.getMessage() for r in caplog.records]
    assert ft.history[0]["rows"] == len(m3) + n_box
    assert ft.history[0]["masked_rows"] == n_box
    assert any(f"{len(m3) - n_box} of {len(m3)} training images have no box" in s for s in logs), logs


def test_bad_settings_fail_clearly(busi_slice, tmp_path):
    with pytest.raises(ValueError, match="unknown fine-tune settings.*lerning_rate"):
        FineTuneConfig.from_dict({"lerning_rate": 0.1})
    with pytest.raises(ValueError, match="optimizer"):
        FineTuneConfig(optimizer="rmsprop")
    with pytest.raises(UnknownBaselineError, match="resnet50"):
        get_baseline("resnet5O")
    train, val = _train_val(busi_slice)
    with pytest.raises(ValueError, match="not among the classes"):
        fine_tune(LITE, train, val, ["benign", "normal"], FAST, root=tmp_path, progress=False)
    with pytest.raises(ValueError, match="both the training and validation"):
        fine_tune(LITE, train, train[:2], CLASSES, FAST, root=tmp_path, progress=False)
