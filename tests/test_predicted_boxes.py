"""Features on boxes a Y-Net predicts (``--input box --boxes predicted:ft-...``).

Most tests use a stand-in "Y-Net" whose lesion logit is the pixel's brightness, on
synthetic 32 x 32 images with bright rectangles at known places, so the right box is
known by hand (the Y-Net's geometry is the identity at 32 px). The slow test trains a
real one-epoch 64-px Y-Net on a BUSI slice and checks the feature layer's boxes against
the training layer's masks (:mod:`workbench.training.masks`).
"""
from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from workbench.backbones.registry import get_backbone
from workbench.backbones.weights import ResolvedWeights
from workbench.data.boxes import Box
from workbench.data.manifest import Manifest
from workbench.data.preprocess import Geometry, Preprocess
from workbench.errors import ConfigError, WorkbenchError
from workbench.features.cache import FORMAT, FeatureCache, entry_key
from workbench.features.options import PREDICTED_BOX_SUFFIX, BoxSource, ExtractOptions, parse_boxes
from workbench.features.predicted_boxes import BOXES_DIR, BoxNet, NotAYNetError, find_ynet, predicted_boxes

from _helpers import TINY, run

extraction = importlib.import_module("workbench.features.extraction")

LITE = "tf_efficientnet_lite0"
YNET_ID = "ft-0123456789ab"
PBOX = TINY + PREDICTED_BOX_SUFFIX
S = 32  # image side = the stand-in Y-Net's input size: its geometry is the identity
# id -> the bright rectangles (x0, y0, x1, y1) drawn on a dark image; the box is the largest's.
LESIONS = {
    "a": [(4, 6, 20, 14)],
    "b": [(10, 10, 30, 31), (1, 1, 4, 4)],  # a speck elsewhere must not stretch the box
    "c": [(0, 0, 9, 25)],
    "dark": [],  # empty mask: taken whole
}
MANUAL = (16, 16, 32, 32)  # every image's manual box: another region than the lesion


class Bright(nn.Module):
    """Stand-in Y-Net: mask logit = 10 x the normalised brightness; counts images seen."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        return 10.0 * x[:, :1], torch.zeros(x.shape[0], 2)


def fake_net(train_ids=()) -> BoxNet:
    w = ResolvedWeights(LITE, YNET_ID, None, "e" * 64, False, 2,
                        {"backbone": LITE, "config": {"model": "ynet"}, "train_ids": list(train_ids)})
    return BoxNet(LITE, w, Geometry(S), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), _model=Bright())


@pytest.fixture
def lesions(tmp_path) -> Path:
    """A manifest of the :data:`LESIONS` images, each with the manual box :data:`MANUAL`."""
    rows = []
    for k, rects in LESIONS.items():
        a = np.full((S, S), 20, np.uint8)
        for x0, y0, x1, y1 in rects:
            a[y0:y1, x0:x1] = 230
        Image.fromarray(a).save(tmp_path / f"{k}.png")
        rows.append({"id": k, "path": f"{k}.png", "label": "benign" if k in "ac" else "malignant",
                     **dict(zip(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"), MANUAL))})
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def net(monkeypatch) -> BoxNet:
    """The stand-in, returned for any ``predicted:...`` source the extraction names."""
    n = fake_net()
    monkeypatch.setattr(BoxNet, "load", classmethod(lambda cls, source, root=None: n))
    return n


def expected_box(k: str) -> Box:
    rects = LESIONS[k]
    if not rects:
        return Box(0, 0, S, S)
    return Box(*max(rects, key=lambda r: (r[2] - r[0]) * (r[3] - r[1])))


# ---- parsing: options, command line, experiment config ---------------------------------


@pytest.mark.parametrize("text, expected", [
    ("manual", None),
    ("predicted:ft-0123456789ab", BoxSource("ft-0123456789ab")),
    ("predicted:tf_efficientnet_lite0@ft-0123456789ab", BoxSource("ft-0123456789ab", LITE)),
    ("predicted:timm/resnet18@ft-1", BoxSource("ft-1", "timm/resnet18")),
])
def test_box_sources_parse(text, expected):
    assert parse_boxes(text) == expected
    if expected is not None:
        assert str(expected) == text


@pytest.mark.parametrize("text, match", [
    ("predicted", "expected 'manual'"),
    ("Manual", "expected 'manual'"),
    ("predicted:", "expected 'manual'"),
    ("predicted:a@b@ft-1", "expected 'manual'"),
    ("predicted:random", "not a fine-tuned weights id"),
    ("predicted:lite0@ftn-0123", "nested set"),
])
def test_bad_box_sources_are_refused_naming_the_value(text, match):
    with pytest.raises(ConfigError, match=match) as e:
        ExtractOptions(input="box", boxes=text)
    assert repr(text) in str(e.value)


def test_predicted_boxes_only_apply_to_box_input():
    with pytest.raises(ConfigError, match="only applies with input = 'box'"):
        ExtractOptions(boxes="predicted:ft-1")
    assert ExtractOptions(input="box", boxes="predicted:ft-1").block_suffix == "#pbox"
    assert ExtractOptions(input="box").block_suffix == ExtractOptions().block_suffix == ""
    assert ExtractOptions.from_dict({"input": "box", "boxes": "predicted:ft-1"}).box_source == BoxSource("ft-1")


def test_the_command_line_takes_boxes_on_extract_and_sweep():
    from workbench.cli.objects import extract_options_of
    from workbench.cli.parser import build_parser

    p = build_parser()
    a = p.parse_args(["extract", "--manifest", "m.csv", "--features", TINY, "--input", "box",
                      "--boxes", f"predicted:{LITE}@{YNET_ID}"])
    assert extract_options_of(a).box_source == BoxSource(YNET_ID, LITE)
    a = p.parse_args(["sweep", "--manifest", "m.csv", "--features", TINY, "--out", "r", "--input", "box",
                      "--boxes", f"predicted:{YNET_ID}"])
    assert extract_options_of(a).boxes == f"predicted:{YNET_ID}"
    assert extract_options_of(p.parse_args(["extract", "--manifest", "m", "--features", TINY])).boxes == "manual"
    a = p.parse_args(["extract", "--manifest", "m", "--features", TINY, "--boxes", f"predicted:{YNET_ID}"])
    with pytest.raises(ConfigError, match="only applies with input = 'box'"):
        extract_options_of(a)


CONFIG = """
name = "pbox"
manifest = "labels.csv"
[features]
specs = ["tf_efficientnet_lite0:avgpool"]
{features}
[sweep]
heads = ["logreg"]
"""


def test_the_experiment_config_takes_boxes(tmp_path):
    from workbench.experiment import ExperimentConfig

    cfg = tmp_path / "x.toml"
    cfg.write_text(CONFIG.format(features=f'input = "box"\nboxes = "predicted:{YNET_ID}"'))
    assert ExperimentConfig.load(cfg).features.extract.box_source == BoxSource(YNET_ID)
    cfg.write_text(CONFIG.format(features='input = "box"'))
    assert ExperimentConfig.load(cfg).features.extract.boxes == "manual"
    cfg.write_text(CONFIG.format(features=f'boxes = "predicted:{YNET_ID}"'))
    with pytest.raises(ConfigError, match=r"x\.toml.*only applies with input = 'box'"):
        ExperimentConfig.load(cfg)
    cfg.write_text(CONFIG.format(features='input = "box"\nboxes = "yes"'))
    with pytest.raises(ConfigError, match=r"x\.toml.*'yes'"):
        ExperimentConfig.load(cfg)


# ---- cache keys and block names ------------------------------------------------------------


def test_whole_and_manual_box_keys_are_unchanged_and_predicted_ones_differ():
    """The literals are the keys these fields had before predicted boxes existed: every
    cached whole-image and manual-box entry is still found."""
    s = get_backbone(LITE)
    w = ResolvedWeights(LITE, "fixture", None, "d" * 64, False)
    keys = {}
    for inp in ("whole", "box"):
        pre = Preprocess.from_data_config(s.data_config(), input=inp, size=64)
        keys[inp] = entry_key(extraction.entry_fields(s, w, "avgpool", pre, "fp32", "float32"))
    assert keys["whole"] == "99c59d26faef6aebc766107cee5a068e195b0f14da0d30f5ba76f0b1aeab7f12"
    assert keys["box"] == "28b3ed2369a0ad8d0b2d094a84a505372090867b43e9a330c52748ed57c46eed"
    pre = Preprocess.from_data_config(s.data_config(), input="box", size=64)
    pred = entry_key(extraction.entry_fields(s, w, "avgpool", pre, "fp32", "float32", fake_net().fields("fp32")))
    other = fake_net()
    other.weights = ResolvedWeights(LITE, "ft-other", None, "f" * 64, False, 2, {})
    pred2 = entry_key(extraction.entry_fields(s, w, "avgpool", pre, "fp32", "float32", other.fields("fp32")))
    assert len({keys["box"], pred, pred2}) == 3


def test_predicted_box_blocks_get_their_own_table_codes():
    from workbench.search.candidates import block_codes

    names = [f"{LITE}:avgpool", f"{LITE}:avgpool#pbox"]
    assert block_codes(names) == {names[0]: "L", names[1]: "Lp"}
    assert block_codes(["alexnet:fc6", "alexnet:fc7"]) == {"alexnet:fc6": "A6", "alexnet:fc7": "A7"}


# ---- boxes: by hand, cached, damaged, empty masks ------------------------------------------


def test_boxes_are_the_largest_lesion_region(lesions, tmp_path):
    m = Manifest.load(lesions).validate(progress=False)
    sha = {it.id: it.sha256 for it in m}
    n = fake_net()
    pb = predicted_boxes(list(m), n, cache_root=tmp_path / "cache", device="cpu")
    assert {it.id: pb.box_of(it) for it in m} == {k: expected_box(k) for k in LESIONS}
    assert pb.empty_ids(list(m)) == ["dark"] and pb.boxes[sha["dark"]] is None
    assert pb.computed == 4 and pb.cached == 0 and n._model.seen == 4
    doc = json.loads(pb.path.read_text())  # data only: JSON, keyed by the images' bytes
    assert pb.path.parent == tmp_path / "cache" / BOXES_DIR
    assert doc["boxes"][sha["a"]] == [4, 6, 20, 14] and doc["boxes"][sha["dark"]] is None
    assert doc["fields"]["weights_id"] == YNET_ID and doc["fields"]["weights_digest"] == "e" * 64


def test_a_second_run_computes_no_box(lesions, tmp_path):
    m = Manifest.load(lesions).validate(progress=False)
    n = fake_net()
    first = predicted_boxes(list(m), n, cache_root=tmp_path, device="cpu")
    stamp = first.path.stat().st_mtime_ns
    again = predicted_boxes(list(m), n, cache_root=tmp_path, device="cpu")
    assert (again.computed, again.cached, n._model.seen) == (0, 4, 4)
    assert again.boxes == first.boxes and first.path.stat().st_mtime_ns == stamp
    # One new image computes one box, and the file keeps the others.
    more = m.subset(["a", "b"])
    assert predicted_boxes(list(more), n, cache_root=tmp_path / "other", device="cpu").computed == 2
    assert n._model.seen == 6


def test_a_damaged_box_file_is_named_and_recomputed(lesions, tmp_path, caplog):
    m = Manifest.load(lesions).validate(progress=False)
    n = fake_net()
    first = predicted_boxes(list(m), n, cache_root=tmp_path, device="cpu")
    doc = json.loads(first.path.read_text())
    empty_box = {**doc, "boxes": {**doc["boxes"], next(iter(doc["boxes"])): [4, 6, 2, 14]}}
    for damage in ("{not json", json.dumps({"key": "x", "fields": {}, "boxes": {}}), json.dumps(empty_box)):
        first.path.write_text(damage)
        with caplog.at_level(logging.WARNING, logger="workbench"):
            again = predicted_boxes(list(m), n, cache_root=tmp_path, device="cpu")
        assert caplog.text.count(f"{first.path} are damaged") == 1
        assert again.computed == 4 and again.boxes == first.boxes
        caplog.clear()
    assert predicted_boxes(list(m), n, cache_root=tmp_path, device="cpu").computed == 0  # repaired


# ---- extraction on predicted boxes ---------------------------------------------------------


def test_features_on_predicted_boxes(lesions, tmp_path, net, caplog):
    cache = tmp_path / "cache"
    manual = run(lesions, [TINY], cache, input="box")
    with caplog.at_level(logging.WARNING, logger="workbench"):
        pred = run(lesions, [TINY], cache, input="box", boxes=f"predicted:{YNET_ID}")
    # Its own block name, entry (key holds the Y-Net) and numbers.
    assert pred.names == [PBOX] and manual.names == [TINY]
    info = pred.info[PBOX]
    assert info.entry_key != manual.info[TINY].entry_key and manual.info[TINY].boxes is None
    assert info.boxes["weights_id"] == YNET_ID and info.boxes["weights_digest"] == "e" * 64
    meta = json.loads((cache / FORMAT / info.entry_key[:2] / info.entry_key / "meta.json").read_text())
    assert meta["fields"]["boxes"]["weights_id"] == YNET_ID
    assert not np.allclose(pred[PBOX], manual[TINY])
    assert pred.record["computed_rows"] == {PBOX: 4} and pred.record["settings"]["boxes"] == f"predicted:{YNET_ID}"
    assert "boxes" not in manual.record["settings"] and "predicted_boxes" not in manual.record
    # The empty mask: counted, named, and the image taken whole (the same numbers as a
    # whole-image crop of it).
    assert pred.record["predicted_boxes"]["empty_masks"] == 1
    assert pred.record["predicted_boxes"]["empty_mask_ids"] == ["dark"]
    assert "1 of 4 images" in caplog.text and "dark" in caplog.text
    whole = run(lesions, [TINY], cache)
    i = pred.ids.index("dark")
    np.testing.assert_array_equal(pred[PBOX][i], whole[TINY][i])
    assert not np.allclose(pred[PBOX][pred.ids.index("a")], whole[TINY][pred.ids.index("a")])
    # Each row is the features of the image cropped to its predicted box (margin 0.1), and
    # new images get the same numbers: the online featurizer predicts the same boxes.
    from workbench.data.images import decode_image
    from workbench.features.online import BlockDef, Featurizer, WeightsMismatchError

    block = BlockDef.from_meta(PBOX, meta["fields"])
    assert entry_key(block.entry_fields()) == info.entry_key
    fz = Featurizer([block])
    images = [decode_image(lesions.parent / f"{k}.png", keep_gray=True) for k in pred.ids]
    assert fz.predicted_boxes(images) == [expected_box(k) for k in pred.ids]
    np.testing.assert_allclose(fz.transform(images)[PBOX], pred[PBOX], atol=1e-5)
    given = fz.transform(images[:1], [expected_box(pred.ids[0])])[PBOX]
    np.testing.assert_allclose(given[0], pred[PBOX][0], atol=1e-5)
    key = manual.info[TINY].entry_key
    plain = BlockDef.from_meta(TINY, json.loads((cache / FORMAT / key[:2] / key / "meta.json").read_text())["fields"])
    assert plain.boxes is None and entry_key(plain.entry_fields()) == key
    with pytest.raises(ValueError, match="mix box sources"):
        Featurizer([block, plain])
    other = dataclasses.replace(block, boxes={**block.boxes, "weights_digest": "0" * 64})
    with pytest.raises(WeightsMismatchError, match="boxes were predicted with 000000000000"):
        Featurizer([other])


def test_a_second_extraction_computes_nothing(lesions, tmp_path, net):
    cache = tmp_path / "cache"
    first = run(lesions, [TINY], cache, input="box", boxes=f"predicted:{YNET_ID}")
    box_file = next((cache / BOXES_DIR).glob("*.json"))
    stamp, seen = box_file.stat().st_mtime_ns, net._model.seen
    again = run(lesions, [TINY], cache, input="box", boxes=f"predicted:{YNET_ID}")
    assert again.record["computed_rows"] == {PBOX: 0} and again.record["forward_images"] == {TINY.split(":")[0]: 0}
    assert again.record["predicted_boxes"]["computed"] == 0 and again.record["predicted_boxes"]["cached"] == 4
    assert net._model.seen == seen and box_file.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again[PBOX], first[PBOX])


def test_predicted_boxes_need_no_manual_box(lesions, tmp_path, net):
    rows = list(csv.DictReader(open(lesions)))
    bare = lesions.parent / "bare.csv"
    with open(bare, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "label"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("id", "path", "label")} for r in rows)
    with pytest.raises(WorkbenchError, match="box"):
        run(bare, [TINY], tmp_path / "c", input="box")
    fs = run(bare, [TINY], tmp_path / "c", input="box", boxes=f"predicted:{YNET_ID}")
    with_manual = run(lesions, [TINY], tmp_path / "c", input="box", boxes=f"predicted:{YNET_ID}")
    np.testing.assert_array_equal(fs[PBOX], with_manual[PBOX])  # the manual boxes play no part


# ---- the Y-Net: found in the store, refused when it is not one -----------------------------


def _store_entry(root: Path, backbone: str, wid: str, model: str, train_ids=()) -> None:
    folder = root / backbone.replace("/", "__") / wid
    folder.mkdir(parents=True)
    (folder / "weights.pth").write_bytes(b"not read: refused or found before loading")
    (folder / "meta.json").write_text(json.dumps({"backbone": backbone, "classes": ["benign", "malignant"],
                                                  "config": {"model": model}, "train_ids": list(train_ids),
                                                  "val_ids": [], "image_size": 32, "resize": "squash"}))


def test_a_classifier_id_is_refused_by_name(lesions, tmp_path, monkeypatch):
    store = tmp_path / "store"
    _store_entry(store, LITE, "ft-classifier1", "classifier")
    monkeypatch.setenv("WORKBENCH_FINETUNED", str(store))
    with pytest.raises(NotAYNetError, match=f"{LITE}@ft-classifier1 is a fine-tuned classifier, not a Y-Net"):
        BoxNet.load("predicted:ft-classifier1")
    cache = tmp_path / "cache"
    with pytest.raises(NotAYNetError, match="ft-classifier1"):
        run(lesions, [TINY], cache, input="box", boxes="predicted:ft-classifier1")
    assert not (cache / FORMAT).exists() and not (cache / BOXES_DIR).exists()  # refused before any work


def test_a_plain_id_is_looked_up_in_the_store(tmp_path):
    store = tmp_path / "store"
    _store_entry(store, LITE, YNET_ID, "ynet")
    _store_entry(store, "timm/resnet18", "ft-twice", "ynet")
    _store_entry(store, LITE, "ft-twice", "ynet")
    assert find_ynet(BoxSource(YNET_ID), store) == LITE
    assert find_ynet(BoxSource("ft-anything", "timm/resnet18"), store) == "timm/resnet18"
    with pytest.raises(ConfigError, match=r"several backbones \(tf_efficientnet_lite0, timm/resnet18\).*"
                                          r"predicted:<backbone>@ft-twice"):
        find_ynet(BoxSource("ft-twice"), store)
    with pytest.raises(FileNotFoundError, match=f"no fine-tuned network 'ft-missing' in the store {store}"):
        find_ynet(BoxSource("ft-missing"), store)
    with pytest.raises(FileNotFoundError, match="ft-missing"):
        find_ynet(BoxSource("ft-missing"), tmp_path / "no-store")


# ---- honesty: CV on images the Y-Net trained on is optimistic ------------------------------


def test_blocks_on_predicted_boxes_are_optimistic_where_the_ynet_trained(tmp_path, monkeypatch):
    from workbench.evaluation.protocol import Protocol, build_task
    from workbench.evaluation.settings import is_cv_fold
    from workbench.features.featureset import BlockInfo, FeatureSet
    from workbench.search.plan import SweepInputError, optimistic_folds

    rows = [{"id": f"i{k}", "path": "x.png", "label": "benign" if k % 2 else "malignant",
             "split": "test" if k >= 12 else "train"} for k in range(16)]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    m = Manifest.load(tmp_path / "m.csv")
    task = build_task(m, Protocol(cv=2, inner_cv=2))
    train = [r["id"] for r in rows if r["split"] == "train"]
    store = tmp_path / "store"
    _store_entry(store, LITE, "ft-ontrain", "ynet", train)
    _store_entry(store, LITE, "ft-ontest", "ynet", [*train, "i13"])
    monkeypatch.setenv("WORKBENCH_FINETUNED", str(store))

    def fs(ynet: str | None) -> FeatureSet:
        boxes = None if ynet is None else {"source": "predicted", "backbone": LITE, "weights_id": ynet}
        info = BlockInfo(PBOX, "timm/test_efficientnet", "random", "0" * 64, True, "pre_logits", 2, "k",
                         boxes=boxes)
        return FeatureSet(m.ids, m.labels, {PBOX: np.zeros((16, 2))}, {PBOX: info})

    cv = {f for f, _, _ in task.outer if is_cv_fold(f)}
    assert optimistic_folds(fs("ft-ontrain"), [PBOX], task) == {PBOX: cv} and len(cv) == 2
    assert optimistic_folds(fs(None), [PBOX], task) == {}  # random weights, manual boxes: clean
    with pytest.raises(SweepInputError, match=rf"boxes of a Y-Net fine-tuned on images of this task's test "
                                              rf"split \({LITE}@ft-ontest\)"):
        optimistic_folds(fs("ft-ontest"), [PBOX], task)


# ---- a real Y-Net -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the validation split holds fewer")
def test_a_trained_ynet_boxes_busi_images_as_the_training_layer_does(busi_dir, tmp_path, monkeypatch):
    """A one-epoch 64-px Y-Net from the store: the feature layer's boxes are those of
    ``training.masks`` (mask_box of iter_masks), and features on them are cached once."""
    from workbench.training.config import FineTuneConfig
    from workbench.training.finetune import fine_tune, load_finetuned
    from workbench.training.masks import iter_masks, mask_box

    store = tmp_path / "store"
    monkeypatch.setenv("WORKBENCH_FINETUNED", str(store))
    m = Manifest.load(busi_dir / "labels.csv").select_classes(["benign", "malignant"])
    keep = [it.id for c in ("benign", "malignant") for it in [i for i in m if i.label == c and i.split == "train"][:12]]
    sub = m.subset(keep).validate(progress=False)
    items = list(sub)
    cfg = FineTuneConfig(model="ynet", epochs=1, batch_size=16, image_size=64, optimizer="adam", lr=1e-3,
                         patience=0, seed=0)
    train, val = items[:10] + items[12:22], items[10:12] + items[22:]  # 12 benign, then 12 malignant
    ft = fine_tune(LITE, train, val, ["benign", "malignant"], cfg, root=store, progress=False)
    assert ft.is_ynet
    loaded = load_finetuned(LITE, ft.weights_id, root=store)
    want = {it.id: mask_box(p) for it, p in iter_masks(loaded.model, items, loaded.geometry, loaded.data_config,
                                                          device="cpu")}
    cache = tmp_path / "cache"
    fs = run(sub, [TINY], cache, input="box", boxes=f"predicted:{ft.weights_id}")  # found in the store by id
    got = {it.id: predicted_boxes(items, f"predicted:{ft.weights_id}", cache_root=cache).boxes[it.sha256]
           for it in items}
    assert got == want
    assert len({b for b in want.values() if b is not None}) > 5  # real, varied boxes: the comparison means something
    assert fs.info[PBOX].boxes["weights_id"] == ft.weights_id and fs.record["computed_rows"] == {PBOX: 24}
    rec = fs.record["predicted_boxes"]
    assert rec["computed"] == 24 and rec["empty_mask_ids"] == sorted(
        (i for i, b in want.items() if b is None), key=[it.id for it in items].index)
    again = run(sub, [TINY], cache, input="box", boxes=f"predicted:{LITE}@{ft.weights_id}")
    assert again.record["computed_rows"] == {PBOX: 0} and again.record["predicted_boxes"]["computed"] == 0
    np.testing.assert_array_equal(again[PBOX], fs[PBOX])
    manual = run(sub, [TINY], cache, input="box")
    assert manual.info[TINY].entry_key != fs.info[PBOX].entry_key


def test_extract_and_cache_ls_commands_on_predicted_boxes(lesions, tmp_path, net, capsys):
    from workbench.cli import main

    cache = str(tmp_path / "cache")
    args = ["extract", "--manifest", str(lesions), "--features", TINY, "--cache", cache, "--image-size", "32",
            "--device", "cpu", "--workers", "0", "--quiet", "--input", "box", "--boxes", f"predicted:{YNET_ID}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert PBOX in out and f"predicted boxes of {LITE}@{YNET_ID}: 4 computed, 0 cached; 1 empty masks" in out
    assert main(["cache", "ls", "--cache", cache]) == 0
    assert f"box fp32 float32 RANDOM boxes of {YNET_ID}" in capsys.readouterr().out
