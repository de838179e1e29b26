"""No code runs from stored files: crafted checkpoints and weights are refused before
their payload runs, resume stays exact with data-only checkpoints, and a scan of the
package fails when an unsafe load (pickle, eval, shell strings, ...) is added.

A tiny random timm network on 32-px images: a few seconds in all.
"""
from __future__ import annotations

import ast
import csv
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.backbones.loading import CheckpointMismatchError, UnsafeCheckpointError, load_backbone
from workbench.backbones.registry import get_backbone
from workbench.backbones.weights import resolve_weights
from workbench.training.finetune import CHECKPOINT_FORMAT, FineTuneConfig, fine_tune, finetune_id
from workbench.data.manifest import Item, Manifest

TINY = "timm/test_efficientnet"
CLASSES = ["benign", "malignant"]
CFG = FineTuneConfig(epochs=3, batch_size=8, image_size=32, optimizer="adam", lr=1e-2, patience=0)
PACKAGE = Path(__file__).resolve().parents[1] / "workbench"


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: the stand-in for any code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> tuple[list[Item], list[Item]]:
    root = tmp_path_factory.mktemp("safe")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"im{i:02d}.png")
        rows.append({"id": f"im{i:02d}", "path": f"im{i:02d}.png", "label": CLASSES[i % 2], "split": "train"})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    its = list(Manifest.load(root / "labels.csv").validate(progress=False))
    return its[:10], its[10:]


def _fine_tune(train, val, root, config=CFG, **kw):
    return fine_tune(TINY, train, val, CLASSES, config, weights="random", root=root, progress=False,
                     device="cpu", **kw)


def test_the_payload_is_live(tmp_path):
    """The crafted file really runs code under a full unpickle (so the refusals below mean something)."""
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save({"model": _Payload(marker)}, buf)
    buf.seek(0)
    torch.load(buf, weights_only=False)  # this process wrote these bytes a line above
    assert marker.is_dir()


def test_crafted_checkpoint_is_refused_without_running(items, tmp_path):
    train, val = items
    wid = finetune_id(TINY, resolve_weights(get_backbone(TINY), "random"), train, val, CLASSES, CFG)
    folder = tmp_path / "store" / TINY.replace("/", "__") / wid  # the id is predictable
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"backbone": TINY, "weights_id": wid, "format": CHECKPOINT_FORMAT, "model": _Payload(marker)},
               folder / "checkpoint.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint\.pt.*mkdir"):
        _fine_tune(train, val, tmp_path / "store")
    assert not marker.exists()
    assert (folder / "checkpoint.pt").is_file()  # left for the user to inspect
    assert not (folder / "weights.pth").exists()


def test_crafted_finetuned_weights_are_refused_without_running(items, tmp_path):
    """A copied store folder with a finished-looking network: extracting from it runs nothing."""
    marker = tmp_path / "pwned"
    folder = tmp_path / "store" / "resnet18" / "ft-0123456789ab"
    folder.mkdir(parents=True)
    torch.save({"conv1.weight": _Payload(marker)}, folder / "weights.pth")
    (folder / "meta.json").write_text(json.dumps({"backbone": "resnet18", "classes": CLASSES}))
    from workbench.backbones.finetuned import using_root

    with using_root(tmp_path / "store"), pytest.raises(UnsafeCheckpointError, match=r"weights\.pth"):
        load_backbone("resnet18", "ft-0123456789ab")
    # A weights file given by path: the same.
    with pytest.raises(UnsafeCheckpointError, match=r"weights\.pth"):
        load_backbone("resnet18", str(folder / "weights.pth"))
    assert not marker.exists()


def test_checkpoint_of_an_older_format_is_refused_clearly(items, tmp_path):
    train, val = items
    wid = finetune_id(TINY, resolve_weights(get_backbone(TINY), "random"), train, val, CLASSES, CFG)
    folder = tmp_path / TINY.replace("/", "__") / wid
    folder.mkdir(parents=True)
    # Format 1 stored numpy's RNG state as an array: not plain data, so not loadable safely.
    torch.save({"backbone": TINY, "weights_id": wid, "rng": {"numpy": np.random.get_state()}},
               folder / "checkpoint.pt")
    with pytest.raises(UnsafeCheckpointError, match=str(folder / "checkpoint.pt")):
        _fine_tune(train, val, tmp_path)
    torch.save({"backbone": TINY, "weights_id": wid, "epoch": 1}, folder / "checkpoint.pt")
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint format none.*Move it away"):
        _fine_tune(train, val, tmp_path)


class _Stop(Exception):
    pass


def test_resume_is_exact_with_data_only_checkpoints(items, tmp_path, caplog):
    train, val = items
    config = CFG.replace(augment=True)  # draws from the random states the checkpoint must restore
    whole = _fine_tune(train, val, tmp_path / "whole", config)

    seen: dict = {}

    def stop(epoch: int, row: dict) -> None:
        if epoch == 2:
            path = next((tmp_path / "killed").rglob("checkpoint.pt"))
            seen.update(torch.load(path, map_location="cpu", weights_only=True))
            raise _Stop

    with pytest.raises(_Stop):
        _fine_tune(train, val, tmp_path / "killed", config, on_epoch=stop)
    assert seen["format"] == CHECKPOINT_FORMAT and seen["epoch"] == 2
    rng = seen["rng"]
    assert rng["torch"].dtype == rng["loader"].dtype == rng["numpy"]["key"].dtype == torch.uint8
    assert isinstance(rng["python"][1], list) and all(isinstance(v, int) for v in rng["python"][1])
    # Scramble every global random state: resuming must restore them, not inherit them.
    torch.manual_seed(12345)
    np.random.seed(12345)
    import random

    random.seed(12345)
    with caplog.at_level(logging.INFO, logger="workbench"):
        resumed = _fine_tune(train, val, tmp_path / "killed", config)
    logs = [r.getMessage() for r in caplog.records]
    assert any("resuming" in s and "after epoch 2" in s for s in logs), logs

    def numbers(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert numbers(resumed.history) == numbers(whole.history)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- the scan --------------------------------------------------------------------------

#: Modules whose load functions run code from the bytes they read.
_PICKLING = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "jsonpickle"}
#: Attributes of those modules that are harmless (exception classes for ``except``).
_HARMLESS_ATTRS = {"UnpicklingError", "PickleError", "PicklingError", "HIGHEST_PROTOCOL", "parallel_config",
                   "Parallel", "delayed", "cpu_count", "parallel_backend", "register_parallel_backend"}
#: (file relative to the package, rule) pairs that are allowed, each with its reason.
#: Empty on purpose: every load in the package is data-only today. Add an entry only
#: for a file this process itself writes and reads back, and say so here.
ALLOWED: dict[tuple[str, str], str] = {}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str) -> list[tuple[int, str]]:
    """``(line, rule)`` for every construct that could run code from stored data."""
    tree = ast.parse(source)
    alias: dict[str, str] = {}  # local name -> dotted origin ("np" -> "numpy", "load" -> "torch.load")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"

    def full(node: ast.AST) -> str:
        name = _dotted(node)
        head, _, rest = name.partition(".")
        return (alias.get(head, head) + ("." + rest if rest else "")) if name else ""

    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Name)) and not isinstance(getattr(node, "ctx", None), ast.Store):
            name = full(node)
            mod, _, attr = name.rpartition(".")
            if mod in _PICKLING and attr not in _HARMLESS_ATTRS:
                found.append((node.lineno, f"{mod}.{attr}"))
        if not isinstance(node, ast.Call):
            continue
        name = full(node.func)
        if name in ("eval", "exec", "compile", "builtins.eval", "builtins.exec"):
            found.append((node.lineno, f"{name}()"))
        elif name.endswith("read_pickle") or name.endswith("jit.load") or name == "torch.package.PackageImporter":
            found.append((node.lineno, name))
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
            found.append((node.lineno, name))
        elif name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
            found.append((node.lineno, name))
        elif name == "torch.load" and not _is_true(_kw(node, "weights_only")):
            found.append((node.lineno, "torch.load without weights_only=True"))
        if _is_true(_kw(node, "allow_pickle")):
            found.append((node.lineno, "allow_pickle=True"))
        if _is_true(_kw(node, "shell")):
            found.append((node.lineno, "shell=True"))
    return sorted(set(found))


def test_scan_finds_each_unsafe_construct():
    bad = """
import pickle, joblib, yaml, os, subprocess
import numpy as np
import pandas as pd
from torch import load
import torch
pickle.loads(b"")
joblib.load("x")
np.load("x.npy", allow_pickle=True)
eval("1")
yaml.load("a: 1")
subprocess.run("ls", shell=True)
os.system("ls")
torch.load("x.pt")
load("x.pt", weights_only=False)
pd.read_pickle("x")
torch.jit.load("m.pt")
"""
    rules = [r for _, r in unsafe_loads(bad)]
    for expected in ("pickle.loads", "joblib.load", "allow_pickle=True", "eval()", "yaml.load", "shell=True",
                     "os.system", "torch.load without weights_only=True", "pandas.read_pickle", "torch.jit.load"):
        assert expected in rules, (expected, rules)
    assert rules.count("torch.load without weights_only=True") == 2
    fine = """
import pickle, json, yaml, joblib
import numpy as np
import torch
try:
    pass
except pickle.UnpicklingError:
    pass
torch.load("x.pt", map_location="cpu", weights_only=True)
np.load("x.npy", allow_pickle=False)
yaml.safe_load("a: 1")
json.loads("{}")
model.eval()
with joblib.parallel_config(backend="threading"):
    pass
"""
    assert unsafe_loads(fine) == []


def test_no_unsafe_load_in_the_package():
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for line, rule in unsafe_loads(path.read_text()):
            if (rel, rule) not in ALLOWED:
                hits.append(f"workbench/{rel}:{line}: {rule}")
    assert not hits, ("loads that could run code from a stored file (make them data-only, or justify "
                      "an entry in ALLOWED):\n" + "\n".join(hits))


def test_damaged_meta_json_is_named_not_a_json_traceback(tmp_path):
    """A cut-off meta.json beside finished weights (a kill mid-write, before the write
    became atomic) is an error naming the file and what to do."""
    from workbench.backbones.finetuned import FineTunedCorruptError, read_meta

    folder = tmp_path / "resnet18" / "ft-0123456789ab"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text('{"history": [1, 2], "best')
    with pytest.raises(FineTunedCorruptError, match=r"meta\.json is damaged.*delete"):
        read_meta(folder)
    (folder / "meta.json").write_text("[1, 2]")
    with pytest.raises(FineTunedCorruptError, match="not a fine-tune"):
        read_meta(folder)
