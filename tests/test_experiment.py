"""`workbench run` end to end on a BUSI slice, twice; `workbench report`; bad configs."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from workbench.cli import main
from workbench.experiment import ExperimentConfig

pytestmark = pytest.mark.slow

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"
CONFIG = """
name = "slice"
manifest = "{csv}"
classes = ["benign", "malignant"]
positive = "malignant"
out = "run"
cache = "cache"

[protocol]
cv = 2
inner_cv = 2
seed = 0
top_k = 2

[features]
specs = ["tf_efficientnet_lite0:avgpool"]
finetuned = ["tf_efficientnet_lite0"]
image_size = 64

[finetune]
epochs = 1
image_size = 64
optimizer = "adam"
lr = 1e-3

[sweep]
heads = ["svm-rbf", "logreg"]
grids = {{svm-rbf = {{C = [1.0]}}, logreg = {{}}}}

[baselines]
names = ["lite0"]
set = {{epochs = 1, image_size = 64}}

[report]
publish = "published"
"""


@pytest.fixture(scope="module")
def slice_csv(tmp_path_factory) -> Path:
    if not (BUSI / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {BUSI}")
    src = pd.read_csv(BUSI / "labels.csv")
    df = pd.concat([src[(src.split == s) & (src.label == c)].head(k) for s, k in (("train", 14), ("test", 8))
                    for c in ("benign", "malignant")])
    for col in ("path", "mask_path", "roi_path"):
        df[col] = [str(BUSI / p) if isinstance(p, str) else p for p in df[col]]
    path = tmp_path_factory.mktemp("slice") / "labels.csv"
    df.to_csv(path, index=False)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in (".md", ".tex", ".csv", ".json", ".png", ".pdf")}


def test_run_twice_computes_nothing_and_writes_identical_tables(slice_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "exp.toml"
    cfg.write_text(CONFIG.format(csv=slice_csv))
    assert main(["run", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Selected:" in out
    report = tmp_path / "run" / "report"
    first = _files(report)
    assert {"report.md", "provenance.json", "tables/comparison.md", "tables/comparison.tex"} <= set(first)
    assert any(k.startswith("figures/roc") and k.endswith(".pdf") for k in first)
    assert "figures/gradcam/cam_grid.png" in first and "figures/gradcam/cam.csv" in first
    records = (tmp_path / "run" / "records.jsonl").read_text()
    ft = sorted(p.name for p in (tmp_path / "finetuned").rglob("weights.pth"))
    assert "CNN lite0" in records and "@ft-" in records
    # Second run: nothing new is computed, the report is byte for byte the same.
    assert main(["run", str(cfg), "--quiet"]) == 0
    assert (tmp_path / "run" / "records.jsonl").read_text() == records
    assert sorted(p.name for p in (tmp_path / "finetuned").rglob("weights.pth")) == ft
    assert _files(report) == first
    assert _files(tmp_path / "published") == first
    # The report rebuilt from the records alone: identical too.
    assert main(["report", str(tmp_path / "run")]) == 0
    assert _files(report) == first
    # Grad-CAM maps are the run's (saved under gradcam/), the report only lays them out:
    # without them it says how to get them, and a run computes them again, to the same bytes.
    (cam,) = (tmp_path / "run" / "gradcam").glob("*.npz")
    cam.unlink()
    assert main(["report", str(tmp_path / "run")]) == 0
    text = (report / "report.md").read_text()
    assert "Grad-CAM grid skipped: no saved maps of" in text and "rerun `workbench run`" in text
    assert "cam_grid.png" not in text
    assert main(["run", str(cfg), "--quiet"]) == 0
    assert cam.is_file() and _files(report) == first


@pytest.mark.parametrize("patch, message", [
    ({"specs = [\"tf_efficientnet_lite0:avgpool\"]": "specs = [\"efficientnet_lite9:avgpool\"]"}, "efficientnet_lite9"),
    ({"heads = [\"svm-rbf\", \"logreg\"]": "heads = [\"svm-rbf\", \"svm-poly\"]"}, "svm-poly"),
    ({"classes = [\"benign\", \"malignant\"]": "classes = [\"benign\", \"cancer\"]"}, "cancer"),
    ({"names = [\"lite0\"]": "names = [\"lite9\"]"}, "lite9"),
    ({"top_k = 2": "top_k = 2\ntopk = 3"}, "topk"),
])
def test_bad_configs_fail_before_any_work(slice_csv, tmp_path, monkeypatch, capsys, patch, message):
    monkeypatch.chdir(tmp_path)
    text = CONFIG.format(csv=slice_csv)
    for a, b in patch.items():
        assert a in text
        text = text.replace(a, b)
    cfg = tmp_path / "exp.toml"
    cfg.write_text(text)
    assert main(["run", str(cfg), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "finetuned").exists() and not (tmp_path / "cache").exists()


def test_records_of_another_config_are_refused_or_left_out(slice_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "exp.toml"
    text = CONFIG.format(csv=slice_csv).replace('finetuned = ["tf_efficientnet_lite0"]', "finetuned = []") \
        .replace('names = ["lite0"]', "names = []")
    cfg.write_text(text)
    assert main(["run", str(cfg), "--quiet"]) == 0
    ranking = pd.read_csv(tmp_path / "run" / "report" / "ranking.csv")
    assert ranking["candidate"].str.contains("logreg").any()
    # The same protocol with a head fewer: the folder keeps the logreg records (append-only)
    # but the report shows only what this config runs, and says what it left out.
    records = (tmp_path / "run" / "records.jsonl").read_text()
    cfg.write_text(text.replace('heads = ["svm-rbf", "logreg"]', 'heads = ["svm-rbf"]')
                   .replace(", logreg = {}", ""))
    assert main(["run", str(cfg), "--quiet"]) == 0
    assert (tmp_path / "run" / "records.jsonl").read_text() == records
    ranking = pd.read_csv(tmp_path / "run" / "report" / "ranking.csv")
    assert len(ranking) and not ranking["candidate"].str.contains("logreg").any()
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "outside the config's features, heads and baselines" in report
    assert "logreg" not in (tmp_path / "run" / "report" / "tables" / "tables.md").read_text()
    cfg.write_text(text.replace("seed = 0", "seed = 1"))
    assert main(["run", str(cfg), "--quiet"]) == 2
    assert "seed" in capsys.readouterr().err


def test_config_is_checked_on_load(tmp_path):
    (tmp_path / "x.toml").write_text('name = "x"\n')
    with pytest.raises(ValueError, match="missing 'manifest'"):
        ExperimentConfig.load(tmp_path / "x.toml")
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        ExperimentConfig.load(tmp_path / "nope.toml")


def test_a_corrupt_inputs_file_is_named(tmp_path):
    from workbench.report.build import _inputs

    assert _inputs(tmp_path) == {}  # a plain sweep folder: nothing recorded, nothing filtered
    (tmp_path / "inputs.json").write_text('{"scope": ')
    with pytest.raises(ValueError, match=r"inputs\.json: not valid JSON"):
        _inputs(tmp_path)


def test_duplicate_images_warned_dropped_or_refused(slice_csv, tmp_path, monkeypatch, capsys):
    """BUSI's busi_benign_433 (test) and busi_malignant_145 (train) are the same file."""
    import json

    monkeypatch.chdir(tmp_path)
    src = pd.read_csv(BUSI / "labels.csv")
    pair = src[src["id"].isin(["busi_benign_433", "busi_malignant_145"])].copy()
    for col in ("path", "mask_path", "roi_path"):
        pair[col] = [str(BUSI / p) for p in pair[col]]
    base = pd.read_csv(slice_csv)
    csv = tmp_path / "with_copies.csv"
    pd.concat([base, pair]).to_csv(csv, index=False)
    text = (CONFIG.format(csv=csv).replace('finetuned = ["tf_efficientnet_lite0"]', "finetuned = []")
            .replace('names = ["lite0"]', "names = []").replace('heads = ["svm-rbf", "logreg"]', 'heads = ["logreg"]')
            .replace("svm-rbf = {C = [1.0]}, ", "").replace('publish = "published"', ""))
    cfg = tmp_path / "exp.toml"
    named = r"busi_benign_433 \(benign, test\) = busi_malignant_145 \(malignant, train\): labels differ, crosses"

    cfg.write_text(text.replace('name = "slice"', 'name = "slice"\nduplicates = "error"'))
    assert main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert 'duplicates = "error"' in err and "busi_benign_433 (benign, test) = busi_malignant_145" in err
    assert not (tmp_path / "cache").exists()

    cfg.write_text(text.replace('name = "slice"', 'name = "slice"\nduplicates = "drop"'))
    assert main(["run", str(cfg), "--quiet"]) == 0
    inputs = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert inputs["n_images"] == len(base)
    dup = inputs["duplicates"]
    assert dup["policy"] == "drop" and dup["dropped"] == ["busi_benign_433", "busi_malignant_145"]
    assert dup["groups"][0]["labels"] == ["benign", "malignant"] and dup["groups"][0]["crosses_test"]
    prov = json.loads((tmp_path / "run" / "report" / "provenance.json").read_text())
    assert prov["inputs"]["duplicates"] == dup

    # The default: warned about, kept, and recorded (another manifest, so another run folder).
    cfg.write_text(text.replace('out = "run"', 'out = "run_warn"'))
    with pytest.warns(UserWarning, match=named):
        assert main(["run", str(cfg), "--quiet"]) == 0
    inputs = json.loads((tmp_path / "run_warn" / "inputs.json").read_text())
    assert inputs["n_images"] == len(base) + 2
    assert inputs["duplicates"]["policy"] == "warn" and inputs["duplicates"]["dropped"] == []
    assert [g["ids"] for g in inputs["duplicates"]["groups"]] == [["busi_benign_433", "busi_malignant_145"]]
