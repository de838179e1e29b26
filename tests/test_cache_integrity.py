"""Storage integrity of the feature cache and extraction (issue 12, items 2, 3, 4, 5, 7).

Damaged shards are errors on read, not data; an image rewritten during extraction is
refused; descriptors stay bounded however many shards there are and ``verify`` tells
"cannot open" from "damaged"; OS errors are one line with exit 2 and leave nothing
half-written; run records get unique names.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import workbench.features.cache as C
from workbench.cli import main
from workbench.data.images import ImageChangedError
from workbench.features import CacheCorruptError, FeatureCache
from workbench.features.cache import FORMAT

from _helpers import TINY, run  # noqa: E402

FIELDS = {"backbone": "toy", "weights_id": "w", "tap": "t", "dim": 4, "dtype": "float32"}
CLI_FAST = ["--image-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--quiet"]


def rkey(i: int) -> str:
    return hashlib.sha256(f"row{i}".encode()).hexdigest()


def entry_dir(root: Path, key: str) -> Path:
    return Path(root) / FORMAT / key[:2] / key


def committed(d: Path) -> list[str]:
    return sorted(p.name[: -len(".json")] for p in d.glob("shard-*.json"))


def severities(problems) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in problems:
        out[p.severity] = out.get(p.severity, 0) + 1
    return out


def cli_extract(csv: Path, cache: Path, *extra: str) -> list[str]:
    return ["extract", "--manifest", str(csv), "--features", TINY, "--cache", str(cache), *CLI_FAST, *extra]


# ---- item 2: reads verify what they use -----------------------------------------------------


def _zero_after_header(npy: Path) -> None:
    """The damage of the issue: every byte after the .npy header set to zero, size kept."""
    with open(npy, "r+b") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        start = f.tell()
        size = f.seek(0, os.SEEK_END)
        f.seek(start)
        f.write(b"\0" * (size - start))


def test_zeroed_shard_is_an_error_naming_it_not_zero_features(tiny_dataset, tmp_path, capsys):
    root = tmp_path / "cache"
    fs = run(tiny_dataset.csv, [TINY], root)
    d = entry_dir(root, fs.info[TINY].entry_key)
    victim = committed(d)[0]
    _zero_after_header(d / f"{victim}.npy")

    with pytest.raises(CacheCorruptError) as info:
        run(tiny_dataset.csv, [TINY], root)
    assert victim in str(info.value) and "SHA-256" in str(info.value)

    assert main(cli_extract(tiny_dataset.csv, root)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and victim in err[0] and "Traceback" not in err[0]


def test_reads_hash_once_per_process_and_again_after_a_rewrite(tmp_path, monkeypatch):
    e = FeatureCache(tmp_path / "c").entry(FIELDS)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    shard = e.write([rkey(0), rkey(1)], x)
    calls = []
    real = C._sha256_of
    monkeypatch.setattr(C, "_sha256_of", lambda f: calls.append(f.name) or real(f))
    C._VERIFIED.clear()
    for _ in range(3):
        np.testing.assert_array_equal(e.read([rkey(1), rkey(0)]), x[::-1])
    assert len(calls) == 2, calls  # features + keys, once each: the memo spares the rest

    # Same size, same header, other bytes: the rewrite changes the file's identity, so it is hashed again.
    npy = e.dir / f"{shard}.npy"
    data = bytearray(npy.read_bytes())
    data[-4:] = np.float32(99).tobytes()
    npy.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match=shard):
        e.read([rkey(0)])


# ---- item 3: the bytes decoded are the bytes hashed ---------------------------------------


@pytest.mark.parametrize("workers", [0, 1])
def test_image_rewritten_after_validation_is_refused(tiny_dataset, tmp_path, monkeypatch, workers):
    from workbench.data.manifest import Manifest

    root = tmp_path / "cache"
    victim = tiny_dataset.path_of(tiny_dataset.ids[2])
    original = victim.read_bytes()
    real_validate = Manifest.validate

    def validate_then_rewrite(self, *a, **kw):
        out = real_validate(self, *a, **kw)
        shutil.copyfile(tiny_dataset.path_of(tiny_dataset.ids[5]), victim)  # other pixels, same path
        return out

    monkeypatch.setattr(Manifest, "validate", validate_then_rewrite)
    with pytest.raises(ImageChangedError) as info:
        run(tiny_dataset.csv, [TINY], root, num_workers=workers)
    assert info.value.path == victim and "changed since it was validated" in str(info.value)
    monkeypatch.undo()

    # Nothing of the new content went in under the old digest: every cached row is right.
    cache = FeatureCache(root)
    assert cache.verify() == []
    victim.write_bytes(original)
    fresh = run(tiny_dataset.csv, [TINY], tmp_path / "fresh")
    resumed = run(tiny_dataset.csv, [TINY], root)
    np.testing.assert_allclose(resumed[TINY], fresh[TINY], atol=1e-5, rtol=0)


# ---- item 4: bounded descriptors; "cannot open" is not "damaged" ------------------------------

@pytest.fixture
def few_descriptors():
    """Lower this process's descriptor limit to what it has open plus ``n``; restored after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower(n: int) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + n, hard))

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to count open descriptors")
    try:
        yield lower
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_many_shards_under_a_low_descriptor_limit(tmp_path, monkeypatch, few_descriptors):
    n = 300  # each shard mapped for good would need 300 descriptors; the limit gives 40
    cache = FeatureCache(tmp_path / "c")
    e = cache.entry(FIELDS)
    keys = [f"{i:064x}" for i in range(n)]
    with monkeypatch.context() as m:
        m.setattr(C.os, "fsync", lambda fd: None)  # durability is not under test here; speed is
        for i, k in enumerate(keys):
            e.write([k], np.full((1, 4), i, np.float32))
    few_descriptors(40)
    assert cache.verify() == []
    x = e.read(keys[::-1])
    np.testing.assert_array_equal(x[:, 0], np.arange(n)[::-1])
    stats = cache.gc(remove_corrupt=True, compact=False)
    assert stats["removed_corrupt_shards"] == 0 and len(e._committed()) == n
    assert len(os.listdir("/proc/self/fd")) < 40 + 10


def test_unopenable_shard_is_unreadable_not_corrupt_and_gc_keeps_it(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "c")
    e = cache.entry(FIELDS)
    shards = [e.write([rkey(i)], np.full((1, 4), i, np.float32)) for i in range(3)]
    victim = e.dir / f"{shards[1]}.npy"
    real_open = open

    def emfile_open(file, *a, **kw):
        if Path(file) == victim:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr("builtins.open", emfile_open)
    problems = cache.verify()
    assert severities(problems) == {"unreadable": 1}
    (p,) = problems
    assert p.file == shards[1] and "Too many open files" in p.problem and "not judged damaged" in p.problem
    stats = cache.gc(remove_corrupt=True)
    assert stats["removed_corrupt_shards"] == 0 and stats["unreadable_entries_left"] == 1
    assert stats["compacted_entries"] == 0
    assert committed(e.dir) == sorted(shards) and victim.exists()
    with pytest.raises(OSError) as info:  # a read names the file and the cause; it is not "corrupt"
        e.read([rkey(1)])
    assert not isinstance(info.value, CacheCorruptError) and info.value.filename == str(victim)
    monkeypatch.undo()
    assert cache.verify() == []
    np.testing.assert_array_equal(e.read([rkey(1)]), np.full((1, 4), 1, np.float32))


def test_cli_verify_and_gc_report_unreadable(tmp_path, monkeypatch, capsys):
    cache = FeatureCache(tmp_path / "c")
    e = cache.entry(FIELDS)
    shard = e.write([rkey(0)], np.ones((1, 4), np.float32))
    e.write([rkey(1)], np.ones((1, 4), np.float32))
    victim = e.dir / f"{shard}.keys.npy"
    real_open = open

    def eacces_open(file, *a, **kw):
        if Path(file) == victim:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr("builtins.open", eacces_open)
    assert main(["cache", "--cache", str(cache.root), "verify"]) == 1
    out = capsys.readouterr().out
    assert "UNREADABLE" in out and "0 corrupt, 1 unreadable" in out
    assert main(["cache", "--cache", str(cache.root), "gc", "--remove-corrupt"]) == 1
    assert "removed corrupt shards: 0" in capsys.readouterr().out
    assert len(committed(e.dir)) == 2


# ---- item 5: OS errors are one line, exit 2, nothing half-written -----------------------------


def test_cache_path_that_is_a_file(tiny_dataset, tmp_path, capsys):
    bogus = tmp_path / "cache"
    bogus.write_text("not a folder")
    assert main(cli_extract(tiny_dataset.csv, bogus)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"workbench extract: error: {bogus}: Not a directory"]
    assert main(["cache", "--cache", str(bogus), "verify"]) == 2
    assert capsys.readouterr().err.strip() == f"workbench cache: error: {bogus}: Not a directory"
    assert bogus.read_text() == "not a folder"


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_full_disk_leaves_nothing_half_written_and_recovers(tmp_path, monkeypatch, where):
    e = FeatureCache(tmp_path / "c").entry(FIELDS)
    first = e.write([rkey(0)], np.zeros((1, 4), np.float32))
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as the OS gives it: no file name
    if where == "write":
        real_open = open
        monkeypatch.setattr("builtins.open", lambda file, *a, **kw: _FullFile(real_open(file, *a, **kw))
                            if ".keys.npy." in str(file) else real_open(file, *a, **kw))
    elif where == "fsync":
        monkeypatch.setattr(C.os, "fsync", lambda fd: (_ for _ in ()).throw(enospc))
    else:
        real = os.replace
        monkeypatch.setattr(C.os, "replace", lambda a, b: real(a, b) if str(b).endswith(".npy") and ".keys" not in str(b)
                            else (_ for _ in ()).throw(enospc))
    with pytest.raises(OSError) as info:
        e.write([rkey(1)], np.ones((1, 4), np.float32))
    assert info.value.errno == errno.ENOSPC and info.value.filename and str(e.dir) in info.value.filename
    monkeypatch.undo()
    names = sorted(p.name for p in e.dir.iterdir())
    assert names == sorted(["meta.json", *(f"{first}{s}" for s in (".json", ".npy", ".keys.npy"))]), names
    assert FeatureCache(tmp_path / "c").verify() == []
    e.write([rkey(1)], np.ones((1, 4), np.float32))  # space freed: writing works again
    np.testing.assert_array_equal(e.read([rkey(1), rkey(0)]), [[1] * 4, [0] * 4])


class _FullFile:
    """A file on a full disk: every write fails with ENOSPC (and no file name, as the OS says it)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_numpy_short_write_is_named_a_full_disk(tmp_path):
    # numpy's ndarray.tofile on a full disk says only this, with no errno and no file.
    e = C._with_path(OSError("2048 requested and 992 written"), tmp_path / "x.npy")
    assert e.errno == errno.ENOSPC and e.filename == str(tmp_path / "x.npy") and e.strerror == os.strerror(errno.ENOSPC)


def test_cli_full_disk_during_extract_is_one_line(tiny_dataset, tmp_path, monkeypatch, capsys):
    root = tmp_path / "cache"
    monkeypatch.setattr(C.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    assert main(cli_extract(tiny_dataset.csv, root)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("workbench extract: error: ") and str(root) in err[0]
    assert err[0].endswith(": No space left on device")
    monkeypatch.undo()
    assert not list(root.rglob("*.part")) and not list(root.rglob("shard-*"))
    assert main(cli_extract(tiny_dataset.csv, root)) == 0


def _can_mount_tmpfs(where: Path) -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux tmpfs"
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs (full-disk and read-only checks run on a real file system)"
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode:
        return f"cannot mount tmpfs: {r.stderr.strip()}"
    return None


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB tmpfs (root only; skips, saying why, elsewhere)."""
    mnt = tmp_path / "mnt"
    why = _can_mount_tmpfs(mnt)
    if why:
        pytest.skip(why)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_and_read_only_file_system(tiny_dataset, tmp_path, small_fs, capsys):
    root = small_fs / "cache"
    filler = small_fs / "filler"
    with open(filler, "wb") as f:  # leave about 12 KiB: meta.json and a shard's first file fit, no more
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        f.write(b"\0" * max(0, free - 12 * 1024))
    assert main(cli_extract(tiny_dataset.csv, root)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("No space left on device") and str(small_fs) in err[0], err
    assert not list(small_fs.rglob("*.part"))
    assert not [p for p in FeatureCache(root).verify() if p.severity != "warning" or "meta" not in p.file]

    filler.unlink()  # space freed: the same command finishes, with the features a clean run gives
    assert main(cli_extract(tiny_dataset.csv, root, "--save", str(tmp_path / "a.npz"))) == 0
    run(tiny_dataset.csv, [TINY], tmp_path / "fresh")
    assert FeatureCache(root).verify() == []
    fresh = run(tiny_dataset.csv, [TINY], tmp_path / "fresh")
    np.testing.assert_allclose(np.load(tmp_path / "a.npz")[TINY], fresh[TINY], atol=1e-5, rtol=0)

    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    capsys.readouterr()
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert main(cli_extract(tiny_dataset.csv, root, "--image-size", "40")) == 2  # new rows to write
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("Read-only file system") and str(root) in err[0], err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


# ---- item 7: unique run record names ---------------------------------------------------------


def test_records_started_in_the_same_second_do_not_overwrite(tiny_dataset, tmp_path, monkeypatch):
    import workbench.core.provenance as R

    root = tmp_path / "cache"
    assert main(cli_extract(tiny_dataset.csv, root)) == 0
    monkeypatch.setattr(R.time, "strftime", lambda fmt, *a: "20250101T000000")  # the same second for all
    for _ in range(3):
        assert main(cli_extract(tiny_dataset.csv, root)) == 0
    recs = sorted((root / "records").glob("extract-20250101T000000-*.json"))
    assert len(recs) == 3
    assert all(json.loads(p.read_text())["kind"] == "extract" for p in recs)
    assert not list((root / "records").glob(".*.part"))


def test_record_write_failure_leaves_no_half_record(tmp_path, monkeypatch):
    import workbench.core.io as R  # the atomic JSON writer of run records

    target = tmp_path / "records" / "extract.json"
    monkeypatch.setattr(R.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError) as info:
        R.write_json_atomic(target, {"kind": "extract"})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(target.parent.iterdir()) == []
    monkeypatch.undo()
    R.write_json_atomic(target, {"kind": "extract"})
    assert json.loads(target.read_text()) == {"kind": "extract"}
