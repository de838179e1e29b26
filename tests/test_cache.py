"""Tests for the content-addressed feature cache, on its own and through extract()."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.features import CacheCorruptError, FeatureCache
from workbench.features.cache import FORMAT, CacheEntry, entry_key

from _helpers import RESNET, TINY, run  # noqa: E402


def entry_dir(root: Path, key: str) -> Path:
    return Path(root) / FORMAT / key[:2] / key


def committed(d: Path) -> list[str]:
    return sorted(p.name[: -len(".json")] for p in d.glob("shard-*.json"))


def all_files(root: Path) -> list[Path]:
    """Files of feature entries (bookkeeping files beside them aside)."""
    return sorted(p for p in (Path(root) / FORMAT).rglob("*") if p.is_file())


def rkey(i: int) -> str:
    return hashlib.sha256(f"row{i}".encode()).hexdigest()


FIELDS = {"backbone": "toy", "weights_id": "w", "tap": "t", "dim": 4, "dtype": "float32"}


def errors_of(problems):
    return [p for p in problems if p.severity == "error"]


# ---- CacheEntry / FeatureCache on their own ------------------------------------------------


def test_entry_key_is_canonical_and_sensitive():
    assert entry_key({"a": 1, "b": [1, 2]}) == entry_key({"b": [1, 2], "a": 1})
    assert entry_key({"a": 1}) != entry_key({"a": 2})
    assert entry_key({"a": 1}) != entry_key({"a": 1, "b": None})
    assert len(entry_key(FIELDS)) == 64


def test_write_read_across_shards(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    e = cache.entry(FIELDS)
    assert not (tmp_path / "c").exists()  # nothing on disk before the first write
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = -np.arange(8, dtype=np.float32).reshape(2, 4)
    s1 = e.write([rkey(0), rkey(1), rkey(2)], a)
    s2 = e.write([rkey(3), rkey(4)], b)
    assert committed(e.dir) == sorted([s1, s2])
    meta = json.loads((e.dir / "meta.json").read_text())
    assert meta["key"] == e.key and meta["fields"] == FIELDS and entry_key(meta["fields"]) == e.key
    order = [rkey(4), rkey(0), rkey(3), rkey(2)]
    np.testing.assert_array_equal(e.read(order), np.stack([b[1], a[0], b[0], a[2]]))
    assert e.missing([rkey(5), rkey(0), rkey(5), rkey(6)]) == [rkey(5), rkey(6)]
    with pytest.raises(KeyError, match="1 rows not cached"):
        e.read([rkey(0), rkey(9)])
    # A fresh handle (another process) sees the same rows, reading meta from disk.
    again = CacheEntry(cache.root, e.key)
    assert again.dim == 4 and again.name == "toy@w:t"
    assert again.stats()["rows"] == 5 and again.stats()["shards"] == 2
    assert [x.key for x in cache.entries()] == [e.key]
    assert cache.verify() == []


@pytest.mark.parametrize(
    "keys, feats, words",
    [
        ([rkey(0), rkey(1)], np.array([[1, 2, np.nan, 4], [1, 2, 3, 4]], np.float32), ["non-finite", rkey(0)[:12]]),
        ([rkey(0), rkey(1)], np.array([[1, 2, 3, 4], [1, np.inf, 3, 4]], np.float32), ["non-finite", rkey(1)[:12]]),
        ([rkey(0), rkey(1)], np.zeros((2, 5), np.float32), ["shape (2, 5)", "2 rows of dim 4"]),
        ([rkey(0), rkey(1)], np.zeros((3, 4), np.float32), ["shape (3, 4)", "2 rows of dim 4"]),
        ([rkey(0)], np.zeros(4, np.float32), ["shape (4,)", "1 rows of dim 4"]),
        ([rkey(0)], np.zeros((1, 4, 1), np.float32), ["shape (1, 4, 1)"]),
    ],
    ids=["nan", "inf", "wrong-dim", "wrong-rows", "1d", "3d"],
)
def test_write_rejects_bad_features(tmp_path, keys, feats, words):
    e = FeatureCache(tmp_path / "c").entry(FIELDS)
    with pytest.raises(ValueError) as info:
        e.write(keys, feats)
    msg = str(info.value)
    assert "toy@w:t" in msg
    for w in words:
        assert w in msg, (w, msg)
    assert not e.dir.exists()  # nothing committed, not even meta.json


def test_float16_entry_stores_float16(tmp_path):
    e = FeatureCache(tmp_path / "c").entry(dict(FIELDS, dtype="float16"))
    x = np.array([[0.1, 1.5, -2.25, 1000.0]], np.float64)
    shard = e.write([rkey(0)], x)
    assert np.load(e.dir / f"{shard}.npy").dtype == np.float16
    got = e.read([rkey(0)])
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), x, rtol=1e-3)


def test_verify_detects_altered_meta(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    e = cache.entry(FIELDS)
    e.write([rkey(0)], np.ones((1, 4), np.float32))
    meta = json.loads((e.dir / "meta.json").read_text())
    meta["fields"]["tap"] = "other"
    (e.dir / "meta.json").write_text(json.dumps(meta))
    errs = errors_of(cache.verify())
    assert len(errs) == 1 and errs[0].entry == e.key and errs[0].file == "meta.json"
    assert "do not hash" in errs[0].problem


def test_gc_compacts_shards_and_keeps_every_row(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    e = cache.entry(FIELDS)
    rng = np.random.default_rng(0)
    data = {rkey(i): rng.normal(size=4).astype(np.float32) for i in range(7)}
    keys = list(data)
    old = [e.write(keys[a:b], np.stack([data[k] for k in keys[a:b]])) for a, b in ((0, 3), (3, 5), (5, 7))]
    e.write(keys[1:3], np.stack([data[k] for k in keys[1:3]]))  # rows written twice (racing writers)
    stats = cache.gc()
    assert stats["compacted_entries"] == 1 and stats["removed_corrupt_shards"] == 0
    shards = committed(e.dir)
    assert len(shards) == 1 and shards[0] not in old
    assert sorted(p.name for p in e.dir.glob("shard-*")) == sorted(
        f"{shards[0]}{s}" for s in (".json", ".npy", ".keys.npy")
    )
    fresh = CacheEntry(cache.root, e.key)
    assert fresh.stats()["rows"] == 7
    np.testing.assert_array_equal(fresh.read(keys[::-1]), np.stack([data[k] for k in keys[::-1]]))
    assert cache.verify() == []
    # A single shard is left alone.
    assert cache.gc()["compacted_entries"] == 0 and committed(e.dir) == shards


def test_gc_removes_old_leftovers_only(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    e = cache.entry(FIELDS)
    shard = e.write([rkey(0), rkey(1)], np.ones((2, 4), np.float32))
    old_time = time.time() - 7200
    leftovers = {
        f".{shard}.npy.0123abcd.part": True,  # old: removed
        ".meta.json.4567cdef.part": True,
        "shard-20200101T000000-deadbeef0000.npy": True,  # data without commit record
        f".shard-20991231T000000-feedfeed0000.npy.89abcdef.part": False,  # fresh: a writer at work
        "shard-20991231T000000-feedfeed0000.npy": False,
    }
    for name, old in leftovers.items():
        p = e.dir / name
        p.write_bytes(b"\x93NUMPY partial")
        if old:
            os.utime(p, (old_time, old_time))
    warnings = cache.verify()
    assert errors_of(warnings) == []
    assert sorted(w.file for w in warnings) == sorted(leftovers)
    assert {w.severity for w in warnings} == {"warning"}

    stats = cache.gc(grace_seconds=3600)
    assert stats["removed_files"] == 3
    for name, old in leftovers.items():
        assert (e.dir / name).exists() != old, name
    assert sorted(w.file for w in cache.verify()) == sorted(n for n, old in leftovers.items() if not old)
    np.testing.assert_array_equal(e.read([rkey(1)]), np.ones((1, 4), np.float32))
    assert committed(e.dir) == [shard]


def test_gc_drops_entries_by_key_prefix(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    a = cache.entry(FIELDS)
    b = cache.entry(dict(FIELDS, tap="u"))
    for e in (a, b):
        e.write([rkey(0)], np.ones((1, 4), np.float32))
    assert cache.gc(drop=[a.key[:10]])["dropped_entries"] == 1
    assert [e.key for e in cache.entries()] == [b.key]


# ---- through extract -----------------------------------------------------------------------


def test_second_extract_is_a_pure_cache_hit(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    first = run(tiny_dataset.csv, [RESNET, TINY], cache)
    assert first.record["computed_rows"] == {RESNET: 8, TINY: 8}
    files = all_files(cache)
    # Loader settings are not part of the key.
    second = run(tiny_dataset.csv, [RESNET, TINY], cache, batch_size=3, num_workers=1)
    assert second.record["computed_rows"] == {RESNET: 0, TINY: 0}
    assert second.record["forward_images"] == {"resnet18@random": 0, "timm/test_efficientnet@random": 0}
    assert all_files(cache) == files  # nothing written
    for name in (RESNET, TINY):
        np.testing.assert_array_equal(second[name], first[name])
        assert second.info[name].entry_key == first.info[name].entry_key


def _perturbed_tiny_weights(path: Path, seed: int) -> Path:
    import timm

    model = timm.create_model("test_efficientnet", pretrained=False)
    g = torch.Generator().manual_seed(seed)
    sd = {
        k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() and "running_var" not in k else v)
        for k, v in model.state_dict().items()
    }
    torch.save(sd, path)
    return path


BASE = dict(image_size=32, resize="squash", input="whole", box_margin=0.1, dtype="float32")


@pytest.mark.parametrize(
    "base, changed",
    [
        ({}, {"image_size": 40}),
        ({}, {"resize": "crop"}),
        ({}, {"resize": "letterbox"}),
        ({}, {"input": "box"}),
        ({"input": "box"}, {"input": "box", "box_margin": 0.3}),
        ({}, {"dtype": "float16"}),
        ({}, {"precision": "bf16"}),
    ],
    ids=["image_size", "resize-crop", "resize-letterbox", "input-box", "box_margin", "float16", "precision"],
)
def test_any_feature_setting_changes_the_key(tiny_dataset, tmp_path, base, changed):
    cache = tmp_path / "cache"
    a = run(tiny_dataset.csv, [TINY], cache, **{**BASE, **base})
    b = run(tiny_dataset.csv, [TINY], cache, **{**BASE, **changed})
    assert b.info[TINY].entry_key != a.info[TINY].entry_key
    assert b.record["computed_rows"] == {TINY: 8} and b.record["forward_images"] == {"timm/test_efficientnet@random": 8}
    assert len(FeatureCache(cache).entries()) == 2
    if "dtype" not in changed:
        assert not np.allclose(a[TINY], b[TINY], atol=1e-6)
    # The first entry is intact and still hits.
    again = run(tiny_dataset.csv, [TINY], cache, **{**BASE, **base})
    assert again.record["computed_rows"] == {TINY: 0}
    np.testing.assert_array_equal(again[TINY], a[TINY])


def test_box_margin_does_not_matter_for_whole_images(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    a = run(tiny_dataset.csv, [TINY], cache, box_margin=0.1)
    b = run(tiny_dataset.csv, [TINY], cache, box_margin=0.5)
    assert b.info[TINY].entry_key == a.info[TINY].entry_key
    assert b.record["computed_rows"] == {TINY: 0}


def test_changed_box_recomputes_that_row_for_box_input_only(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    run(tiny_dataset.csv, [TINY], cache, input="box")
    run(tiny_dataset.csv, [TINY], cache, input="whole")
    tiny_dataset.rows[2].update(bbox_x0=1, bbox_y0=1, bbox_x1=40, bbox_y1=35)
    tiny_dataset.write_csv()
    assert run(tiny_dataset.csv, [TINY], cache, input="box").record["computed_rows"] == {TINY: 1}
    assert run(tiny_dataset.csv, [TINY], cache, input="whole").record["computed_rows"] == {TINY: 0}


def test_weights_file_bytes_are_part_of_the_key(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    w = _perturbed_tiny_weights(tmp_path / "tiny_a.pth", seed=1)
    base = run(tiny_dataset.csv, [TINY], cache)
    spec = f"timm/test_efficientnet@{w}:pre_logits"
    fw = run(tiny_dataset.csv, [spec], cache)
    assert fw.names == [spec]
    assert fw.info[spec].entry_key != base.info[TINY].entry_key
    assert fw.record["computed_rows"] == {spec: 8} and not fw.info[spec].weights_random
    assert not np.allclose(fw[spec], base[TINY], atol=1e-4)

    # The same bytes under another file name are the same entry (content addressed).
    w2 = tmp_path / "renamed" / "copy.pth"
    w2.parent.mkdir()
    shutil.copyfile(w, w2)
    spec2 = f"timm/test_efficientnet@{w2}:pre_logits"
    fw2 = run(tiny_dataset.csv, [spec2], cache)
    assert fw2.info[spec2].entry_key == fw.info[spec].entry_key
    assert fw2.record["computed_rows"] == {spec2: 0}
    np.testing.assert_array_equal(fw2[spec2], fw[spec])

    # Other weights of the same architecture: another entry.
    w3 = _perturbed_tiny_weights(tmp_path / "tiny_b.pth", seed=2)
    spec3 = f"timm/test_efficientnet@{w3}:pre_logits"
    fw3 = run(tiny_dataset.csv, [spec3], cache)
    assert fw3.info[spec3].entry_key not in (fw.info[spec].entry_key, base.info[TINY].entry_key)
    assert fw3.record["computed_rows"] == {spec3: 8}


def test_partial_hit_computes_only_new_rows(make_dataset, tmp_path):
    ds = make_dataset(5)
    cache = tmp_path / "cache"
    first = run(ds.csv, [RESNET, TINY], cache)
    new = ds.add_images(3)
    fs = run(ds.csv, [RESNET, TINY], cache)
    assert fs.record["computed_rows"] == {RESNET: 3, TINY: 3}
    assert fs.record["forward_images"] == {"resnet18@random": 3, "timm/test_efficientnet@random": 3}
    assert fs.ids == first.ids + new
    for name in (RESNET, TINY):
        np.testing.assert_array_equal(fs[name][:5], first[name])
    # Same result as one run from scratch.
    fresh = run(ds.csv, [RESNET, TINY], tmp_path / "fresh")
    for name in (RESNET, TINY):
        np.testing.assert_allclose(fs[name], fresh[name], atol=1e-5, rtol=0)


def test_duplicate_image_bytes_are_computed_once(make_dataset, tmp_path):
    ds = make_dataset(4)
    ds.add_duplicate("img001", "copy_of_1")
    ds.add_duplicate("img003", "copy_of_3")
    cache = tmp_path / "cache"
    fs = run(ds.csv, [TINY], cache)
    assert len(fs) == 6
    assert fs.record["computed_rows"] == {TINY: 4}
    assert fs.record["forward_images"] == {"timm/test_efficientnet@random": 4}
    x = fs[TINY]
    ids = fs.ids
    np.testing.assert_array_equal(x[ids.index("copy_of_1")], x[ids.index("img001")])
    np.testing.assert_array_equal(x[ids.index("copy_of_3")], x[ids.index("img003")])
    assert FeatureCache(cache).entries()[0].stats()["rows"] == 4
    # A new id for cached bytes costs nothing.
    ds.add_duplicate("img000", "copy_of_0")
    assert run(ds.csv, [TINY], cache).record["computed_rows"] == {TINY: 0}


def test_float16_storage(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    f32 = run(tiny_dataset.csv, [RESNET, TINY], cache)
    f16 = run(tiny_dataset.csv, [RESNET, TINY], cache, dtype="float16")
    for name in (RESNET, TINY):
        assert f16[name].dtype == np.float16 and f32[name].dtype == np.float32
        scale = np.abs(f32[name]).max()
        np.testing.assert_allclose(f16[name].astype(np.float32), f32[name], rtol=2e-3, atol=1e-3 * scale)
    again = run(tiny_dataset.csv, [RESNET, TINY], cache, dtype="float16")
    assert again.record["computed_rows"] == {RESNET: 0, TINY: 0} and again[TINY].dtype == np.float16
    assert f16.concat([RESNET, TINY]).dtype == np.float32


# ---- damage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_shard_is_reported_and_recomputed(tiny_dataset, tmp_path, damage):
    root = tmp_path / "cache"
    fs = run(tiny_dataset.csv, [TINY], root, batch_size=4)
    key = fs.info[TINY].entry_key
    d = entry_dir(root, key)
    shards = committed(d)
    assert len(shards) == 2
    victim, healthy = shards
    npy = d / f"{victim}.npy"
    data = bytearray(npy.read_bytes())
    if damage == "flip":
        mid = len(data) // 2
        data[mid:mid + 8] = bytes(b ^ 0x5A for b in data[mid:mid + 8])
    else:
        del data[len(data) - 100:]
    npy.write_bytes(bytes(data))
    victim_rows = len(np.load(d / f"{victim}.keys.npy"))

    cache = FeatureCache(root)
    errs = errors_of(cache.verify())
    assert len(errs) == 1, [str(p) for p in errs]
    err = errs[0]
    assert err.entry == key and err.file == victim and err.name == TINY
    assert key[:16] in str(err) and victim in str(err) and "SHA-256" in str(err)

    if damage == "truncate":
        with pytest.raises(CacheCorruptError) as info:
            run(tiny_dataset.csv, [TINY], root)
        assert victim in str(info.value) and key[:16] in str(info.value)
        assert "truncated" in str(info.value) and "--remove-corrupt" in str(info.value)

    stats = cache.gc(remove_corrupt=True)
    assert stats["removed_corrupt_shards"] == 1
    assert committed(d) == [healthy] and not npy.exists()
    assert cache.verify() == []
    again = run(tiny_dataset.csv, [TINY], root)
    assert again.record["computed_rows"] == {TINY: victim_rows}
    np.testing.assert_allclose(again[TINY], fs[TINY], atol=1e-5, rtol=0)
    assert cache.verify() == []


def test_gc_compaction_does_not_launder_an_altered_shard(tiny_dataset, tmp_path):
    """Plain ``gc()`` (compaction on, remove_corrupt off) must not turn an altered shard
    into a fresh shard with a valid checksum: the damage has to stay visible."""
    root = tmp_path / "cache"
    fs = run(tiny_dataset.csv, [TINY], root, batch_size=4)
    key = fs.info[TINY].entry_key
    d = entry_dir(root, key)
    victim = committed(d)[0]
    x = np.load(d / f"{victim}.npy")
    np.save(d / f"{victim}.npy", x * 2 + 1)  # same size, finite, but not what was committed
    cache = FeatureCache(root)
    assert [(p.entry, p.file) for p in errors_of(cache.verify())] == [(key, victim)]
    try:
        cache.gc()
    except CacheCorruptError:
        pass  # refusing to compact damaged entries is fine too
    assert [(p.entry, p.file) for p in errors_of(cache.verify())] == [(key, victim)], (
        "gc() compacted the altered rows into a new shard with a fresh SHA-256: the damage is hidden"
    )
    # Reads check the SHA-256 too: the altered rows are refused, never served.
    with pytest.raises(CacheCorruptError, match=victim):
        run(tiny_dataset.csv, [TINY], root)


# ---- killed and concurrent writers -----------------------------------------------------------

_WRITER = r"""
import os, signal, sys, time
from pathlib import Path
import workbench.features.cache as C
from workbench.features import ExtractOptions, extract

csv, cache, mode, feature = sys.argv[1:5]
if mode == "after_commit":
    # Die right after the 2nd shard is committed.
    orig, n = C.CacheEntry.write, [0]
    def write(self, keys, feats):
        out = orig(self, keys, feats)
        n[0] += 1
        if n[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    C.CacheEntry.write = write
elif mode == "mid_write":
    # Die inside the 3rd write: its features file is in place, its keys and commit record are not.
    orig, n = C._atomic_save_npy, [0]
    def save(path, array):
        out = orig(path, array)
        n[0] += 1
        if n[0] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    C._atomic_save_npy = save
elif mode == "concurrent":
    Path(cache + f".ready-{os.getpid()}").touch()
    deadline = time.time() + 120
    while not Path(cache + ".go").exists() and time.time() < deadline:
        time.sleep(0.01)
fs = extract(csv, [feature], cache=cache, progress=False,
             options=ExtractOptions(image_size=32, batch_size=2, num_workers=0, device="cpu"))
print("DONE", fs.record["computed_rows"][feature])
"""


def _writer(csv: Path, cache: Path, mode: str, feature: str = TINY) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(csv), str(cache), mode, feature],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


@pytest.mark.parametrize("mode", ["after_commit", "mid_write"])
def test_killed_extraction_resumes(tiny_dataset, tmp_path, mode):
    root = tmp_path / "cache"
    proc = _writer(tiny_dataset.csv, root, mode)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out, err[-3000:])
    assert "DONE" not in out

    cache = FeatureCache(root)
    (entry,) = cache.entries()
    written = entry.stats()["rows"]
    assert written == 4  # two committed shards of batch_size 2
    problems = cache.verify()
    assert errors_of(problems) == [], [str(p) for p in problems]
    if mode == "mid_write":
        assert [p.problem for p in problems] == ["shard without commit record (interrupted write)"]

    resumed = run(tiny_dataset.csv, [TINY], root, batch_size=2)
    assert resumed.record["computed_rows"] == {TINY: 8 - written}
    assert resumed.record["forward_images"] == {"timm/test_efficientnet@random": 8 - written}
    fresh = run(tiny_dataset.csv, [TINY], tmp_path / "fresh")
    np.testing.assert_allclose(resumed[TINY], fresh[TINY], atol=1e-5, rtol=0)
    assert errors_of(cache.verify()) == []
    # The leftovers of the killed writer go with gc once past the grace period.
    cache.gc(grace_seconds=0)
    assert cache.verify() == []
    np.testing.assert_allclose(run(tiny_dataset.csv, [TINY], root)[TINY], fresh[TINY], atol=1e-5, rtol=0)


def test_two_concurrent_writers(make_dataset, tmp_path):
    ds = make_dataset(12)
    root = tmp_path / "cache"
    procs = [_writer(ds.csv, root, "concurrent") for _ in range(2)]
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("cache.ready-*"))) < 2:
            assert time.time() < deadline, "writers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.05)
        (tmp_path / "cache.go").touch()  # both start extracting at once
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
        assert "DONE" in out

    cache = FeatureCache(root)
    problems = cache.verify()
    assert errors_of(problems) == [], [str(p) for p in problems]
    (entry,) = cache.entries()
    assert entry.stats()["rows"] == 12
    shared = run(ds.csv, [TINY], root)
    assert shared.record["computed_rows"] == {TINY: 0}
    single = run(ds.csv, [TINY], tmp_path / "single")
    np.testing.assert_allclose(shared[TINY], single[TINY], atol=1e-5, rtol=0)
    cache.gc()
    assert cache.verify() == []
    np.testing.assert_allclose(run(ds.csv, [TINY], root)[TINY], single[TINY], atol=1e-5, rtol=0)
