"""Experiment configs are checked key by key on load, before any work (issue 11/13).

Only ``ExperimentConfig.load`` runs here (no manifest is read, nothing is extracted), so
every case takes milliseconds once the registries are imported.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.evaluation.protocol import Protocol
from workbench.experiment import CONFIG_SCHEMA, BaselinesConfig, ConfigError, ExperimentConfig
from workbench.features.options import ExtractOptions
from workbench.report.build import ReportSettings, Selection
from workbench.search.options import Execution, SweepOptions
from workbench.training.config import FineTuneConfig

GOOD = """
name = "t"
manifest = "labels.csv"
classes = ["benign", "malignant"]
positive = "malignant"

[protocol]
cv = 5
inner_cv = 3
seed = 0
scoring = "auc"
metric = "auc"
top_k = 3

[features]
specs = ["tf_efficientnet_lite0:avgpool"]
finetuned = []
nested = false

[finetune]
epochs = 2

[sweep]
heads = ["svm-rbf", "rf"]
subsets = "all"
ensembles = true

[baselines]
names = []

[report]
alpha = 0.05

[export]
out = "../models/t"

[test]
"""


def _load(tmp_path: Path, text: str) -> ExperimentConfig:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return ExperimentConfig.load(path)


def _set(text: str, section: str, key: str, value: str) -> str:
    """``text`` with ``section.key`` set to the TOML ``value`` (replaced or added)."""
    lines = text.splitlines()
    header = f"[{section}]" if section else None
    start = lines.index(header) + 1 if header else 0
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    for i in range(start, end):
        if lines[i].split("=")[0].strip() == key:
            lines[i] = f"{key} = {value}"
            break
    else:
        lines.insert(start if header else 1, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def test_the_committed_configs_load(tmp_path):
    root = Path(__file__).resolve().parents[1] / "experiments"
    for path in sorted(root.glob("*.toml")):
        cfg = ExperimentConfig.load(path)
        assert cfg.duplicates == "warn" and cfg.selection.metric == "auc"


def test_good_config_gets_its_defaults(tmp_path):
    cfg = _load(tmp_path, GOOD)
    assert cfg.duplicates == "warn"
    assert cfg.sweep.stacking is False and cfg.execution.n_jobs == 1
    assert cfg.baselines.tune_cv == 6 and cfg.baselines.overrides == {}
    assert cfg.finetune == FineTuneConfig(epochs=2) and cfg.features.extract.image_size is None
    # One source of defaults: the typed objects' own.
    assert cfg.protocol == Protocol(cv=5, inner_cv=3, seed=0, scoring="auc", positive="malignant")
    assert cfg.sweep == SweepOptions(heads=("svm-rbf", "rf")) and cfg.execution == Execution()
    assert cfg.features.extract == ExtractOptions() and cfg.report == ReportSettings(alpha=0.05)
    assert cfg.selection == Selection(metric="auc", top_k=3)


def test_typed_defaults_are_the_only_defaults(tmp_path):
    """A config that gives only what is required gets exactly the types' defaults."""
    minimal = 'name = "t"\nmanifest = "labels.csv"\n[features]\nspecs = ["tf_efficientnet_lite0:avgpool"]\n'
    cfg = _load(tmp_path, minimal)
    assert (cfg.protocol, cfg.selection, cfg.finetune) == (Protocol(), Selection(), FineTuneConfig())
    assert (cfg.sweep, cfg.execution, cfg.report) == (SweepOptions(), Execution(), ReportSettings())
    assert cfg.features.extract == ExtractOptions() and cfg.baselines == BaselinesConfig()
    assert cfg.duplicates == "warn"


# The examples of the issue, each with the key and the words that must be in the message.
ISSUE_EXAMPLES = [
    ("protocol", "cv", '"five"', 'protocol.cv = "five": expected an integer'),
    ("sweep", "ensembles", '"no"', 'sweep.ensembles = "no": expected true or false'),
    ("", "classes", '"benign"', 'classes = "benign": expected a list of strings; write classes = ["benign"]'),
    ("features", "specs", '"tf_efficientnet_lite0:avgpool"',
     'features.specs = "tf_efficientnet_lite0:avgpool": expected a list of strings; '
     'write specs = ["tf_efficientnet_lite0:avgpool"]'),
    ("protocol", "metric", '"roc_auc"', 'protocol.metric = "roc_auc": expected one of accuracy, balanced_accuracy'),
    ("sweep", "subsets", '"every"', 'sweep.subsets = "every": expected "all", "single", sizes [k1, k2]'),
    ("features", "nested", "true", "features.nested = true: nested fine-tuning needs backbones in "
                                   "features.finetuned, and it names none"),
]


@pytest.mark.parametrize("section, key, value, message", ISSUE_EXAMPLES, ids=[e[1] for e in ISSUE_EXAMPLES])
def test_issue_examples_fail_on_load_naming_key_value_and_what_is_allowed(tmp_path, section, key, value, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, _set(GOOD, section, key, value))
    assert message in str(err.value) and str(err.value).startswith(str(tmp_path / "exp.toml"))
    assert err.value.key == (f"{section}.{key}" if section else key)


# A sweep over every key of the schema: (section, key, bad TOML value, words of the message).
BAD_VALUES = [
    ("", "name", "3", "expected a string"),
    ("", "name", '""', "non-empty"),
    ("", "manifest", "[]", "expected a string"),
    ("", "classes", '["benign"]', "at least 2"),
    ("", "classes", '["benign", "benign"]', "distinct"),
    ("", "classes", "[1, 2]", "list of strings"),
    ("", "positive", '"cancer"', "one of the classes (benign, malignant)"),
    ("", "positive", "1", "expected a string"),
    ("", "out", "false", "expected a string"),
    ("", "cache", "1", "expected a string"),
    ("", "finetuned", '["x"]', "expected a string"),
    ("", "duplicates", '"maybe"', 'expected one of "warn", "drop", "error"'),
    ("", "duplicates", "true", "expected a string"),
    ("", "protocol", "3", "expected a table"),
    ("", "topk", "3", "unknown key; known keys: "),
    ("protocol", "cv", "1", "expected an integer >= 2"),
    ("protocol", "cv", "5.0", "expected an integer"),
    ("protocol", "cv", "true", "expected an integer"),
    ("protocol", "inner_cv", '"3"', "expected an integer"),
    ("protocol", "seed", "-1", ">= 0"),
    ("protocol", "scoring", '"roc_auc"', 'expected one of "auc", "balanced_accuracy", "accuracy"'),
    ("protocol", "metric", '"auc_macro"', "(a binary task)"),
    ("protocol", "metric", "1", "expected a string"),
    ("protocol", "top_k", "0", ">= 1"),
    ("protocol", "repeats", "0", "protocol.repeats = 0: expected an integer >= 1"),
    ("protocol", "topk", "3", "unknown key; known keys in [protocol]: cv, inner_cv, metric, repeats, scoring, seed, "
                              "top_k"),
    ("features", "specs", '["nonet:avgpool"]', "nonet"),
    ("features", "specs", '["tf_efficientnet_lite0:fc9"]', "fc9"),
    ("features", "specs", '[""]', "non-empty"),
    ("features", "image_size", "8", ">= 16"),
    ("features", "image_size", '"224"', "expected an integer"),
    ("features", "finetuned", '"tf_efficientnet_lite0"', 'write finetuned = ["tf_efficientnet_lite0"]'),
    ("features", "finetuned", '["nonet"]', "nonet"),
    ("features", "nested", '"yes"', "expected true or false"),
    ("features", "resize", '"stretch"', 'expected one of "squash", "crop", "letterbox"'),
    ("features", "input", '"crop"', 'expected one of "whole", "box"'),
    ("features", "batch_size", "0", ">= 1"),
    ("features", "boxes", '"predicted:ft-0123"', "only applies with input = 'box'"),
    ("features", "boxes", '"predicted:random"', "'random' is not a fine-tuned weights id"),
    ("features", "boxes", "1", "expected a string"),
    ("features", "pixel_store", '"no"', "expected true or false"),
    ("features", "preprocess_on", '"gpu"', 'expected one of "auto", "loader", "device"'),
    ("sweep", "memory_budget", '"lots"', "expected a fraction of the available memory"),
    ("finetune", "epochs", '"five"', "finetune.epochs = \"five\": expected an integer"),
    ("finetune", "epochs", "0", "finetune.epochs = 0: epochs must be >= 1"),
    ("finetune", "optimizer", '"adagrad"', "optimizer must be one of"),
    ("finetune", "lr", '"fast"', "expected a number"),
    ("finetune", "cut_remain", '"yes"', "expected true or false"),
    ("finetune", "freeze", "true", "expected a string or a number"),
    ("finetune", "epoch", "3", "unknown key; known keys in [finetune]"),
    ("sweep", "heads", '"rf"', 'write heads = ["rf"]'),
    ("sweep", "heads", "[]", "at least 1"),
    ("sweep", "heads", '["svm-poly"]', "svm-poly"),
    ("sweep", "subsets", "[3, 1]", "sizes [k1, k2] (1 <= k1 <= k2)"),
    ("sweep", "subsets", "[[]]", "a list of subsets"),
    ("sweep", "subsets", "5", "a list of subsets"),
    ("sweep", "ensembles", "1", "expected true or false"),
    ("sweep", "stacking", '"false"', "expected true or false"),
    ("sweep", "grids", '"none"', "expected a table"),
    ("sweep", "grids", "{rf = {n_estimators = 100}}", "a non-empty list per parameter"),
    ("sweep", "grids", "{xgb = {}}", "xgb is not swept"),
    ("sweep", "grids", "{rf = {depth = [3]}}", "sweep.grids.rf"),
    ("sweep", "ensemble_heads", '["logreg"]', "logreg is not"),
    ("sweep", "ensemble_heads", '"rf"', 'write ensemble_heads = ["rf"]'),
    ("sweep", "ensemble_members", '["rf", "baseline:nope"]', "unknown baseline 'nope'"),
    ("sweep", "ensemble_members", '["rf", "baseline:lite0"]', "add 'lite0' to baselines.names"),
    ("sweep", "n_jobs", "0", "-1 for one per CPU"),
    ("sweep", "backend", '"spark"', 'expected one of "loky"'),
    ("sweep", "scheduler", '""', "non-empty"),
    ("sweep", "scheduler", '"tcp://10.0.0.5:8786"', "only applies to --backend dask"),
    ("baselines", "names", '"lite0"', 'write names = ["lite0"]'),
    ("baselines", "names", '["lite9"]', "lite9"),
    ("baselines", "tune", '"no"', "expected true or false"),
    ("baselines", "tune_cv", "1", ">= 2"),
    ("baselines", "set", "{epochs = \"x\"}", "baselines.set.epochs = \"x\": expected an integer"),
    ("baselines", "set", "{lr = -1.0}", "baselines.set.lr = -1.0: lr must be > 0"),
    ("baselines", "val_fraction", "1.5", "between 0 and 1"),
    ("report", "alpha", "0", "between 0 and 1"),
    ("report", "alpha", '"0.05"', "expected a number"),
    ("report", "publish", "true", "expected a string"),
    ("report", "recalibrate", '"temperature"', 'expected one of "platt", "isotonic"'),
    ("report", "recalibrate", "true", "expected a string"),
    ("report", "decision_thresholds", "0.2", "expected a non-empty list of threshold probabilities"),
    ("report", "decision_thresholds", "[]", "expected a non-empty list"),
    ("report", "decision_thresholds", "[0.1, 1.0]", "between 0 and 1 (exclusive); 1.0 is not"),
    ("report", "decision_thresholds", '[0.1, "0.2"]', "'0.2' is not"),
    ("report", "decision_thresholds", "[0.1, 0.1]", "distinct"),
    ("export", "out", '""', "non-empty"),
    ("export", "candidate", "3", "expected a string"),
    ("export", "above", "[]", "expected a string"),
    ("export", "below", '""', "non-empty"),
    ("test", "external", '"site2.csv"', "expected a table"),
    ("test", "external", '{"site-2" = "site2.csv"}', "'site-2': use letters, digits and '_'"),
    ("test", "external", "{site2 = 3}", 'expected "manifest.csv" or {manifest = "...", ids = "..."}'),
    ("test", "external", '{site2 = {manifest = "s.csv", idz = "x.txt"}}', "unknown key(s) idz"),
    ("test", "external", '{site2 = {ids = "x.txt"}}', "missing 'test.external.site2.manifest'"),
]


@pytest.mark.parametrize("section, key, value, message", BAD_VALUES,
                         ids=[f"{s or 'top'}.{k}={v}" for s, k, v, _ in BAD_VALUES])
def test_bad_values_are_refused_on_load(tmp_path, section, key, value, message):
    text = GOOD
    if not section and key in CONFIG_SCHEMA:  # a section given as a plain value: drop its table
        lines = text.splitlines()
        start = lines.index(f"[{key}]")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        text = "\n".join(lines[:start] + lines[end:]) + "\n"
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, _set(text, section, key, value))
    assert message in str(err.value)


def test_every_schema_key_is_covered_by_the_sweep():
    covered = {(s, k) for s, k, _, _ in BAD_VALUES + ISSUE_EXAMPLES}
    keys = {(s, k) for s, sec in CONFIG_SCHEMA.items() for k in sec}
    assert keys - covered == set()


@pytest.mark.parametrize("section, key, value, expected", [
    ("sweep", "subsets", "[1, 2]", (1, 2)),
    ("sweep", "subsets", '[["L0", "L1"], "L2"]', (("L0", "L1"), ("L2",))),
    ("sweep", "subsets", '"single"', "single"),
    ("sweep", "grids", "{rf = {}, svm-rbf = {C = [1, 10]}}", {"rf": {}, "svm-rbf": {"C": [1, 10]}}),
    ("sweep", "n_jobs", "-1", -1),
    ("finetune", "freeze", '"features"', "features"),
    ("finetune", "freeze", "0.5", 0.5),
    ("finetune", "lr", "1", 1),
    ("", "duplicates", '"drop"', "drop"),
    ("report", "recalibrate", '"platt"', "platt"),
    ("report", "decision_thresholds", "[0.1, 0.25]", (0.1, 0.25)),
])
def test_good_values_are_kept(tmp_path, section, key, value, expected):
    cfg = _load(tmp_path, _set(GOOD, section, key, value))
    typed = {("sweep", "n_jobs"): cfg.execution.n_jobs}
    got = typed[section, key] if (section, key) in typed else getattr(getattr(cfg, section) if section else cfg, key)
    assert got == expected


def test_metrics_depend_on_the_classes(tmp_path):
    three = _set(GOOD, "", "classes", '["benign", "malignant", "normal"]')
    for metric in ("auc", "auc_macro", "sensitivity[normal]", "f1_macro"):
        assert _load(tmp_path, _set(three, "protocol", "metric", f'"{metric}"')).selection.metric == metric
    with pytest.raises(ConfigError, match=r"protocol.metric = \"auc\[cancer\]\".*such as auc\[benign\]"):
        _load(tmp_path, _set(three, "protocol", "metric", '"auc[cancer]"'))
    # Without classes the per-class names cannot be checked yet; the metric names can.
    free = "\n".join(line for line in GOOD.splitlines() if not line.startswith(("classes", "positive")))
    assert _load(tmp_path, _set(free, "protocol", "metric", '"auc[x]"')).selection.metric == "auc[x]"
    with pytest.raises(ConfigError, match="protocol.metric"):
        _load(tmp_path, _set(free, "protocol", "metric", '"aucc[x]"'))


def test_missing_required_keys_and_error_attributes(tmp_path):
    with pytest.raises(ConfigError, match="missing 'manifest'") as err:
        _load(tmp_path, 'name = "x"\n')
    assert err.value.key == "manifest" and isinstance(err.value, ValueError)
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, _set(GOOD, "protocol", "cv", '"five"'))
    assert (err.value.key, err.value.value, err.value.expected) == ("protocol.cv", "five", "expected an integer")
    import pickle

    again = pickle.loads(pickle.dumps(err.value))  # this process wrote it
    assert str(again) == str(err.value)


# ---- the duplicates policy on a tiny manifest ------------------------------------------------


def _manifest_with_copies(tmp_path: Path):
    from workbench.data.manifest import Manifest

    rng = np.random.default_rng(0)
    rows = ["id,path,label,split"]
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "copy.png").write_bytes((tmp_path / "0.png").read_bytes())
    rows += ["a,0.png,benign,test", "b,1.png,benign,train", "c,2.png,malignant,train", "d,3.png,malignant,test",
             "e,copy.png,malignant,train"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match=r"a \(benign, test\) = e \(malignant, train\)"):
        return Manifest.load(tmp_path / "labels.csv").validate()


def test_duplicates_policy_warn_drop_error(tmp_path, caplog):
    import logging

    from workbench.experiment import _apply_duplicates

    caplog.set_level(logging.INFO, logger="workbench")
    manifest = _manifest_with_copies(tmp_path)
    warn = _load(tmp_path, GOOD)
    kept, rec = _apply_duplicates(warn, manifest)
    assert kept is manifest and rec["policy"] == "warn" and rec["dropped"] == []
    assert [g["ids"] for g in rec["groups"]] == [["a", "e"]]
    assert rec["groups"][0]["conflicting_labels"] and rec["groups"][0]["crosses_test"]
    json.dumps(rec)  # it goes into inputs.json and provenance.json

    drop = _load(tmp_path, _set(GOOD, "", "duplicates", '"drop"'))
    kept, rec = _apply_duplicates(drop, manifest)
    assert kept.ids == ["b", "c", "d"] and rec["dropped"] == ["a", "e"]
    assert "left out 2 image(s): a, e" in caplog.records[-1].getMessage()

    error = _load(tmp_path, _set(GOOD, "", "duplicates", '"error"'))
    with pytest.raises(ConfigError, match=r'duplicates = "error": the manifest holds 1 image\(s\) under more than '
                                          r"one id: a \(benign, test\) = e \(malignant, train\)"):
        _apply_duplicates(error, manifest)
    # Nothing to do when there are no copies, whatever the policy.
    clean = manifest.subset(["b", "c", "d"])
    assert _apply_duplicates(error, clean)[1]["groups"] == []


def test_finetune_keys_follow_finetune_config(tmp_path):
    """[finetune] and [baselines.set] take FineTuneConfig's fields, typed from its annotations."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(FineTuneConfig)}
    assert _load(tmp_path, _set(GOOD, "finetune", "seed", "3")).finetune.seed == 3
    if "class_weight" in fields:  # a TOML flag is read as "balanced" / "none" by FineTuneConfig
        assert _load(tmp_path, _set(GOOD, "finetune", "class_weight", "true")).finetune.class_weight == "balanced"
        assert _load(tmp_path, _set(GOOD, "finetune", "class_weight", "false")).finetune.class_weight == "none"
        with pytest.raises(ConfigError, match=r"finetune.class_weight = 3: expected a string or true or false"):
            _load(tmp_path, _set(GOOD, "finetune", "class_weight", "3"))
        with pytest.raises(ConfigError, match=r"finetune.class_weight = \"heavy\": class_weight must be one of"):
            _load(tmp_path, _set(GOOD, "finetune", "class_weight", '"heavy"'))


def test_the_export_section(tmp_path):
    """[export] turns on the model bundle of `workbench run`; it needs `out`, and every value is checked."""
    plain = GOOD.split("[export]")[0]
    assert _load(tmp_path, plain).export.out is None  # no section: no bundle
    cfg = _load(tmp_path, plain + '\n[export]\nout = "../models/t"\ncandidate = "top-2"\nabove = "FNA recommended"\n')
    assert (cfg.export.out, cfg.export.candidate, cfg.export.above, cfg.export.below) == \
        ("../models/t", "top-2", "FNA recommended", None)
    with pytest.raises(ConfigError, match="missing 'export.out'"):
        _load(tmp_path, plain + '\n[export]\ncandidate = "selected"\n')
    with pytest.raises(ConfigError, match="export"):
        _load(tmp_path, plain + '\n[export]\nout = "m"\nthreshold = 0.3\n')
