"""The pixel store (issue 17 item 1): exact pixels, hit/miss, verify, repair, concurrent writers."""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import workbench.features.extraction as extract_mod
from workbench.cli import main
from workbench.data.images import ImageChangedError, ImageDecodeError, decode_image, file_sha256
from workbench.data.pixels import PixelStore, PixelStoreError, pixel_key
from workbench.errors import ConfigError, WorkbenchError
from workbench.features.options import ExtractOptions

from _helpers import RESNET, TINY, run  # noqa: E402


def _images(folder: Path) -> dict[str, Path]:
    """Small files of every kind decode_image treats differently."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    out["gray"] = folder / "gray.png"
    Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8)).save(out["gray"])
    out["rgb"] = folder / "rgb.jpg"
    Image.fromarray(rng.integers(0, 256, (8, 11, 3), dtype=np.uint8)).save(out["rgb"])
    out["rgba"] = folder / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)).save(out["rgba"])
    out["gray16"] = folder / "gray16.png"
    Image.fromarray(rng.integers(100, 4000, (10, 6), dtype=np.uint16)).save(out["gray16"])
    out["float"] = folder / "float.tif"
    tifffile.imwrite(out["float"], rng.normal(size=(5, 8)).astype(np.float32))
    return out


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    return _images(tmp_path / "img")


def _counting(calls: list):
    def decode(path, **kw):
        calls.append(Path(path).name)
        return decode_image(path, **kw)
    return decode


@pytest.mark.parametrize("kind, dtype", [("gray", "uint8"), ("rgb", "uint8"), ("rgba", "uint8"),
                                         ("gray16", "float32"), ("float", "float32")])
def test_hit_and_miss_are_bit_identical_to_decode_image(images, tmp_path, kind, dtype):
    path = images[kind]
    sha = file_sha256(path)
    ref = decode_image(path, keep_gray=True, expect_sha256=sha)
    store = PixelStore(tmp_path / "px")
    calls: list[str] = []
    miss = store.get(sha, path, decode=_counting(calls))
    hit = store.get(sha, path, decode=_counting(calls))
    assert calls == [path.name]  # decoded once, the second read came from the store
    assert (store.hits, store.misses) == (1, 1)
    for t in (miss, hit):
        assert t.dtype == torch.float32 and t.shape == ref.shape
        assert torch.equal(t, ref)
    stored = store.load(sha)
    assert isinstance(stored, np.memmap) and str(stored.dtype) == dtype
    # Exactness rests on the stored numbers themselves, not on a shared code path.
    expect = ref.numpy() if dtype == "float32" else np.rint(ref.numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(stored), expect)
    # raw=True: a hit is the stored array itself, unconverted (the device path converts it).
    raw = store.get(sha, path, decode=_counting(calls), raw=True)
    assert isinstance(raw, np.memmap) and str(raw.dtype) == dtype and calls == [path.name]
    np.testing.assert_array_equal(np.asarray(raw), expect)


def test_layout_key_and_item_form(images, tmp_path):
    path = images["gray"]
    sha = file_sha256(path)

    class It:  # a manifest item's two fields
        sha256, path = sha, images["gray"]

    store = PixelStore(tmp_path / "px")
    t = store.get(It())
    key = pixel_key(sha)
    assert key != sha and len(key) == 64
    npy, rec = tmp_path / "px" / key[:2] / f"{key}.npy", tmp_path / "px" / key[:2] / f"{key}.json"
    assert npy.is_file() and rec.is_file()
    meta = json.loads(rec.read_text())
    assert meta["sha256"] == sha and meta["shape"] == [1, 9, 7] and meta["dtype"] == "uint8"
    assert np.load(npy, allow_pickle=False).shape == (1, 9, 7)
    assert store.keys() == [key] and store.size()["entries"] == 1
    # A hit never reads the image file: its bytes were hashed when the entry was made.
    path.unlink()
    assert torch.equal(store.get(sha, path), t)
    assert store.load("0" * 64) is None


def test_bad_arguments_raise_workbench_errors(images, tmp_path):
    store = PixelStore(tmp_path / "px")
    with pytest.raises(PixelStoreError, match="not a hex SHA-256"):
        store.load("abc")
    with pytest.raises(PixelStoreError, match="no image path"):
        store.get("0" * 64)
    with pytest.raises(PixelStoreError, match="float32"):
        store.put("0" * 64, torch.zeros(2, 3, 3))
    assert issubclass(PixelStoreError, WorkbenchError) and issubclass(PixelStoreError, ValueError)


def test_a_miss_decodes_only_the_validated_bytes(images, tmp_path):
    store = PixelStore(tmp_path / "px")
    with pytest.raises(ImageChangedError):
        store.get("f" * 64, images["gray"])
    assert store.keys() == []  # nothing stored under a digest the bytes do not have
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageDecodeError, match="bad.png"):
        store.get(file_sha256(bad), bad)


def _damage(npy: Path, how: str) -> None:
    data = bytearray(npy.read_bytes())
    if how == "flip":
        data[-1] ^= 0xFF
    elif how == "truncate":
        data = data[: len(data) - 5]
    elif how == "header":
        data[10:20] = b"X" * 10
    npy.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate", "header", "missing"])
def test_verify_names_damage_and_a_read_redecodes_it(images, tmp_path, how, caplog):
    store = PixelStore(tmp_path / "px")
    good = {k: file_sha256(p) for k, p in images.items()}
    for k, p in images.items():
        store.get(good[k], p)
    assert store.verify() == []
    key = pixel_key(good["rgb"])
    npy = tmp_path / "px" / key[:2] / f"{key}.npy"
    if how == "missing":
        npy.unlink()
    else:
        _damage(npy, how)
    problems = store.verify()
    assert [p.file for p in problems] == [str(npy)] and problems[0].severity == "error"
    if how != "missing":
        with pytest.raises(PixelStoreError, match=str(npy.name)):
            store.load(good["rgb"])

    calls: list[str] = []
    with caplog.at_level(logging.WARNING, logger="workbench.data.pixels"):
        # raw or not, a damaged entry is decoded again (a tensor), never handed out
        t = store.get(good["rgb"], images["rgb"], decode=_counting(calls), raw=True)
    assert calls == ["rgb.jpg"] and store.repaired == 1
    assert key in caplog.text and "decoding" in caplog.text
    assert torch.equal(t, decode_image(images["rgb"], keep_gray=True))
    assert store.verify() == []  # rewritten


def test_verify_reports_leftovers_as_warnings(images, tmp_path):
    store = PixelStore(tmp_path / "px")
    sha = file_sha256(images["gray"])
    store.get(sha, images["gray"])
    key = pixel_key(sha)
    (tmp_path / "px" / key[:2] / f"{key}.json").unlink()  # a writer killed between its renames
    (tmp_path / "px" / key[:2] / f".x.npy.123.part").write_bytes(b"half")
    problems = store.verify()
    assert sorted(p.severity for p in problems) == ["warning", "warning"]
    assert store.load(sha) is None and store.keys() == []  # uncommitted: not read


def test_record_of_another_image_is_an_error(images, tmp_path):
    store = PixelStore(tmp_path / "px")
    a, b = file_sha256(images["gray"]), file_sha256(images["rgb"])
    store.get(a, images["gray"])
    ka = pixel_key(a)
    rec = tmp_path / "px" / ka[:2] / f"{ka}.json"
    meta = json.loads(rec.read_text())
    rec.write_text(json.dumps({**meta, "sha256": b}))
    assert [(p.file, p.problem) for p in store.verify()] == [(str(rec), "its record is of another image (key differs)")]
    with pytest.raises(PixelStoreError, match="another image"):
        store.load(a)


def test_concurrent_writers_leave_one_clean_entry(images, tmp_path):
    store = PixelStore(tmp_path / "px")
    sha = file_sha256(images["gray16"])
    ref = decode_image(images["gray16"], keep_gray=True)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: PixelStore(tmp_path / "px").get(sha, images["gray16"]), range(16)))
    assert all(torch.equal(o, ref) for o in outs)
    assert store.verify() == [] and len(store.keys()) == 1
    assert not list((tmp_path / "px").rglob("*.part"))


def test_a_store_that_cannot_be_written_raises_or_warns_once(images, tmp_path, caplog):
    blocker = tmp_path / "px"
    blocker.write_text("a file where the store's folder should be")
    sha = file_sha256(images["gray"])
    with pytest.raises(OSError) as e:
        PixelStore(blocker).get(sha, images["gray"])
    assert str(blocker) in str(e.value)
    store = PixelStore(blocker, strict_writes=False)
    with caplog.at_level(logging.WARNING, logger="workbench.data.pixels"):
        t1 = store.get(sha, images["gray"])
        t2 = store.get(sha, images["gray"])
    assert torch.equal(t1, t2) and store.misses == 2
    assert caplog.text.count("could not store") == 1


# ---- extraction -------------------------------------------------------------------------------


def test_option_is_validated():
    with pytest.raises(ConfigError, match="pixel_store"):
        ExtractOptions(pixel_store="yes")
    assert ExtractOptions.from_dict({"pixel_store": False}).pixel_store is False


def test_extraction_with_store_is_bit_identical_and_decodes_once(make_dataset, tmp_path, monkeypatch):
    ds = make_dataset(6)
    ref = run(ds.csv, [TINY], tmp_path / "plain", pixel_store=False)
    assert not (tmp_path / "plain" / "pixels").exists()

    calls: list[str] = []
    monkeypatch.setattr(extract_mod, "decode_image", _counting(calls))
    fs = run(ds.csv, [TINY], tmp_path / "c")
    assert sorted(calls) == sorted(f"{i}.png" for i in ds.ids)
    store = PixelStore(tmp_path / "c" / "pixels")
    assert len(store.keys()) == 6 and store.verify() == []
    # Same cache key (the pixels are the same) and the same bits.
    assert fs.info[TINY].entry_key == ref.info[TINY].entry_key
    np.testing.assert_array_equal(fs[TINY], ref[TINY])

    # A new backbone later: every image comes from the store, none is decoded.
    calls.clear()
    fs2 = run(ds.csv, [TINY, RESNET], tmp_path / "c")
    assert calls == [] and fs2.record["computed_rows"] == {TINY: 0, RESNET: 6}
    ref2 = run(ds.csv, [RESNET], tmp_path / "plain", pixel_store=False)
    np.testing.assert_array_equal(fs2[RESNET], ref2[RESNET])


def test_cli_cache_verify_checks_the_pixel_store(tiny_dataset, tmp_path, capsys):
    root = tmp_path / "cache"
    run(tiny_dataset.csv, [TINY], root)
    assert main(["cache", "--cache", str(root), "verify"]) == 0
    assert "8 pixel-store images: 0 corrupt" in capsys.readouterr().out
    npy = sorted((root / "pixels").rglob("*.npy"))[3]
    _damage(npy, "flip")
    assert main(["cache", "--cache", str(root), "verify"]) == 1
    out = capsys.readouterr().out
    assert str(npy) in out and "1 corrupt" in out


# ---- fine-tuning dataset ----------------------------------------------------------------------


def test_train_dataset_reads_the_store_with_the_same_tensors(make_dataset, tmp_path, monkeypatch):
    from workbench.data import augment as augment_mod
    from workbench.data.augment import TrainImageDataset
    from workbench.data.manifest import Manifest

    ds = make_dataset(4)  # grey and RGB images, all with boxes
    items = list(Manifest.load(ds.csv).validate(progress=False))
    classes = sorted({it.label for it in items})
    kw = dict(cut_remain=True, resize="squash")
    plain = TrainImageDataset(items, classes, 24, (0.5,) * 3, (0.25,) * 3, **kw)
    store = PixelStore(tmp_path / "px")
    stored = TrainImageDataset(items, classes, 24, (0.5,) * 3, (0.25,) * 3, pixels=store, **kw)
    for epoch in range(2):
        for i in range(len(items)):
            a, b = plain[i], stored[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["masked"], b["masked"])
            assert a["label"] == b["label"]
    assert (store.misses, store.hits) == (4, 4)  # the second epoch decoded nothing

    calls: list[str] = []
    monkeypatch.setattr(augment_mod, "decode_image", _counting(calls))
    stored[0]
    assert calls == []


def test_low_disk_space_decodes_without_storing(images, tmp_path, monkeypatch, caplog):
    import collections

    import workbench.data.pixels as pixels_mod

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(pixels_mod.shutil, "disk_usage", lambda p: usage(10 << 30, 0, (1 << 30) + 10_000))
    store = PixelStore(tmp_path / "px")  # 1 GiB reserve: a 9x7 image fits, a 16-bit one as float32 too
    sha = file_sha256(images["gray"])
    store.get(sha, images["gray"])
    assert store.keys() == [pixel_key(sha)]
    store = PixelStore(tmp_path / "px2", reserve_bytes=(1 << 30) + 9_900)
    with caplog.at_level(logging.INFO, logger="workbench.data.pixels"):
        for k in ("rgb", "rgba"):
            t = store.get(file_sha256(images[k]), images[k])
            assert torch.equal(t, decode_image(images[k], keep_gray=True))
    assert store.keys() == [] and not (tmp_path / "px2").exists()
    assert caplog.text.count("decoding without storing") == 1


def test_the_option_reaches_extract_options_from_the_cli_and_the_config(tmp_path):
    """``--no-pixel-store`` and ``[features] pixel_store = false`` switch the store off."""
    from workbench.cli.objects import extract_options_of
    from workbench.cli.parser import build_parser
    from workbench.experiment import ExperimentConfig

    args = build_parser().parse_args(["extract", "--manifest", "m.csv", "--features", "alexnet", "--cache", "c",
                                      "--no-pixel-store"])
    assert extract_options_of(args).pixel_store is False
    args = build_parser().parse_args(["extract", "--manifest", "m.csv", "--features", "alexnet", "--cache", "c"])
    assert extract_options_of(args).pixel_store is True
    cfg = tmp_path / "e.toml"
    cfg.write_text('name = "e"\nmanifest = "m.csv"\n[features]\nspecs = ["alexnet"]\npixel_store = false\n')
    assert ExperimentConfig.load(cfg).features.extract.pixel_store is False


# ---- fine-tuning from the store ---------------------------------------------------------------

def _tiny_finetune_lists(ds):
    from workbench.data.manifest import Manifest

    items = list(Manifest.load(ds.csv).validate(progress=False))
    return items[:4], items[4:], sorted({it.label for it in items})


def _decode_counter(monkeypatch) -> list[str]:
    """Counts every full decode, wherever it is called from (decode_image's one reader)."""
    import workbench.data.images as images_mod

    calls: list[str] = []
    real = images_mod._decode_array

    def counted(path, data):
        calls.append(Path(path).name)
        return real(path, data)

    monkeypatch.setattr(images_mod, "_decode_array", counted)
    return calls


@pytest.mark.filterwarnings("ignore:the validation split holds fewer")
def test_fine_tuning_from_the_store_keeps_the_id_and_the_weights(make_dataset, tmp_path, monkeypatch):
    from workbench.training.config import FineTuneConfig
    from workbench.training.finetune import fine_tune

    ds = make_dataset(6)
    train, val, classes = _tiny_finetune_lists(ds)
    config = FineTuneConfig(epochs=1, batch_size=2, image_size=32, cut_remain=True)
    kw = dict(weights="random", device="cpu", progress=False)
    plain = fine_tune("timm/test_efficientnet", train, val, classes, config, root=tmp_path / "a", **kw)
    store = PixelStore(tmp_path / "px")
    calls = _decode_counter(monkeypatch)
    first = fine_tune("timm/test_efficientnet", train, val, classes, config, root=tmp_path / "b", pixels=store, **kw)
    assert sorted(calls) == sorted(f"{it.id}.png" for it in train + val)  # each image decoded once
    calls.clear()
    second = fine_tune("timm/test_efficientnet", train, val, classes, config, root=tmp_path / "c", pixels=store,
                       **kw)
    assert calls == []  # training and validation images all read from the store
    assert plain.weights_id == first.weights_id == second.weights_id
    for ft in (first, second):
        a, b = plain.model.state_dict(), ft.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert ft.history[0]["train_loss"] == plain.history[0]["train_loss"]


def test_baseline_estimator_and_cli_take_the_store(make_dataset, tmp_path, monkeypatch):
    from workbench.baselines.estimator import CNNClassifier
    from workbench.cli.parser import build_parser
    from workbench.data.manifest import Manifest

    ds = make_dataset(6)
    m = Manifest.load(ds.csv).validate(progress=False)
    cfg = {"epochs": 1, "batch_size": 2, "image_size": 32}
    kw = dict(weights="random", config=cfg, val_fraction=0.0, device="cpu")
    plain = CNNClassifier("timm/test_efficientnet", m, root=str(tmp_path / "a"), **kw).fit(m.ids)
    stored = CNNClassifier("timm/test_efficientnet", m, root=str(tmp_path / "b"), pixels=str(tmp_path / "px"),
                           **kw).fit(m.ids)
    assert len(PixelStore(tmp_path / "px").keys()) == 6
    calls = _decode_counter(monkeypatch)
    np.testing.assert_array_equal(stored.predict_proba(m.ids), plain.predict_proba(m.ids))
    assert plain.weights_id_ == stored.weights_id_
    assert calls == [f"{i}.png" for i in m.ids]  # only the plain estimator decoded

    parser = build_parser()
    for cmd in (["finetune", "--manifest", "m.csv", "--backbone", "alexnet"],
                ["baselines", "--manifest", "m.csv", "--out", "o"]):
        assert parser.parse_args(cmd).pixel_store is None
        assert parser.parse_args(cmd + ["--pixel-store", "c/pixels"]).pixel_store == "c/pixels"
