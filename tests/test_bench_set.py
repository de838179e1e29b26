"""The 10k-image benchmark set generator (benchmarks/make_bench_set.py), at N = 12."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.data.manifest import Manifest
from workbench.errors import WorkbenchError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_bench_set.py"


@pytest.fixture(scope="module")
def mbs():
    spec = importlib.util.spec_from_file_location("make_bench_set", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up, and worker
    # processes (forked) find its functions by this name.
    sys.modules["make_bench_set"] = mod
    spec.loader.exec_module(mod)
    return mod


def _shas(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("bench_*.png"))}


@pytest.fixture(scope="module")
def bench_set(mbs, tmp_path_factory):
    busi = Path(__file__).resolve().parents[2] / "shared" / "data" / "busi"
    if not (busi / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {busi}")
    out = tmp_path_factory.mktemp("bench") / "set"
    manifest = mbs.make_bench_set(out, 12, seed=3, jobs=1, busi=busi, progress=False)
    return mbs, busi, out, manifest


def test_files_are_distinct_and_the_manifest_validates(bench_set):
    mbs, busi, out, manifest = bench_set
    shas = _shas(out)
    assert len(shas) == 12 and len(set(shas.values())) == 12
    m = Manifest.load(manifest).validate(progress=False)
    assert len(m) == 12
    # The manifest's hashes are the files' own (validate hashes what it decodes).
    assert sorted(it.sha256 for it in m) == sorted(shas.values())
    src = {it.id: it for it in Manifest.load(busi / "labels.csv")}
    for it in m:
        assert it.label == src[it.group].label and it.split == src[it.group].split
        w, h = Image.open(it.path).size
        sw, sh = Image.open(src[it.group].path).size
        assert 0.8 * sw - 1 <= w <= sw and 0.8 * sh - 1 <= h <= sh  # a crop of 80-100 % per side
        if it.box is not None:
            assert 0 <= it.box.x0 < it.box.x1 <= w and 0 <= it.box.y0 < it.box.y1 <= h


def test_boxes_point_at_the_source_lesion(bench_set):
    """Where the crop kept the whole lesion box, the pixels inside the new box are the
    source's box pixels under some flip (up to the gain and noise): correlation > 0.9."""
    mbs, busi, out, manifest = bench_set
    src = {it.id: it for it in Manifest.load(busi / "labels.csv")}
    checked = 0
    for it in Manifest.load(manifest):
        s = src[it.group]
        if it.box is None or s.box is None:
            continue
        b, sb = it.box, s.box
        if (b.x1 - b.x0, b.y1 - b.y0) != (sb.x1 - sb.x0, sb.y1 - sb.y0):
            continue  # cut by the crop
        a = np.asarray(Image.open(it.path).convert("L"), dtype=float)[b.y0:b.y1, b.x0:b.x1]
        ref = np.asarray(Image.open(s.path).convert("L"), dtype=float)[sb.y0:sb.y1, sb.x0:sb.x1]
        best = max(np.corrcoef(a.ravel(), f(ref).ravel())[0, 1]
                   for f in (lambda r: r, np.fliplr, np.flipud, lambda r: r[::-1, ::-1]))
        assert best > 0.9, (it.id, best)
        checked += 1
    assert checked >= 4


def test_same_seed_same_bytes_any_jobs_and_rerun_skips(bench_set, tmp_path):
    mbs, busi, out, manifest = bench_set
    again = mbs.make_bench_set(tmp_path / "b", 12, seed=3, jobs=2, busi=busi, progress=False)
    assert _shas(tmp_path / "b") == _shas(out)
    assert again.read_bytes() == manifest.read_bytes()
    # A re-run (here asking for fewer) writes nothing and lists what it was asked for.
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b").glob("bench_*.png")}
    m8 = mbs.make_bench_set(tmp_path / "b", 8, seed=3, jobs=1, busi=busi, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b").glob("bench_*.png")} == mtimes
    assert m8.read_text().splitlines() == manifest.read_text().splitlines()[:9]
    # A removed file is made again, identical.
    (tmp_path / "b" / "bench_00005.png").unlink()
    mbs.make_bench_set(tmp_path / "b", 12, seed=3, jobs=1, busi=busi, progress=False)
    assert _shas(tmp_path / "b") == _shas(out)
    other = mbs.make_bench_set(tmp_path / "c", 12, seed=4, jobs=1, busi=busi, progress=False)
    assert not set(_shas(tmp_path / "c").values()) & set(_shas(out).values())
    assert other.exists()


def test_size_cap_scales_images_and_boxes(mbs, bench_set, tmp_path):
    _, busi, _, _ = bench_set
    manifest = mbs.make_bench_set(tmp_path / "s", 6, seed=0, size_cap=64, jobs=1, busi=busi, progress=False)
    m = Manifest.load(manifest).validate(progress=False)
    for it in m:
        w, h = Image.open(it.path).size
        assert max(w, h) <= 64
        if it.box is not None:
            assert 0 <= it.box.x0 < it.box.x1 <= w and 0 <= it.box.y0 < it.box.y1 <= h


def test_transform_box_by_hand(mbs):
    # 100x80 image, box (10, 20, 30, 40); crop (5, 10, 95, 70) -> (5, 10, 25, 30) in a 90x60 crop.
    assert mbs.transform_box((10, 20, 30, 40), (5, 10, 95, 70), False, False, 1.0, (90, 60)) == (5, 10, 25, 30)
    assert mbs.transform_box((10, 20, 30, 40), (5, 10, 95, 70), True, False, 1.0, (90, 60)) == (65, 10, 85, 30)
    assert mbs.transform_box((10, 20, 30, 40), (5, 10, 95, 70), False, True, 1.0, (90, 60)) == (5, 30, 25, 50)
    # Cut by the crop: clipped; cropped away: None; scaled: rounded outward.
    assert mbs.transform_box((0, 0, 30, 40), (5, 10, 95, 70), False, False, 1.0, (90, 60)) == (0, 0, 25, 30)
    assert mbs.transform_box((0, 0, 4, 9), (5, 10, 95, 70), False, False, 1.0, (90, 60)) is None
    assert mbs.transform_box((10, 20, 30, 40), (5, 10, 95, 70), False, False, 0.5, (45, 30)) == (2, 5, 13, 15)
    assert mbs.transform_box(None, (0, 0, 9, 9), True, True, 1.0, (9, 9)) is None


def test_refuses_a_folder_of_another_set_and_bad_values(mbs, bench_set, tmp_path):
    _, busi, out, _ = bench_set
    with pytest.raises(WorkbenchError, match="seed"):
        mbs.make_bench_set(out, 12, seed=4, jobs=1, busi=busi, progress=False)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "bench_00000.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="bench_set.json"):
        mbs.make_bench_set(stray, 2, jobs=1, busi=busi, progress=False)
    with pytest.raises(ValueError, match="--n 0"):
        mbs.make_bench_set(tmp_path / "z", 0, busi=busi, progress=False)
    with pytest.raises(ValueError, match="--size-cap 8"):
        mbs.make_bench_set(tmp_path / "z", 2, size_cap=8, busi=busi, progress=False)
    assert json.loads((out / "bench_set.json").read_text())["seed"] == 3  # untouched by the refusal
    assert mbs.main(["--out", str(out), "--n", "12", "--seed", "9", "--busi", str(busi), "--no-progress"]) == 2
