"""Bundle files without networks: digests, the no-pickle loader, refusals that name the file."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from workbench.bundle.files import BundleError, load_fitted, save_fitted, verify_bundle, write_index, write_json


class Sneaky:  # a type no bundle may construct
    def __init__(self):
        self.payload = "rm -rf /"


def _bundle(tmp_path):
    root = tmp_path / "b"
    (root / "heads").mkdir(parents=True)
    X = np.random.RandomState(0).randn(30, 3)
    save_fitted(LogisticRegression().fit(X, X[:, 0] > 0), root / "heads" / "0.skops")
    write_json(root / "model.json", {"name": "x"})
    write_index(root, {"candidate": "x"})
    return root


def test_a_clean_bundle_verifies_and_its_head_loads(tmp_path):
    root = _bundle(tmp_path)
    index = verify_bundle(root)
    assert set(index["files"]) == {"model.json", "heads/0.skops"}
    est = load_fitted(root / "heads" / "0.skops")
    assert isinstance(est, LogisticRegression)


def test_a_changed_file_is_refused_by_name(tmp_path):
    root = _bundle(tmp_path)
    f = root / "heads" / "0.skops"
    data = bytearray(f.read_bytes())
    data[-10] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"heads/0\.skops: does not match the SHA-256"):
        verify_bundle(root)


def test_a_missing_file_or_index_is_refused(tmp_path):
    root = _bundle(tmp_path)
    (root / "heads" / "0.skops").unlink()
    with pytest.raises(BundleError, match=r"0\.skops: missing"):
        verify_bundle(root)
    (root / "bundle.json").unlink()
    with pytest.raises(BundleError, match="bundle.json: missing"):
        verify_bundle(root)
    with pytest.raises(BundleError, match="not a folder"):
        verify_bundle(tmp_path / "nope")


def test_a_path_leaving_the_bundle_is_refused(tmp_path):
    root = _bundle(tmp_path)
    (tmp_path / "outside.txt").write_text("x")
    import json

    index = json.loads((root / "bundle.json").read_text())
    index["files"]["../outside.txt"] = "0" * 64
    (root / "bundle.json").write_text(json.dumps(index))
    with pytest.raises(BundleError, match="outside the bundle"):
        verify_bundle(root)


def test_untrusted_types_and_pickles_are_refused_before_anything_is_built(tmp_path):
    bad = tmp_path / "sneaky.skops"
    bad.write_bytes(sio.dumps(Sneaky()))
    with pytest.raises(BundleError, match=r"sneaky\.skops: refused: .*untrusted types .*Sneaky"):
        load_fitted(bad)
    # A user's own head type is loadable when the caller trusts it by name.
    assert isinstance(load_fitted(bad, trusted=[f"{__name__}.Sneaky"]), Sneaky)
    pk = tmp_path / "pickled.skops"
    pk.write_bytes(pickle.dumps(Sneaky()))
    with pytest.raises(BundleError, match=r"pickled\.skops: not a skops file.*never hold pickles"):
        load_fitted(pk)
