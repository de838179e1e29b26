"""Tests for workbench.features.extraction: requests, multi-backbone passes, failing early."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.backbones import (
    CheckpointMismatchError,
    UnknownBackboneError,
    WeightsNotFoundError,
    get_backbone,
    load_backbone,
)
from workbench.data.images import decode_image
from workbench.data.manifest import Manifest, ManifestError
from workbench.features import FeatureRequest, Preprocess
from workbench.features.cache import FORMAT

extract_mod = importlib.import_module("workbench.features.extraction")

from _helpers import RESNET, TINY, run  # noqa: E402


def cache_files(root: Path) -> list[Path]:
    """Files of feature entries under a cache root (other bookkeeping files aside)."""
    base = root / FORMAT
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []


# ---- FeatureRequest.parse ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("alexnet:fc6,fc7", FeatureRequest("alexnet", None, ("fc6", "fc7"))),
        ("alexnet: fc6 , fc7 ", FeatureRequest("alexnet", None, ("fc6", "fc7"))),
        ("resnet50@random:avgpool", FeatureRequest("resnet50", "random", ("avgpool",))),
        ("vgg16@/p/x.pth:fc7", FeatureRequest("vgg16", "/p/x.pth", ("fc7",))),
        ("timm/test_efficientnet@random", FeatureRequest("timm/test_efficientnet", "random", None)),
        ("timm/convnext_tiny.fb_in1k", FeatureRequest("timm/convnext_tiny.fb_in1k", None, None)),
        ("tf_efficientnet_lite0", FeatureRequest("tf_efficientnet_lite0", None, None)),
        ("resnet18@IMAGENET1K_V1:avgpool", FeatureRequest("resnet18", "IMAGENET1K_V1", ("avgpool",))),
    ],
)
def test_parse_valid_specs(text, expected):
    assert FeatureRequest.parse(text) == expected


def test_block_names_follow_the_request():
    assert FeatureRequest.parse("alexnet:fc6").block_name("fc6") == "alexnet:fc6"
    assert FeatureRequest.parse("vgg16@/p/x.pth:fc7").block_name("fc7") == "vgg16@/p/x.pth:fc7"


@pytest.mark.parametrize(
    "text",
    ["", "   ", ":fc6", "@random", "@random:fc6", "alexnet:", "alexnet@",
     "alexnet:fc6;fc7", "alexnet:fc6:fc7", "alexnet:,"],
)
def test_parse_rejects_bad_specs(text):
    with pytest.raises(ValueError, match="backbone\\[@weights\\]\\[:tap,tap\\]|tap"):
        FeatureRequest.parse(text)


# ---- one pass, several backbones ---------------------------------------------------------


def test_multi_backbone_pass_shapes_order_and_values(tiny_dataset, tmp_path):
    fs = run(tiny_dataset.csv, [RESNET, TINY], tmp_path / "cache")
    assert fs.names == [RESNET, TINY]
    assert fs.ids == tiny_dataset.ids
    assert fs[RESNET].shape == (8, 512) and fs[RESNET].dtype == np.float32
    assert fs[TINY].shape == (8, 256) and fs[TINY].dtype == np.float32
    assert fs.record["computed_rows"] == {RESNET: 8, TINY: 8}
    assert fs.record["forward_images"] == {"resnet18@random": 8, "timm/test_efficientnet@random": 8}
    assert fs.record["random_weights"] == ["resnet18", "timm/test_efficientnet"]
    assert fs.info[RESNET].entry_key != fs.info[TINY].entry_key
    # Rows are distinct images, so no two rows may be equal (catches a broadcast row).
    assert len({r.tobytes() for r in fs[TINY]}) == 8

    # Each row equals the backbone run alone on that image.
    for request, block in ((RESNET, RESNET), (TINY, TINY)):
        req = FeatureRequest.parse(request)
        lb = load_backbone(req.backbone, req.weights, req.taps)
        pre = Preprocess.from_data_config(lb.data_config, size=32)
        for row, item_id in enumerate(tiny_dataset.ids):
            x = pre.geometry(decode_image(tiny_dataset.path_of(item_id)))
            with torch.inference_mode():
                ref = lb.model(pre.normalize(x[None]))[req.taps[0]][0].numpy()
            np.testing.assert_allclose(fs[block][row], ref, atol=1e-4, rtol=0, err_msg=f"{block} {item_id}")


def test_rows_follow_manifest_order_from_cache(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    fs = run(tiny_dataset.csv, [TINY], cache)
    shuffled = [tiny_dataset.rows[i] for i in (5, 0, 7, 2, 1, 6, 4, 3)]
    csv2 = tiny_dataset.write_csv(shuffled, name="shuffled.csv")
    fs2 = run(csv2, [TINY], cache)
    assert fs2.ids == [r["id"] for r in shuffled]
    assert fs2.record["computed_rows"] == {TINY: 0}
    pos = {i: n for n, i in enumerate(fs.ids)}
    np.testing.assert_array_equal(fs2[TINY], fs[TINY][[pos[i] for i in fs2.ids]])
    assert fs2.labels == [r["label"] for r in shuffled]


def test_each_image_decoded_once_for_several_backbones(make_dataset, tmp_path, monkeypatch):
    ds = make_dataset(5)
    calls: list[str] = []

    def counting_decode(path, **kw):
        calls.append(Path(path).name)
        return decode_image(path, **kw)

    monkeypatch.setattr(extract_mod, "decode_image", counting_decode)
    # No image_size override: resnet18 wants 224 px and test_efficientnet 160 px, so
    # one decode must feed two geometries.
    fs = run(ds.csv, [RESNET, TINY], tmp_path / "c", image_size=None, batch_size=5)
    assert sorted(calls) == sorted(f"{i}.png" for i in ds.ids)
    assert fs[RESNET].shape == (5, 512)

    # A later pass decodes only the images some backbone still lacks.
    calls.clear()
    new = ds.add_images(2)
    fs = run(ds.csv, [RESNET, TINY], tmp_path / "c", image_size=None)
    assert sorted(calls) == sorted(f"{i}.png" for i in new)
    assert fs.record["computed_rows"] == {RESNET: 2, TINY: 2}


def test_worker_process_path_gives_same_features(tiny_dataset, tmp_path):
    ref = run(tiny_dataset.csv, [RESNET, TINY], tmp_path / "c0", num_workers=0)
    fs = run(tiny_dataset.csv, [RESNET, TINY], tmp_path / "c1", num_workers=1, batch_size=3)
    assert fs.record["computed_rows"] == {RESNET: 8, TINY: 8}
    assert fs.record["settings"]["num_workers"] == 1
    for name in (RESNET, TINY):
        np.testing.assert_allclose(fs[name], ref[name], atol=1e-5, rtol=0)


def test_grayscale_and_rgb_rows_both_extract(make_dataset, tmp_path):
    ds = make_dataset(4, gray_every=2)  # img001, img003 grayscale
    fs = run(ds.csv, [TINY], tmp_path / "c")
    assert np.isfinite(fs[TINY]).all() and fs[TINY].shape == (4, 256)


def test_record_and_block_info(tiny_dataset, tmp_path):
    fs = run(tiny_dataset.csv, [TINY], tmp_path / "c")
    rec = fs.record
    assert rec["kind"] == "extract" and rec["n_images"] == 8 and rec["skipped"] == []
    assert rec["features"] == [TINY]
    assert rec["settings"]["image_size"] == 32 and rec["settings"]["precision"] == "fp32"
    assert rec["manifest_digest"] == Manifest.load(tiny_dataset.csv).validate().digest()
    info = fs.info[TINY]
    assert info.backbone == "timm/test_efficientnet" and info.tap == "pre_logits"
    assert info.weights_random and info.dim == 256
    assert info.preprocess["geometry"]["size"] == 32
    out = fs.save_record(tmp_path / "rec.json")
    assert out.is_file() and info.entry_key in out.read_text()


# ---- errors before any work --------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_weights_files(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("weights")
    wrong = tmp_path / "resnet18_for_tiny.pth"
    torch.save(get_backbone("resnet18").build().state_dict(), wrong)
    return {"wrong": wrong, "absent": tmp_path / "nowhere" / "w.pth"}


@pytest.mark.parametrize(
    "features, error, words",
    [
        (["resnet18@random:fc7"], KeyError, ["no tap 'fc7'", "avgpool"]),
        ([TINY, "timm/test_efficientnet@random:avgpool"], KeyError, ["no tap 'avgpool'", "pre_logits"]),
        (["resnet19@random:avgpool"], UnknownBackboneError, ["unknown backbone 'resnet19'", "resnet18"]),
        (["timm/not_a_model_xyz"], UnknownBackboneError, ["not_a_model_xyz"]),
        (["timm/test_efficientnet@ABSENT"], WeightsNotFoundError, ["w.pth", "not found"]),
        (["resnet18@no_such_weights:avgpool"], KeyError, ["no weights 'no_such_weights'"]),
        ([RESNET, RESNET], ValueError, ["requested twice", RESNET]),
        ([TINY, "timm/test_efficientnet@random"], ValueError, ["requested twice", TINY]),
        (["timm/test_efficientnet@random", "timm/test_efficientnet@random"], ValueError, ["requested twice"]),
        ([TINY, "timm/test_efficientnet@WRONG:pre_logits"], CheckpointMismatchError,
         ["resnet18_for_tiny.pth", "timm/test_efficientnet"]),
        ([], ValueError, ["no features requested"]),
        ([TINY], ValueError, ["dtype"]),  # with dtype="float64"
    ],
    ids=["unknown-tap", "unknown-tap-timm", "unknown-backbone", "unknown-timm", "missing-file",
         "unknown-weights-id", "duplicate", "duplicate-implicit-taps", "duplicate-no-taps",
         "wrong-architecture-file", "empty", "bad-dtype"],
)
def test_bad_requests_fail_clearly_and_write_nothing(
    tiny_dataset, tmp_path, bad_weights_files, features, error, words
):
    features = [
        f.replace("ABSENT", str(bad_weights_files["absent"])).replace("WRONG", str(bad_weights_files["wrong"]))
        for f in features
    ]
    words = [w.replace("w.pth", str(bad_weights_files["absent"])) for w in words]
    kw = {"dtype": "float64"} if "dtype" in words else {}
    cache = tmp_path / "cache"
    with pytest.raises(error) as info:
        run(tiny_dataset.csv, features, cache, **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert cache_files(cache) == []


def test_bad_row_fails_before_extraction_and_skip_bad_extracts_rest(tiny_dataset, tmp_path, monkeypatch):
    tiny_dataset.add_truncated("broken")
    cache = tmp_path / "cache"
    forwards = []
    monkeypatch.setattr(extract_mod, "_run_pass", lambda *a, **k: forwards.append(1))
    with pytest.raises(ManifestError) as info:
        run(tiny_dataset.csv, [TINY], cache)
    assert "broken" in str(info.value) and "truncated or corrupt image data" in str(info.value)
    assert [b.id for b in info.value.bad_rows] == ["broken"]
    assert forwards == [] and cache_files(cache) == []
    monkeypatch.undo()

    fs = run(tiny_dataset.csv, [TINY], cache, skip_bad=True)
    assert fs.ids == tiny_dataset.ids[:-1] and "broken" not in fs.ids
    assert fs[TINY].shape == (8, 256)
    assert fs.record["computed_rows"] == {TINY: 8}
    skipped = fs.record["skipped"]
    assert [s["id"] for s in skipped] == ["broken"]
    assert skipped[0]["row"] == 10 and "truncated" in skipped[0]["reason"]


def test_unknown_label_with_classes_is_a_bad_row(tiny_dataset, tmp_path):
    with pytest.raises(ManifestError, match="unknown label 'malignant'"):
        run(tiny_dataset.csv, [TINY], tmp_path / "c", classes=["benign"])
    fs = run(tiny_dataset.csv, [TINY], tmp_path / "c", classes=["benign"], skip_bad=True)
    assert set(fs.labels) == {"benign"} and len(fs.record["skipped"]) == 4


def test_box_input_without_box_fails_before_extraction_naming_the_row(tiny_dataset, tmp_path):
    src = tiny_dataset.path_of("img000")
    (tiny_dataset.root / "images" / "nobox.png").write_bytes(src.read_bytes())
    tiny_dataset.add_row("nobox", "images/nobox.png")
    cache = tmp_path / "cache"
    with pytest.raises(ManifestError) as info:
        run(tiny_dataset.csv, [TINY], cache, input="box")
    assert [b.id for b in info.value.bad_rows] == ["nobox"]
    assert "line 10 (id=nobox" in str(info.value) and "no bounding box" in str(info.value)
    assert cache_files(cache) == []
    # The whole image does not need a box.
    fs = run(tiny_dataset.csv, [TINY], cache)
    assert fs.ids[-1] == "nobox"


def test_box_input_uses_the_box_crop(tiny_dataset, tmp_path):
    fs = run(tiny_dataset.csv, [TINY], tmp_path / "c", input="box", box_margin=0.0)
    req = FeatureRequest.parse(TINY)
    lb = load_backbone(req.backbone, req.weights, req.taps)
    pre = Preprocess.from_data_config(lb.data_config, size=32, input="box", box_margin=0.0)
    row = tiny_dataset.rows[3]
    box = tuple(int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
    img = decode_image(tiny_dataset.path_of(row["id"]))[:, box[1]:box[3], box[0]:box[2]]
    with torch.inference_mode():
        ref = lb.model(pre.normalize(pre.geometry(img)[None]))["pre_logits"][0].numpy()
    np.testing.assert_allclose(fs[TINY][3], ref, atol=1e-4, rtol=0)


def test_bad_settings_fail_before_work(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="resize"):
        run(tiny_dataset.csv, [TINY], cache, resize="stretch")
    with pytest.raises(ValueError, match="input"):
        run(tiny_dataset.csv, [TINY], cache, input="mask")
    with pytest.raises(ValueError, match="precision"):
        run(tiny_dataset.csv, [TINY], cache, precision="fp8")
    assert cache_files(cache) == []


def test_busi_box_and_whole_inputs(busi_dir, tmp_path):
    m = Manifest.load(busi_dir / "labels.csv")
    boxed = [it.id for it in m if it.box is not None]  # "normal" images have no lesion box
    ids = [boxed[i] for i in (0, 1, len(boxed) // 2, len(boxed) - 1)]
    sub = m.subset(ids)
    cache = tmp_path / "cache"
    whole = run(sub, [TINY], cache)
    box = run(sub, [TINY], cache, input="box")
    assert whole.ids == box.ids == ids
    assert whole.info[TINY].entry_key != box.info[TINY].entry_key
    assert box.record["computed_rows"] == {TINY: 4}
    assert not np.allclose(whole[TINY], box[TINY])
