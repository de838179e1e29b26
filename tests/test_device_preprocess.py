"""Preprocessing on the device (``ExtractOptions.preprocess_on="device"``), run on the CPU
device: the workers only read pixels, the device converts, crops, resizes and stacks.

On the CPU the two paths run the same torch ops on the same float tensors, so the
features must be bit-identical (the measured tolerance is 0; the GPU's is stated in
benchmarks/RESULTS.md), and the cache keys the same.
"""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import workbench.features.extraction as extract_mod
from workbench.data.images import ImageDecodeError, decode_image, file_sha256
from workbench.data.pixels import PixelStore
from workbench.errors import ConfigError
from workbench.features.options import ExtractOptions

from _helpers import RESNET, TINY, run  # noqa: E402


@pytest.fixture
def mixed(make_dataset):
    """8-bit grey and RGB PNGs plus a 16-bit grey PNG and a 16-bit RGB TIFF, all boxed."""
    ds = make_dataset(6)  # img002 and img005 grey
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(200, 3000, (40, 48), dtype=np.uint16)).save(ds.path_of("img000"))
    rel = "images/img001.tif"
    tifffile.imwrite(ds.root / rel, rng.integers(0, 65535, (40, 48, 3), dtype=np.uint16))
    ds.rows[1]["path"] = rel
    ds.write_csv()
    return ds


def _both(ds, tmp_path, tag: str, *, pixel_store: bool = True, **opts):
    """Loader-path features, and device-path features from a store missed then hit."""
    ref = run(ds.csv, [TINY, RESNET], tmp_path / f"loader-{tag}", pixel_store=pixel_store,
              preprocess_on="loader", **opts)
    dev_root = tmp_path / f"device-{tag}"
    # First TINY: every image missed (decoded, float32); then RESNET: read back from the store.
    first = run(ds.csv, [TINY], dev_root, pixel_store=pixel_store, preprocess_on="device", **opts)
    second = run(ds.csv, [TINY, RESNET], dev_root, pixel_store=pixel_store, preprocess_on="device", **opts)
    assert second.record["computed_rows"] == {TINY: 0, RESNET: len(ds.ids)}
    return ref, first, second


@pytest.mark.parametrize("input_", ["whole", "box"])
@pytest.mark.parametrize("resize", ["squash", "crop", "letterbox"])
def test_device_path_equals_the_loader_path_bit_for_bit(mixed, tmp_path, input_, resize):
    ref, first, second = _both(mixed, tmp_path, f"{input_}-{resize}", input=input_, resize=resize,
                               image_size=29)  # odd: letterbox pads, crop rounds
    np.testing.assert_array_equal(first[TINY], ref[TINY])
    np.testing.assert_array_equal(second[RESNET], ref[RESNET])
    for b in (TINY, RESNET):
        assert second.info[b].entry_key == ref.info[b].entry_key  # the option is no part of the key
    assert ref.record["settings"]["preprocess_on"] == "loader"
    assert second.record["settings"]["preprocess_on"] == "device"
    # The store held the 8-bit images as uint8: the device converted those.
    store = PixelStore(tmp_path / f"device-{input_}-{resize}" / "pixels")
    kinds = sorted(str(store.load(file_sha256(mixed.root / r["path"])).dtype) for r in mixed.rows)
    assert kinds == ["float32"] * 2 + ["uint8"] * 4


def test_device_path_without_the_store_decodes_and_matches(mixed, tmp_path):
    ref, first, second = _both(mixed, tmp_path, "nostore", pixel_store=False, input="box")
    np.testing.assert_array_equal(first[TINY], ref[TINY])
    np.testing.assert_array_equal(second[RESNET], ref[RESNET])
    assert not (tmp_path / "device-nostore" / "pixels").exists()


def test_uint8_conversion_is_decode_images_arithmetic(tmp_path):
    """Every 8-bit value, converted on the device, is the float decode_image gives."""
    path = tmp_path / "ramp.png"
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(ramp).save(path)
    decoded = decode_image(path, keep_gray=True)
    batch = extract_mod._RawBatch.of([0], [torch.from_numpy(ramp)[None]])
    geometry = extract_mod.Geometry(16)  # same size: the resize keeps every value
    (x,) = extract_mod._device_preprocess(batch, [geometry], torch.device("cpu"))
    assert torch.equal(x[0], geometry(decoded).expand(3, -1, -1))
    assert torch.equal(extract_mod._U8_TO_UNIT[torch.from_numpy(ramp).long()], decoded[0])


def test_raw_batch_packs_and_unpacks_mixed_sizes_and_dtypes():
    imgs = [torch.randint(0, 256, (1, 5, 7), dtype=torch.uint8), torch.rand(3, 4, 6),
            torch.randint(0, 256, (3, 2, 9), dtype=torch.uint8)]
    batch = extract_mod._collate_raw([(4, imgs[0]), (5, imgs[1]), (6, imgs[2])])
    assert batch.idx.tolist() == [4, 5, 6] and sorted(map(str, batch.flat)) == ["torch.float32", "torch.uint8"]
    for a, b in zip(batch.images(torch.device("cpu")), imgs):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_a_decode_error_on_the_device_path_names_the_file(make_dataset, tmp_path, monkeypatch):
    ds = make_dataset(3)

    def decode(path, **kw):  # the file breaks between validation and the pass
        if "img001" in str(path):
            raise ImageDecodeError(path, "truncated or corrupt image data")
        return decode_image(path, **kw)

    monkeypatch.setattr(extract_mod, "decode_image", decode)
    with pytest.raises(ImageDecodeError, match="img001.png: truncated"):
        run(ds.csv, [TINY], tmp_path / "c", pixel_store=False, preprocess_on="device")


def test_option_values():
    assert ExtractOptions().preprocess_on == "auto"
    assert ExtractOptions().preprocess_site("cuda") == "device"
    assert ExtractOptions().preprocess_site("cpu") == "loader"
    assert ExtractOptions(preprocess_on="device").preprocess_site("cpu") == "device"
    assert ExtractOptions(preprocess_on="loader").preprocess_site("cuda") == "loader"
    with pytest.raises(ConfigError, match=r"preprocess_on = 'gpu'.*auto, loader, device"):
        ExtractOptions(preprocess_on="gpu")
    with pytest.raises(ConfigError, match="preprocess_on"):
        ExtractOptions.from_dict({"preprocess_on": None})


def test_experiment_config_sets_the_option_and_the_stages_store(tmp_path):
    from workbench.experiment import ExperimentConfig, _pixel_store

    cfg = tmp_path / "e.toml"
    cfg.write_text('name = "e"\nmanifest = "m.csv"\ncache = "c"\n[features]\nspecs = ["alexnet"]\n'
                   'preprocess_on = "device"\n')
    loaded = ExperimentConfig.load(cfg)
    assert loaded.features.extract.preprocess_on == "device"
    assert _pixel_store(loaded).root == (tmp_path / "c" / "pixels").resolve()
    cfg.write_text('name = "e"\nmanifest = "m.csv"\n[features]\nspecs = ["alexnet"]\npixel_store = false\n')
    assert _pixel_store(ExperimentConfig.load(cfg)) is None
    cfg.write_text('name = "e"\nmanifest = "m.csv"\n[features]\nspecs = ["alexnet"]\npreprocess_on = "gpu"\n')
    with pytest.raises(ConfigError, match="preprocess_on"):
        ExperimentConfig.load(cfg)


def test_extract_command_takes_preprocess_on(make_dataset, tmp_path):
    """``workbench extract --preprocess-on device``: the same features as the loader path, the
    site in the record; a bad value is refused by name."""
    import json

    from workbench.cli import main

    ds = make_dataset(4)
    ref = run(ds.csv, [TINY], tmp_path / "ref", preprocess_on="loader")
    base = ["extract", "--manifest", str(ds.csv), "--features", TINY, "--cache", str(tmp_path / "c"),
            "--image-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--quiet",
            "--save", str(tmp_path / "f.npz"), "--record", str(tmp_path / "rec.json")]
    assert main(base + ["--preprocess-on", "device"]) == 0
    assert json.loads((tmp_path / "rec.json").read_text())["settings"]["preprocess_on"] == "device"
    with np.load(tmp_path / "f.npz", allow_pickle=False) as f:
        assert np.array_equal(f[TINY], ref[TINY])
    assert main(base + ["--preprocess-on", "gpu"]) != 0
