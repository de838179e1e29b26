"""The `workbench` command end to end, as a user runs it (the installed console script)."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"


def wb(*args: str, cwd: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    exe = shutil.which("workbench") or str(Path(sys.executable).with_name("workbench"))
    p = subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture(scope="module")
def busi_slice(tmp_path_factory) -> Path:
    """A 12-image slice of BUSI (4 per class, both splits), as its own manifest."""
    if not (BUSI / "labels.csv").exists():
        pytest.skip(f"real data not found at {BUSI}")
    rows = list(csv.DictReader(open(BUSI / "labels.csv")))
    picked = []
    for label in ("benign", "malignant", "normal"):
        picked += [r for r in rows if r["label"] == label][:4]
    out = tmp_path_factory.mktemp("busi") / "slice.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "label", "split", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"])
        w.writeheader()
        for r in picked:
            w.writerow({k: (str(BUSI / r["path"]) if k == "path" else r[k]) for k in w.fieldnames})
    return out


def test_help_explains_every_command():
    out = wb("--help").stdout
    for cmd in ("demo", "backbones", "extract", "cache", "sweep"):
        assert cmd in out
    ex = wb("extract", "--help").stdout
    assert "BACKBONE[@WEIGHTS][:TAP,TAP]" in ex and "--skip-bad" in ex and "--cache" in ex


def test_backbones_lists_names_taps_dims():
    out = wb("backbones").stdout
    assert "alexnet" in out and "fc6 (4096)" in out and "inception_v3" in out and "avgpool (2048)" in out
    data = json.loads(wb("backbones", "--json").stdout)
    assert {d["name"]: d["taps"] for d in data}["resnet18"] == {"avgpool": 512}


@pytest.mark.slow
def test_extract_on_busi_then_rerun_computes_nothing(busi_slice, tmp_path):
    cache = tmp_path / "cache"
    args = ["extract", "--manifest", str(busi_slice), "--features", "tf_efficientnet_lite0:avgpool",
            "--features", "resnet18@random:avgpool", "--image-size", "128", "--cache", str(cache),
            "--quiet", "--save", str(tmp_path / "f.npz")]
    first = wb(*args, "--record", str(tmp_path / "r1.json"))
    assert "computed 12" in first.stdout and "random (untrained) weights for resnet18" in first.stdout
    r1 = json.loads((tmp_path / "r1.json").read_text())
    assert r1["forward_images"] == {"tf_efficientnet_lite0": 12, "resnet18@random": 12}
    assert r1["blocks"]["resnet18@random:avgpool"]["weights_random"] is True
    assert r1["blocks"]["tf_efficientnet_lite0:avgpool"]["weights_random"] is False
    assert r1["environment"]["versions"]["torch"]
    second = wb(*args, "--record", str(tmp_path / "r2.json"))
    r2 = json.loads((tmp_path / "r2.json").read_text())
    assert r2["forward_images"] == {"tf_efficientnet_lite0": 0, "resnet18@random": 0}
    assert "computed 0" in second.stdout
    import numpy as np

    f = np.load(tmp_path / "f.npz")
    assert f["tf_efficientnet_lite0:avgpool"].shape == (12, 1280)
    assert list(f["ids"]) == [r["id"] for r in csv.DictReader(open(busi_slice))]
    ls = wb("cache", "--cache", str(cache), "ls").stdout
    assert "tf_efficientnet_lite0@packaged:avgpool" in ls and "RANDOM" in ls and "2 entries" in ls
    assert "0 corrupt" in wb("cache", "--cache", str(cache), "verify").stdout
    # box crops are different features: a new entry, and normal images (no box) are skipped
    third = wb("extract", "--manifest", str(busi_slice), "--features", "tf_efficientnet_lite0",
               "--image-size", "128", "--cache", str(cache), "--quiet", "--input", "box", "--skip-bad")
    assert "computed 8" in third.stdout and "skipped 4 bad rows" in third.stdout


def test_bad_manifest_fails_before_work_listing_every_row(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    m = tmp_path / "m.csv"
    m.write_text("id,path,label\na,empty.png,benign\nb,text.png,benign\nc,missing.png,benign\nd,text.png,cat\n")
    p = wb("extract", "--manifest", str(m), "--features", "resnet18@random", "--cache", str(tmp_path / "c"),
           "--classes", "benign,malignant", "--quiet", ok=False)
    assert p.returncode == 2
    for needle in ("line 2", "line 3", "line 4", "line 5", "unknown label 'cat'"):
        assert needle in p.stderr, p.stderr
    assert not (tmp_path / "c").exists()  # nothing was started


def test_missing_weights_and_unknown_backbone_are_clear(tmp_path, busi_slice):
    env_home = tmp_path / "torch"
    exe = shutil.which("workbench") or str(Path(sys.executable).with_name("workbench"))
    import os

    p = subprocess.run([exe, "extract", "--manifest", str(busi_slice), "--features", "alexnet:fc6",
                        "--cache", str(tmp_path / "c"), "--quiet"], capture_output=True, text=True,
                       env={**os.environ, "TORCH_HOME": str(env_home)})
    assert p.returncode == 2
    assert "alexnet-owt-7be5be79.pth" in p.stderr and str(env_home) in p.stderr
    p = wb("extract", "--manifest", str(busi_slice), "--features", "resnet5", "--quiet", ok=False)
    assert p.returncode == 2 and "Did you mean" in p.stderr


@pytest.mark.slow
def test_demo_runs_the_whole_flow_on_embedded_data(tmp_path):
    args = ("demo", "--out", str(tmp_path / "demo"), "--cache", str(tmp_path / "cache"),
            "--features", "tf_efficientnet_lite0", "--image-size", "96", "--quiet")
    out = wb(*args).stdout
    assert "synthetic demo shapes (not medical data)" in out and "Selected:" in out
    run = tmp_path / "demo" / "run"
    records = (run / "records.jsonl").read_bytes()
    # Pretrained and fine-tuned Lite0 features, SVM + RF + votes, and the fine-tuned CNN itself.
    assert b'"kind":"baseline"' in records and b"tf_efficientnet_lite0@ft-" in records
    rec = json.loads((tmp_path / "demo" / "demo-record.json").read_text())
    top = rec["top"]
    assert top[0]["cv_auc"] >= top[-1]["cv_auc"] and top[0]["cv_auc"] > 0.7  # the shape cue is learnable
    report = run / "report"
    assert (report / "tables" / "comparison.tex").is_file() and (report / "figures" / "roc_test.pdf").is_file()
    tables = (report / "tables" / "tables.md").read_bytes()
    again = wb(*args).stdout
    assert "Selected:" in again
    assert (run / "records.jsonl").read_bytes() == records  # nothing recomputed
    assert (report / "tables" / "tables.md").read_bytes() == tables


def test_sweep_help_names_the_options():
    out = wb("sweep", "--help").stdout
    for opt in ("--heads", "--subsets", "--cv", "--inner-cv", "--grid", "--n-jobs", "--backend",
                "--scheduler", "--classes", "--positive", "--out"):
        assert opt in out
    assert "records.jsonl" in out and "svm-rbf" in out


@pytest.fixture(scope="module")
def busi_sweep_slice(tmp_path_factory) -> Path:
    """24 BUSI images: 9 train and 3 test of each of benign and normal (and 6 malignant
    that ``--classes`` leaves out)."""
    if not (BUSI / "labels.csv").exists():
        pytest.skip(f"real data not found at {BUSI}")
    rows = list(csv.DictReader(open(BUSI / "labels.csv")))
    picked = []
    for label, n_train, n_test in (("benign", 9, 3), ("normal", 9, 3), ("malignant", 3, 3)):
        picked += [r for r in rows if r["label"] == label and r["split"] == "train"][:n_train]
        picked += [r for r in rows if r["label"] == label and r["split"] == "test"][:n_test]
    out = tmp_path_factory.mktemp("busi24") / "slice.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "label", "split"])
        w.writeheader()
        for r in picked:
            w.writerow({k: (str(BUSI / r["path"]) if k == "path" else r[k]) for k in w.fieldnames})
    return out


@pytest.mark.slow
def test_sweep_on_a_busi_slice_then_rerun(busi_sweep_slice, tmp_path):
    args = ["sweep", "--manifest", str(busi_sweep_slice), "--classes", "benign,normal",
            "--features", "timm/test_efficientnet@random:pre_logits", "--features", "resnet18@random:avgpool",
            "--image-size", "32", "--device", "cpu", "--workers", "0",
            "--heads", "svm-rbf,logreg", "--grid", "svm-rbf:C=1", "--grid", "logreg:C=0.1",
            "--cv", "2", "--inner-cv", "2", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run")]
    first = wb(*args)
    # 3 subsets x 2 heads + 3 x 2 votes, over 2 folds and the test split; status lines go to stderr
    assert "6 head candidates and 6 ensembles x 3 folds = 36 records; 0 already" in first.stderr
    assert "by mean CV auc" in first.stdout
    summary = (tmp_path / "run" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("candidate,kind,size,cv_auc") and len(summary) == 13
    assert "36 already in" in wb(*args).stderr
    quiet = wb(*args, "--quiet")  # --quiet: no status lines (and no progress bars)
    assert "already in" not in quiet.stderr and "by mean CV auc" in quiet.stdout


def test_sweep_errors_exit_2_naming_the_problem(busi_slice, tmp_path):
    p = wb("sweep", "--manifest", str(busi_slice), "--features", "resnet18@random:avgpool",
           "--heads", "svm-rbf,forest", "--out", str(tmp_path / "run"), ok=False)
    assert p.returncode == 2 and "unknown head 'forest'" in p.stderr
    p = wb("sweep", "--manifest", str(busi_slice), "--features", "resnet18@random:avgpool",
           "--grid", "svm-rbf:C", "--out", str(tmp_path / "run"), ok=False)
    assert p.returncode == 2 and "HEAD:PARAM=V1,V2" in p.stderr
    assert not (tmp_path / "run").exists()


def test_workbench_warnings_print_as_one_line_once():
    """The CLI formats its own warnings as `workbench CMD: warning: ...`, without Python's
    source line, and a message reached from two stages only once; others keep their format."""
    import warnings

    from workbench.cli.app import _one_line_warnings
    from workbench.data.manifest import DuplicateImageWarning

    default = warnings.formatwarning
    try:
        _one_line_warnings("extract")
        fmt = warnings.formatwarning
        first = fmt("two ids, one image", DuplicateImageWarning, "manifest.py", 10, "warnings.warn(...)")
        again = fmt("two ids, one image", DuplicateImageWarning, "extraction.py", 20, "validate(...)")
        other = fmt("something else", UserWarning, "x.py", 3, "warnings.warn(...)")
    finally:
        warnings.formatwarning = default
    assert first == "workbench extract: warning: two ids, one image\n"
    assert again == ""
    assert "UserWarning: something else" in other and "x.py:3" in other  # not ours: Python's format


# ---- parsing, errors and logging, in process -----------------------------------------------------


def test_cache_option_before_or_after_the_action():
    from workbench.cli.app import parse_args

    assert parse_args(["cache", "verify", "--cache", "a"]).cache == "a"
    assert parse_args(["cache", "--cache", "b", "verify"]).cache == "b"
    assert parse_args(["cache", "gc", "--cache", "c", "--remove-corrupt"]).cache == "c"
    assert parse_args(["cache", "ls"]).cache == "features_cache"


def test_options_build_the_typed_objects_with_their_defaults():
    from workbench.cli.app import parse_args
    from workbench.cli.objects import execution_of, extract_options_of, protocol_of, sweep_options_of
    from workbench.evaluation.protocol import Protocol
    from workbench.features.options import ExtractOptions
    from workbench.search.options import Execution, SweepOptions

    base = ["sweep", "--manifest", "m.csv", "--features", "resnet18", "--out", "r"]
    args = parse_args(base)
    assert protocol_of(args) == Protocol() and extract_options_of(args) == ExtractOptions()
    assert sweep_options_of(args) == SweepOptions() and execution_of(args) == Execution()
    args = parse_args([*base, "--cv", "4", "--inner-cv", "2", "--seed", "7", "--scoring", "accuracy",
                       "--positive", "malignant", "--no-groups", "--heads", "rf, logreg", "--subsets", "1-2",
                       "--grid", "rf:max_depth=2,none", "--no-ensembles", "--image-size", "96", "--workers", "0",
                       "--skip-bad", "--n-jobs", "2", "--backend", "threading"])
    assert protocol_of(args) == Protocol(cv=4, inner_cv=2, seed=7, scoring="accuracy", positive="malignant",
                                         groups=False)
    assert sweep_options_of(args) == SweepOptions(heads=("rf", "logreg"), subsets=(1, 2),
                                                  grids={"rf": {"max_depth": [2, None]}}, ensembles=False)
    assert extract_options_of(args) == ExtractOptions(image_size=96, num_workers=0, skip_bad=True)
    assert execution_of(args) == Execution(n_jobs=2, backend="threading")
    for cmd in (["baselines"], ["finetune", "--manifest", "m", "--backbone", "resnet18"]):
        assert protocol_of(parse_args([*cmd, "--cv", "3", "--no-groups"])) == Protocol(cv=3, groups=False)


def test_one_value_parser_and_one_grid_form_per_command():
    from workbench.cli.values import parse_head_grids, parse_settings, parse_settings_grid, parse_value
    from workbench.errors import ConfigError

    assert [parse_value(v) for v in ("yes", "On", "TRUE", "no", "off", "null", "2", "0.5", " x ")] == [
        True, True, True, False, False, None, 2, 0.5, "x"]
    assert parse_settings(["epochs=5", "augment=off", "freeze = features"]) == {
        "epochs": 5, "augment": False, "freeze": "features"}
    assert parse_settings_grid(["lr=1e-4,1e-3"]) == {"lr": [1e-4, 1e-3]}
    # The sweep's form in finetune, and the finetune's form in the sweep: refused, naming the form.
    with pytest.raises(ConfigError, match=r"SETTING=V1,V2 \(fine-tuning settings, no HEAD: part\)"):
        parse_settings_grid(["svm-rbf:C=1,10"])
    with pytest.raises(ConfigError, match="HEAD:PARAM=V1,V2 or HEAD:none"):
        parse_head_grids(["lr=1e-4,1e-3"])
    for bad in (["lr=1e-4,"], ["lr="]):
        with pytest.raises(ConfigError, match="empty value"):
            parse_settings_grid(bad)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_settings(["epochs"])


@pytest.fixture
def command(monkeypatch):
    """Replace every command's function by ``fn`` (set by the test); return a setter."""
    import workbench.cli.app as app

    def use(fn):
        monkeypatch.setattr(app, "_command", lambda name: fn)

    return use


EXTRACT = ["extract", "--manifest", "m.csv", "--features", "resnet18"]


def test_workbench_errors_are_one_line_exit_2(command, capsys):
    from workbench.cli import main
    from workbench.errors import ConfigError, UnknownNameError

    for err, shown in ((ConfigError("batch_size = 0: expected an integer >= 1"),
                        "batch_size = 0: expected an integer >= 1"),
                       (UnknownNameError("unknown backbone 'resnet5'. Did you mean resnet50?"),
                        "unknown backbone 'resnet5'. Did you mean resnet50?")):
        command(lambda args, err=err: (_ for _ in ()).throw(err))
        assert main(EXTRACT) == 2
        assert capsys.readouterr().err == f"workbench extract: error: {shown}\n"


def test_other_errors_are_bugs_and_keep_their_traceback(command):
    from workbench.cli import main

    for bug in (ValueError("a bug"), KeyError("a bug"), TypeError("a bug")):
        command(lambda args, bug=bug: (_ for _ in ()).throw(bug))
        with pytest.raises(type(bug)):
            main(EXTRACT)


def test_interrupt_is_one_line_exit_130(command, capsys):
    from workbench.cli import main

    command(lambda args: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(EXTRACT) == 130
    assert capsys.readouterr().err.strip().startswith("interrupted: finished work is in the cache")


def test_status_lines_go_to_stderr_and_quiet_keeps_warnings_only(command, capsys):
    import logging

    from workbench.cli import main

    def talk(args):
        logging.getLogger("workbench.features.extraction").info("12 images to decode")
        logging.getLogger("workbench.search").warning("a warning line")
        return 0

    command(talk)
    log = logging.getLogger("workbench")
    handlers, level = list(log.handlers), log.level
    assert main(EXTRACT) == 0
    assert capsys.readouterr().err == "12 images to decode\na warning line\n"
    assert main([*EXTRACT, "--quiet"]) == 0
    assert capsys.readouterr().err == "a warning line\n"
    assert log.handlers == handlers and log.level == level  # main leaves the logger as it found it
