"""Nested fine-tuning (clean CV on fine-tuned features) and the `finetune`, `baselines`
and `cam` commands, end to end on a BUSI slice with real EfficientNet-Lite0 weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.cli import main
from workbench.data.manifest import Manifest
from workbench.evaluation.protocol import Protocol
from workbench.features.options import ExtractOptions
from workbench.search.options import SweepOptions
from workbench.training.config import FineTuneConfig

pytestmark = pytest.mark.slow

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"
LITE = "tf_efficientnet_lite0"
CLASSES = ["benign", "malignant"]
TINY = FineTuneConfig(epochs=1, batch_size=16, image_size=64, optimizer="adam", lr=1e-3, patience=0)


@pytest.fixture(scope="module")
def slice_csv(tmp_path_factory) -> Path:
    """A CSV of 48 BUSI images: 16 + 16 training and 8 + 8 test, benign and malignant."""
    if not (BUSI / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {BUSI}")
    src = pd.read_csv(BUSI / "labels.csv")
    parts = [src[(src.split == s) & (src.label == c)].head(k) for s, k in (("train", 16), ("test", 8))
             for c in CLASSES]
    df = pd.concat(parts)
    for col in ("path", "mask_path", "roi_path"):
        df[col] = [str(BUSI / p) if isinstance(p, str) else p for p in df[col]]
    path = tmp_path_factory.mktemp("slice") / "labels.csv"
    df.to_csv(path, index=False)
    return path


def test_nested_fine_tuning_gives_clean_cv_records(slice_csv, tmp_path, monkeypatch):
    from workbench.training.nested import fine_tune_nested
    from workbench.features.extraction import extract
    from workbench.search.sweep import sweep

    monkeypatch.setenv("WORKBENCH_FINETUNED", str(tmp_path / "ft"))
    m = Manifest.load(slice_csv).select_classes(CLASSES).validate(progress=False)
    protocol = Protocol(cv=2, inner_cv=2, seed=0)
    ns = fine_tune_nested(LITE, m, TINY, protocol=protocol, progress=False)
    assert sorted(ns.members) == ["0", "1", "test"] and len({x.weights_id for x in ns.members.values()}) == 3
    train_ids = {it.id for it in m if it.split == "train"}
    for fold, member in ns.members.items():  # each member saw only its fold's training images
        seen = set(member.meta["train_ids"]) | set(member.meta["val_ids"])
        assert seen <= train_ids
    block = f"{ns.label}:avgpool"
    small = ExtractOptions(image_size=64)
    fs = extract(m, [block], cache=tmp_path / "cache", options=small, progress=False)
    assert sorted(fs.fold_blocks[block]) == ["0", "1"]
    assert not np.allclose(fs.fold_blocks[block]["0"], fs[block])  # really another network
    kw = dict(options=SweepOptions(heads=("logreg",), grids={"logreg": {}}, ensembles=False), progress=False)
    df = sweep(m, fs, out=tmp_path / "nested", protocol=protocol, **kw)
    assert "optimistic" not in df.columns or df["optimistic"].isna().all()
    # The same sweep on the whole-training-split network alone is marked optimistic.
    plain = f"{LITE}@{ns.members['test'].weights_id}:avgpool"
    fs2 = extract(m, [plain], cache=tmp_path / "cache", options=small, progress=False)
    np.testing.assert_array_equal(fs2[plain], fs[block])
    df2 = sweep(m, fs2, out=tmp_path / "plain", protocol=protocol, **kw)
    assert df2.loc[df2.fold != "test", "optimistic"].eq(True).all()
    # Same test network: the test records agree; the CV ones used other features.
    t1, t2 = (d.loc[d.fold == "test", "auc"].iloc[0] for d in (df, df2))
    assert t1 == pytest.approx(t2)
    # A sweep under another protocol than the nested set's is marked optimistic too.
    df3 = sweep(m, fs, out=tmp_path / "other", protocol=protocol.replace(seed=1), **kw)
    assert df3.loc[df3.fold != "test", "optimistic"].eq(True).any()


def test_finetune_baselines_and_cam_commands(slice_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # ./finetuned is the default store
    common = ["--manifest", str(slice_csv), "--classes", "benign,malignant"]
    sets = ["--set", "epochs=1", "--set", "image_size=64", "--set", "batch_size=16"]
    assert main(["finetune", *common, "--backbone", LITE, *sets, "--cut-remain", "--quiet"]) == 0
    out = capsys.readouterr().out
    label = next(line.split()[1] for line in out.splitlines() if line.startswith("weights:"))
    assert label.startswith(f"{LITE}@ft-") and f"--features {label}:avgpool" in out
    assert (tmp_path / "finetuned" / LITE / label.split("@")[1] / "weights.pth").is_file()
    # The same command again trains nothing and prints the same id.
    assert main(["finetune", *common, "--backbone", LITE, *sets, "--cut-remain", "--quiet"]) == 0
    assert label in capsys.readouterr().out

    run = tmp_path / "run"
    assert main(["baselines", *common, "--baselines", "lite0", "--out", str(run), "--cv", "2",
                 "--inner-cv", "2", *sets, "--quiet"]) == 0
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary.candidate) == ["CNN lite0"] and summary.n_folds.iloc[0] == 2

    assert main(["cam", "--manifest", str(slice_csv), "--network", label, "--out", str(tmp_path / "cam"),
                 "--label", "malignant", "--grid-max", "4"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "cam" / "cam.csv")
    assert len(table) == 8 and set(table.label) == {"malignant"}
    assert (tmp_path / "cam" / "cam_grid.png").stat().st_size > 0 and (tmp_path / "cam" / "cam_grid.pdf").is_file()
    assert len(list((tmp_path / "cam" / "overlays").glob("*.png"))) == 8
    assert "overlays" in out


def test_command_errors_name_the_problem(slice_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "--manifest", str(slice_csv), "--backbone", LITE, "--set", "lerning_rate=1"]) == 2
    assert "lerning_rate" in capsys.readouterr().err
    assert main(["baselines", "--manifest", str(slice_csv), "--out", str(tmp_path / "r"),
                 "--baselines", "resnet5O"]) == 2
    assert "resnet50" in capsys.readouterr().err  # the close match is suggested
    assert main(["cam", "--manifest", str(slice_csv), "--network", f"{LITE}@ft-0123456789ab",
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "ft-0123456789ab" in err and "finetuned" in err
    assert main(["cam", "--manifest", str(slice_csv), "--network", LITE, "--out", str(tmp_path / "c")]) == 2
    assert "fine-tuned network" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
