"""One experiment from one TOML file: validate -> fine-tune -> extract -> sweep -> baselines -> Grad-CAM -> report.

``workbench run experiments/NAME.toml`` runs every stage, each resuming what the cache,
the fine-tuned store and the run folder already hold, so a second run computes nothing;
``workbench report runs/NAME`` rebuilds the report from the run folder's files alone.

Config (paths relative to the config file)::

    name = "busi_benign_malignant"
    manifest = "../../shared/data/busi/labels.csv"
    classes = ["benign", "malignant"]
    positive = "malignant"
    out = "runs/busi_benign_malignant"        # default: runs/<name> beside the config's folder
    cache = "features_cache"
    finetuned = "finetuned"                   # the fine-tuned store (default: $WORKBENCH_FINETUNED or ./finetuned)
    duplicates = "warn"                       # byte-identical images under several ids: "warn", "drop", "error"

    [protocol]   cv = 5, inner_cv = 3, seed = 0, scoring = "auc", metric = "auc", top_k = 3,
                 repeats = 1 (R x cv outer folds, each repeat its own seeded partition)
    [features]   specs = ["tf_efficientnet_lite0:avgpool", ...], image_size = 224 (optional)
                 finetuned = ["tf_efficientnet_lite0"]  (adds BACKBONE@ft-...:taps blocks)
                 nested = false                        (true: BACKBONE@ftn-..., clean CV)
    [finetune]   any FineTuneConfig field (epochs, lr, image_size, cut_remain, ...)
    [sweep]      heads = ["svm-rbf", "rf"], subsets = "all", ensembles = true, stacking = false,
                 ensemble_members = ["svm-rbf", "rf", "baseline:lite0"] (hybrid CNN + head ensembles too),
                 [sweep.grids] svm-rbf = {C = [1, 10]}
                 n_jobs = 1, memory_budget = "80%" (or "12GB": SVM units over it run over fewer blocks)
                 backend = "dask", scheduler = "tcp://host:8786" | "local": every stage's units (fine-tunes,
                 extraction chunks, heads, baselines, Grad-CAM) on a Dask cluster (README: "Running on a
                 Dask cluster"); n_jobs and backend apply to every stage, not the sweep alone
    [baselines]  names = ["lite0"], tune = false, [baselines.set] epochs = 5
    [report]     alpha = 0.05, publish = "folder beside the config"
    [test]       external = {site2 = "site2.csv", heldout = {manifest = "labels.csv", ids = "heldout_ids.txt"}}
                 (further test sets, scored once by the frozen models; ids of the main manifest are held out of it)
                 recalibrate = "platt" | "isotonic" (optional), decision_thresholds = [0.05, 0.1, 0.2, 0.3, 0.5]

Each table becomes a typed, frozen object (:data:`SECTIONS`): [protocol] a
:class:`~workbench.evaluation.protocol.Protocol` and a :class:`~workbench.report.build.Selection`,
[features] a :class:`FeaturesConfig` holding :class:`~workbench.features.options.ExtractOptions`,
[finetune] a :class:`~workbench.training.config.FineTuneConfig`, [sweep]
:class:`~workbench.search.options.SweepOptions` and :class:`~workbench.search.options.Execution`,
[baselines] a :class:`BaselinesConfig`, [report] :class:`~workbench.report.build.ReportSettings`.
Their defaults are the only defaults. Every value is checked on load, before any work
(:data:`CONFIG_SCHEMA`: type and allowed values per key); a :class:`ConfigError` names
``section.key``, the value and what is allowed. A key that takes a list takes a TOML
list only: ``classes = "benign"`` is refused (never split into characters, never
wrapped), with the list to write instead.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import errors
from workbench.backbones.finetuned import FineTunedNotFoundError, resolved_root, using_root
from workbench.backbones.registry import get_backbone
from workbench.baselines.configs import get_baseline
from workbench.baselines.estimator import CNNClassifier
from workbench.baselines.cam import explain_on
from workbench.baselines.run import run_baselines
from workbench.core.io import atomic_write
from workbench.core.parallel import gpu_resources, shared_cluster, unordered
from workbench.data.manifest import Item, Manifest
from workbench.data.modes import INPUT_MODES, RESIZE_MODES
from workbench.data.pixels import PixelStore
from workbench.evaluation.calibration import RECALIBRATION_METHODS
from workbench.evaluation.metrics import PER_CLASS_METRICS, list_metrics
from workbench.evaluation.protocol import (ExternalSetError, Protocol, build_task, check_external_name,
                                           combine_external, load_external)
from workbench.evaluation.settings import SCORINGS
from workbench.evaluation.store import ResultStore
from workbench.features.distributed import extract_on
from workbench.features.featureset import FeatureSet
from workbench.features.options import PREPROCESS_SITES, ExtractOptions
from workbench.features.request import FeatureRequest
from workbench.heads.zoo import get_head
from workbench.report.build import ReportSettings, Selection, decision_thresholds_problem, write_report
from workbench.report.gradcam import GRID_MAX, CamSet, cam_path
from workbench.search.options import BACKENDS, Execution, SweepOptions, parse_memory_budget
from workbench.search.sweep import sweep
from workbench.training.config import FineTuneConfig
from workbench.training.nested import fine_tune_nested

__all__ = ["ExperimentConfig", "FeaturesConfig", "BaselinesConfig", "ConfigError", "ExternalSpec", "TestConfig",
           "run_experiment", "with_execution", "build_report", "CONFIG_SCHEMA", "SECTIONS", "DUPLICATE_POLICIES"]

logger = logging.getLogger(__name__)

#: What ``duplicates = ...`` may say: warn (default), drop the copies, or refuse the run.
DUPLICATE_POLICIES = ("warn", "drop", "error")
_MISSING = object()


class ConfigError(errors.ConfigError):
    """A value in a config file of the wrong type or outside what is allowed.

    ``str(error)`` names the file, ``section.key``, the value as written and what is
    allowed, e.g. ``exp.toml: sweep.ensembles = "no": expected true or false``.

    Attributes
    ----------
    path : Path
        The config file.
    key : str
        ``section.key`` (``name`` for a top-level key).
    value : object
        The value read (absent for a missing key).
    expected : str
        What is allowed, in words.
    """

    def __init__(self, path: str | os.PathLike, key: str, value: Any = _MISSING, expected: str = "") -> None:
        self.path, self.key, self.value, self.expected = Path(path), key, value, expected
        shown = f"missing '{key}'" if value is _MISSING else f"{key} = {_show(value)}"
        super().__init__(f"{path}: {shown}" + (f": {expected}" if expected else ""))

    def __reduce__(self):  # picklable across process pools, like the other errors
        return (ConfigError, (self.path, self.key, self.value, self.expected))


def _show(value: Any) -> str:
    """The value as TOML writes it (strings quoted, booleans lower-case)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


@dataclass(frozen=True)
class _Key:
    """One config key: its type and allowed values (its default is its typed object's).

    ``kind`` is ``str``, ``int``, ``float``, ``bool``, ``strs`` (a list of strings; a
    single string is refused, never split or wrapped), ``table`` or ``any`` (checked
    by ``check``). ``check`` returns what is allowed, in words, when a well-typed value
    is not.
    """

    kind: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    required: bool = False


_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "strs": "a list of strings", "table": "a table"}


def _is(kind: str, v: Any) -> bool:
    if kind == "str":
        return isinstance(v, str)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "strs":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if kind == "table":
        return isinstance(v, dict)
    return True


def _at_least(k: int | float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= k else f"expected {'an integer' if isinstance(k, int) else 'a number'} >= {k}"


def _open_unit(v: float) -> str | None:
    return None if 0 < v < 1 else "expected a number between 0 and 1 (exclusive)"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "expected a non-empty string"


def _names(min_len: int = 0) -> Callable[[list[str]], str | None]:
    def check(v: list[str]) -> str | None:
        if any(not x.strip() for x in v):
            return "expected non-empty names"
        if len(set(v)) != len(v):
            return "expected distinct names (one is repeated)"
        if len(v) < min_len:
            return f"expected at least {min_len} names"
        return None
    return check


def _n_jobs(v: int) -> str | None:
    return None if v >= 1 or v == -1 else "expected an integer >= 1, or -1 for one per CPU"


def _memory_budget(v: Any) -> str | None:
    try:
        parse_memory_budget(v)
    except errors.ConfigError as e:
        return str(e).split(": ", 1)[-1]
    return None


def _subsets(v: Any) -> str | None:
    allowed = ('"all", "single", sizes [k1, k2] (1 <= k1 <= k2), or a list of subsets of block names or '
               'codes, e.g. [["L0", "L1"], ["L2"]]')
    if v in ("all", "single"):
        return None
    if isinstance(v, list) and len(v) == 2 and all(isinstance(k, int) and not isinstance(k, bool) for k in v):
        return None if 1 <= v[0] <= v[1] else f"expected {allowed}"
    if isinstance(v, list) and v and all(
            (isinstance(s, str) and s) or (isinstance(s, list) and s and all(isinstance(b, str) and b for b in s))
            for s in v):
        return None
    return f"expected {allowed}"


def _grids(v: dict) -> str | None:
    for head, grid in v.items():
        if not isinstance(grid, dict) or any(not isinstance(x, list) or not x for x in grid.values()):
            return (f"expected a table of head = {{parameter = [values, ...]}} (a non-empty list per parameter, "
                    f"{{}} for no search); {head!r} is {_show(grid)}")
    return None


_TOP_KEYS: dict[str, _Key] = {
    "name": _Key("str", required=True, check=_non_empty),
    "manifest": _Key("str", required=True, check=_non_empty),
    "classes": _Key("strs", check=_names(2)),
    "positive": _Key("str", check=_non_empty),
    "out": _Key("str", check=_non_empty),
    "cache": _Key("str", check=_non_empty),
    "finetuned": _Key("str", check=_non_empty),
    "duplicates": _Key("str", choices=DUPLICATE_POLICIES),
}


# ---------------------------------------------------------------- typed sections
@dataclass(frozen=True)
class FeaturesConfig:
    """[features]: the blocks to extract and how.

    ``specs`` are feature specs (``backbone:taps``); ``finetuned`` backbones are fine-tuned
    first and add ``BACKBONE@ft-...:taps`` blocks (``nested``: ``@ftn-...``, clean CV);
    ``extract`` holds the extraction options the table sets.
    """

    specs: tuple[str, ...] = ()
    finetuned: tuple[str, ...] = ()
    nested: bool = False
    extract: ExtractOptions = field(default_factory=ExtractOptions)


@dataclass(frozen=True)
class BaselinesConfig:
    """[baselines]: end-to-end CNN baselines on the sweep's folds.

    ``overrides`` (the ``[baselines.set]`` table) are FineTuneConfig fields laid over
    each baseline's own settings, so only the keys given are kept.
    """

    names: tuple[str, ...] = ()
    tune: bool = False
    tune_cv: int = 6
    val_fraction: float = 0.15
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportSettings:
    """[export]: the model bundle ``workbench run`` writes after the report.

    ``out`` (relative to the config) turns it on; ``candidate`` is ``selected``, ``top-K``
    or a name; ``above`` / ``below`` are the recommendation texts (binary tasks).
    """

    out: str | None = None
    candidate: str = "selected"
    above: str | None = None
    below: str | None = None


@dataclass(frozen=True)
class ExternalSpec:
    """One external test set of [test] external: a manifest, or those of its rows whose
    ids an ``ids`` file lists (one per line; ``#`` comments). Paths are resolved."""

    manifest: Path
    ids: Path | None = None


@dataclass(frozen=True)
class TestConfig:
    """[test]: further test sets (another site, another scanner), by name.

    Each is evaluated once with the models and baselines fitted for the internal test
    split, at their thresholds from out-of-fold predictions, and reported beside it. A
    set given by ``ids`` of the main manifest itself is held out of the run's data.
    """

    external: Mapping[str, ExternalSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class _Section:
    """One TOML table: its keys (checked on load) and how it becomes typed fields.

    ``build(path, values, top)`` gets the table's checked values and the top level's, and
    returns :class:`ExperimentConfig` fields. ``fields_of``: a dataclass whose fields are
    further keys, typed from its annotations (``[finetune]`` takes FineTuneConfig's).
    """

    keys: dict[str, _Key]
    build: Callable[[Path, dict[str, Any], dict[str, Any]], dict[str, Any]]
    fields_of: type | None = None

    def all_keys(self) -> dict[str, _Key]:
        return {**self.keys, **(_dataclass_keys(self.fields_of) if self.fields_of else {})}


def _constructed(path: Path, key: str, values: Any, make: Callable[[], Any]) -> Any:
    """``make()``, its ConfigError re-raised naming the file and the table."""
    try:
        return make()
    except errors.ConfigError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(path, key, values, str(e)) from None


def _build_protocol(path: Path, v: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    problem = _metric_problem(v.get("metric", Selection.metric), top.get("classes"))
    if problem:
        raise ConfigError(path, "protocol.metric", v["metric"], problem)
    proto = {k: v[k] for k in ("cv", "inner_cv", "seed", "scoring", "repeats") if k in v}
    sel = {k: v[k] for k in ("metric", "top_k") if k in v}
    return {"protocol": _constructed(path, "protocol", v, lambda: Protocol(**proto, positive=top.get("positive"))),
            "selection": _constructed(path, "protocol", v, lambda: Selection(**sel))}


def _build_features(path: Path, v: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    if v.get("nested") and not v.get("finetuned"):
        raise ConfigError(path, "features.nested", True,
                          "nested fine-tuning needs backbones in features.finetuned, and it names none")
    if not v.get("specs") and not v.get("finetuned"):
        raise ConfigError(path, "features.specs", v.get("specs", []),
                          "[features] names no specs and no fine-tuned backbones; give at least one")
    ext = {k: v[k] for k in ("image_size", "resize", "input", "batch_size", "boxes", "pixel_store", "preprocess_on")
           if k in v}
    options = _constructed(path, "features", v, lambda: ExtractOptions(**ext))
    lists = {k: tuple(v[k]) for k in ("specs", "finetuned") if k in v}
    return {"features": FeaturesConfig(**lists, nested=v.get("nested", False), extract=options)}


def _build_finetune(path: Path, v: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    return {"finetune": _finetune_config(path, "finetune", v)}


def _build_sweep(path: Path, v: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    heads = v.get("heads", list(SweepOptions.heads))
    extra = [h for h in v.get("ensemble_heads") or [] if h not in heads]
    if extra:
        raise ConfigError(path, "sweep.ensemble_heads", v["ensemble_heads"],
                          f"expected heads among sweep.heads ({', '.join(heads)}); {', '.join(extra)} is not")
    if "ensemble_members" in v and "ensemble_heads" in v:
        raise ConfigError(path, "sweep.ensemble_members", v["ensemble_members"],
                          "give ensemble_heads or ensemble_members, not both (ensemble_members lists the heads "
                          "that vote as well)")
    extra = [h for h in v.get("ensemble_members") or [] if not h.startswith("baseline:") and h not in heads]
    if extra:
        raise ConfigError(path, "sweep.ensemble_members", v["ensemble_members"],
                          f"expected heads among sweep.heads ({', '.join(heads)}) and baseline:<name> entries; "
                          f"{', '.join(extra)} is neither")
    extra = [h for h in v.get("grids") or {} if h not in heads]
    if extra:
        raise ConfigError(path, "sweep.grids", v["grids"],
                          f"expected grids for heads among sweep.heads ({', '.join(heads)}); "
                          f"{', '.join(extra)} is not swept")
    exe_keys = ("n_jobs", "memory_budget", "backend", "scheduler")  # how every stage runs: an Execution
    opts = {k: (tuple(x) if isinstance(x, list) and k != "subsets" else x) for k, x in v.items() if k not in exe_keys}
    exe = {k: v[k] for k in exe_keys if k in v}
    return {"sweep": _constructed(path, "sweep", v, lambda: SweepOptions(**opts)),
            "execution": _constructed(path, "sweep", v, lambda: Execution(**exe))}


def _build_baselines(path: Path, v: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    overrides = v.get("set", {})
    _finetune_config(path, "baselines.set", overrides)  # checked alone; laid over each baseline's own
    given = {k: (tuple(x) if isinstance(x, list) else x) for k, x in v.items() if k != "set"}
    return {"baselines": BaselinesConfig(**given, overrides=dict(overrides))}


def _build_report(path: Path, v: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    given = {k: (tuple(x) if isinstance(x, list) else x) for k, x in v.items()}  # decision_thresholds
    return {"report": _constructed(path, "report", v, lambda: ReportSettings(**given))}


def _build_export(path: Path, v: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    if v and "out" not in v:
        raise ConfigError(path, "export.out", expected="a folder for the model bundle (the section needs it)")
    return {"export": ExportSettings(**v)}


def _build_test(path: Path, v: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    base = path.resolve().parent
    sets = {}
    for name, entry in v.get("external", {}).items():
        where = f"test.external.{name}"
        try:
            check_external_name(name)
        except ExternalSetError as e:
            raise ConfigError(path, "test.external", v["external"], str(e)) from None
        if isinstance(entry, str):
            entry = {"manifest": entry}
        if not isinstance(entry, dict):
            raise ConfigError(path, where, entry, 'expected "manifest.csv" or {manifest = "...", ids = "..."}')
        unknown = sorted(set(entry) - {"manifest", "ids"})
        if unknown:
            raise ConfigError(path, where, entry, f"unknown key(s) {', '.join(unknown)}; known keys: ids, manifest")
        for key in ("manifest", "ids"):
            if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
                raise ConfigError(path, f"{where}.{key}", entry[key], "expected a path (a non-empty string)")
        if "manifest" not in entry:
            raise ConfigError(path, f"{where}.manifest", expected="the set's manifest (a path)")
        sets[name] = ExternalSpec((base / entry["manifest"]).resolve(),
                                  (base / entry["ids"]).resolve() if "ids" in entry else None)
    return {"test": TestConfig(external=sets)}


#: The config's tables: each one's keys (type, allowed values) and the typed objects it
#: becomes. A new section is one entry here (and its fields on ExperimentConfig).
SECTIONS: dict[str, _Section] = {
    "protocol": _Section({
        "cv": _Key("int", check=_at_least(2)),
        "inner_cv": _Key("int", check=_at_least(2)),
        "seed": _Key("int", check=_at_least(0)),
        "scoring": _Key("str", choices=SCORINGS),
        "repeats": _Key("int", check=_at_least(1)),
        "metric": _Key("str"),  # checked against the classes in _build_protocol
        "top_k": _Key("int", check=_at_least(1)),
    }, _build_protocol),
    "features": _Section({
        "specs": _Key("strs", check=_names()),
        "image_size": _Key("int", check=_at_least(16)),
        "finetuned": _Key("strs", check=_names()),
        "nested": _Key("bool"),
        "resize": _Key("str", choices=RESIZE_MODES),
        "input": _Key("str", choices=INPUT_MODES),
        "batch_size": _Key("int", check=_at_least(1)),
        "boxes": _Key("str", check=_non_empty),  # "manual" or "predicted:[backbone@]ft-..." (ExtractOptions)
        "pixel_store": _Key("bool"),  # keep decoded pixels in <cache>/pixels (ExtractOptions)
        "preprocess_on": _Key("str", choices=PREPROCESS_SITES),  # loader workers or the device (ExtractOptions)
    }, _build_features),
    "finetune": _Section({}, _build_finetune, fields_of=FineTuneConfig),
    "sweep": _Section({
        "heads": _Key("strs", check=_names(1)),
        "subsets": _Key("any", check=_subsets),
        "ensembles": _Key("bool"),
        "stacking": _Key("bool"),
        "grids": _Key("table", check=_grids),
        "ensemble_heads": _Key("strs", check=_names(1)),
        "ensemble_members": _Key("strs", check=_names(1)),  # heads and baseline:<name>
        "n_jobs": _Key("int", check=_n_jobs),
        "memory_budget": _Key("any", check=_memory_budget),  # "12GB", "50%", 0.5 (Execution)
        "backend": _Key("str", choices=BACKENDS),  # every stage's workers (Execution)
        "scheduler": _Key("str", check=_non_empty),  # with backend = "dask": "tcp://host:8786" or "local"
    }, _build_sweep),
    "baselines": _Section({
        "names": _Key("strs", check=_names()),
        "tune": _Key("bool"),
        "tune_cv": _Key("int", check=_at_least(2)),
        "set": _Key("table"),  # FineTuneConfig's fields, like [finetune]
        "val_fraction": _Key("float", check=_open_unit),
    }, _build_baselines),
    "report": _Section({
        "alpha": _Key("float", check=_open_unit),
        "publish": _Key("str", check=_non_empty),
        "recalibrate": _Key("str", choices=RECALIBRATION_METHODS),
        "decision_thresholds": _Key("any", check=decision_thresholds_problem),
    }, _build_report),
    "export": _Section({
        "out": _Key("str", check=_non_empty),
        "candidate": _Key("str", check=_non_empty),
        "above": _Key("str", check=_non_empty),
        "below": _Key("str", check=_non_empty),
    }, _build_export),
    "test": _Section({
        "external": _Key("table"),  # name = "manifest.csv" or {manifest = "...", ids = "..."}; see _build_test
    }, _build_test),
}

#: The keys of the config, per table ("" is the top level). [finetune] and
#: [baselines.set] also take FineTuneConfig's fields, typed from its annotations.
CONFIG_SCHEMA: dict[str, dict[str, _Key]] = {"": _TOP_KEYS, **{s: sec.keys for s, sec in SECTIONS.items()}}


def _dataclass_keys(cls: type) -> dict[str, _Key]:
    """A dataclass's fields as schema keys, typed from its annotations."""
    hints = typing.get_type_hints(cls)
    kinds = {int: "int", float: "float", str: "str", bool: "bool"}
    out = {}
    for f in dataclasses.fields(cls):
        ts = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)]
        ks = [kinds[t] for t in ts if t in kinds]
        out[f.name] = _Key(ks[0] if len(ks) == 1 else "any", check=None if len(ks) == 1 else _one_of_kinds(ks))
    if cls is FineTuneConfig:
        # FineTuneConfig reads a TOML flag as "balanced"/"none", and the old name
        # class_weights (a bool) too: accept what it accepts, let it check the value.
        out["class_weight"] = _Key("any", check=_one_of_kinds(["str", "bool"]))
        out["class_weights"] = _Key("any", check=_one_of_kinds(["bool", "str"]))
    return out


def _one_of_kinds(kinds: list[str]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if any(_is(k, v) for k in kinds) else "expected " + " or ".join(_TYPE_WORDS[k] for k in kinds)
    return check


def _finetune_config(path: Path, key: str, settings: dict[str, Any]) -> FineTuneConfig:
    """FineTuneConfig of checked ``settings``; its complaint names ``key.field``."""
    try:
        return FineTuneConfig.from_dict(settings)
    except errors.ConfigError as e:
        # "fine-tune config: epochs must be >= 1": name the key that says so.
        msg = str(e).removeprefix("fine-tune config: ")
        field_name = msg.split(" ", 1)[0]
        if field_name in settings:
            raise ConfigError(path, f"{key}.{field_name}", settings[field_name], msg) from None
        raise ConfigError(path, key, settings, msg) from None


def _checked_value(path: Path, where: str, key: str, spec: _Key, v: Any) -> None:
    """Raise a ConfigError if ``v`` is not of the key's type or not allowed."""
    if not _is(spec.kind, v):
        if spec.kind == "strs" and isinstance(v, str):
            # A single string is never split into characters nor silently wrapped.
            raise ConfigError(path, where, v, f"expected a list of strings; write {key} = [{_show(v)}]")
        raise ConfigError(path, where, v, f"expected {_TYPE_WORDS.get(spec.kind, 'another value')}")
    if spec.choices is not None and v not in spec.choices:
        raise ConfigError(path, where, v, f"expected one of {', '.join(_show(c) for c in spec.choices)}")
    problem = spec.check(v) if spec.check is not None else None
    if problem:
        raise ConfigError(path, where, v, problem)


def _checked_section(path: Path, raw: dict[str, Any], section: str, schema: dict[str, _Key]) -> dict[str, Any]:
    """One table's values, each checked; keys it does not give stay out (their type's default applies)."""
    prefix = f"{section}." if section else ""
    for key in raw:
        if key not in schema:
            where = f" in [{section}]" if section else ""
            raise ConfigError(path, prefix + key, raw[key],
                              f"unknown key; known keys{where}: {', '.join(sorted(schema))}")
    for key, spec in schema.items():
        if key in raw:
            _checked_value(path, prefix + key, key, spec, raw[key])
        elif spec.required:
            raise ConfigError(path, prefix + key)
    return dict(raw)


def _metric_problem(metric: str, classes: list[str] | None) -> str | None:
    """Why the records of this task will not hold ``metric`` (None if they will)."""
    if metric in list_metrics():  # the metric table, metrics registered by user code included
        return None
    binary = classes is not None and len(classes) == 2
    macro = [f"{m}_macro" for m in PER_CLASS_METRICS]
    if not binary:
        if metric in macro:
            return None
        name, _, rest = metric.partition("[")
        if name in PER_CLASS_METRICS and rest.endswith("]") and (classes is None or rest[:-1] in classes):
            return None
    allowed = ", ".join(list_metrics())
    if binary:
        return f"expected one of {allowed} (a binary task)"
    example = f"auc[{classes[0]}]" if classes else "auc[benign]"
    return f"expected one of {allowed}, {', '.join(macro)}, or a per-class METRIC[CLASS] such as {example}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise errors.MissingFileError(f"experiment config not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise errors.ConfigError(f"{path}: not valid TOML: {e}") from None


# ---------------------------------------------------------------------- the config
@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment config; ``raw`` is the TOML as read (recorded verbatim).

    Every value is checked on load, for type and value (:data:`CONFIG_SCHEMA`, the typed
    objects' own checks) and against the registries (backbones, taps, heads, baselines),
    so a bad config fails with a :class:`ConfigError` before any work.
    """

    path: Path
    raw: dict[str, Any]
    name: str
    manifest: Path
    out: Path
    cache: Path
    finetuned: Path | None
    classes: list[str] | None
    positive: str | None
    duplicates: str = "warn"
    protocol: Protocol = field(default_factory=Protocol)
    selection: Selection = field(default_factory=Selection)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    sweep: SweepOptions = field(default_factory=SweepOptions)
    execution: Execution = field(default_factory=Execution)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    report: ReportSettings = field(default_factory=ReportSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    test: TestConfig = field(default_factory=TestConfig)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExperimentConfig":
        """Read and check a config.

        Raises
        ------
        ConfigError
            Naming ``section.key``, the value and what is allowed: unknown or missing
            keys, wrong types (a single string where a list is expected included),
            values outside the allowed ones, unknown backbones, taps, heads, baselines,
            fine-tune settings, classes that do not hold the positive class, a metric
            the task's records will not hold, ``nested`` without fine-tuned backbones.
        FileNotFoundError
            The config does not exist.
        """
        path = Path(path)
        raw = _read_toml(path)
        top = _checked_section(path, raw, "", {**_TOP_KEYS, **{s: _Key("table") for s in SECTIONS}})
        if top.get("positive") is not None and top.get("classes") is not None \
                and top["positive"] not in top["classes"]:
            raise ConfigError(path, "positive", top["positive"],
                              f"expected one of the classes ({', '.join(top['classes'])})")
        typed: dict[str, Any] = {}
        for name, section in SECTIONS.items():
            values = _checked_section(path, top.get(name, {}), name, section.all_keys())
            if name == "baselines" and "set" in values:
                _checked_section(path, values["set"], "baselines.set", _dataclass_keys(FineTuneConfig))
            typed.update(section.build(path, values, top))
        cfg = cls(path=path, raw=raw, **_top_fields(path, top), **typed)
        cfg._check_names()
        return cfg

    def _check_names(self) -> None:
        """Every backbone, tap, head, grid parameter and baseline the config names exists."""
        def named(key: str, value: Any, fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except (KeyError, ValueError) as e:
                msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                raise ConfigError(self.path, key, value, msg) from None

        for spec in self.features.specs:
            r = named("features.specs", spec, lambda: FeatureRequest.parse(spec))
            b = named("features.specs", spec, lambda: get_backbone(r.backbone))
            for t in r.taps or ():
                named("features.specs", spec, lambda: b.tap(t))
        for name in self.features.finetuned:
            named("features.finetuned", name, lambda: get_backbone(name))
        for h in self.sweep.heads:
            named("sweep.heads", h, lambda: get_head(h))
        for h, grid in self.sweep.grids.items():
            bad = get_head(h).unknown_params(grid)
            if bad:
                raise ConfigError(self.path, f"sweep.grids.{h}", grid, f"unknown parameters {', '.join(bad)}; "
                                  f"valid: {', '.join(get_head(h).param_names())}")
        for b in self.baselines.names:
            named("baselines.names", b, lambda: get_baseline(b))
        members = self.sweep.ensemble_members
        for b in self.sweep.ensemble_baselines:
            named("sweep.ensemble_members", list(members or ()), lambda: get_baseline(b))
            if b not in self.baselines.names:  # `workbench run` would never compute its hybrids
                raise ConfigError(self.path, "sweep.ensemble_members", list(members or ()),
                                  f"baseline:{b} is not run: add {b!r} to baselines.names "
                                  f"({', '.join(self.baselines.names) or 'empty'})")


def _top_fields(path: Path, top: dict[str, Any]) -> dict[str, Any]:
    """The top level's fields, paths resolved against the config's folder."""
    base = path.resolve().parent
    name = top["name"]
    return {"name": name, "manifest": (base / top["manifest"]).resolve(),
            "out": (base / top.get("out", f"../runs/{name}")).resolve(),
            "cache": (base / top.get("cache", "../features_cache")).resolve(),
            "finetuned": (base / top["finetuned"]).resolve() if "finetuned" in top else None,
            "classes": top.get("classes"), "positive": top.get("positive"),
            **({"duplicates": top["duplicates"]} if "duplicates" in top else {})}


# ------------------------------------------------------------------------- stages
def run_experiment(config: str | os.PathLike | ExperimentConfig, *, progress: bool = True,
                   device: str | None = None, execution: Mapping[str, Any] | None = None) -> Path:
    """Run (or resume) every stage of the experiment; return the report folder.

    Stages: validate inputs, fine-tune (features), extract, sweep, baselines, hybrid
    ensembles (when [sweep] names baseline members), record the inputs, Grad-CAM,
    report. Each resumes what the cache, the fine-tuned store and the run folder hold.
    ``execution``: ``n_jobs``/``backend``/``scheduler`` over the config's (see
    :func:`with_execution`); every stage runs on it, on Dask ``"local"`` one local
    cluster for the whole run. Records are those of a local run.
    """
    cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.load(config)
    cfg = with_execution(cfg, **(execution or {}))
    # The fine-tuned store the config names, for this run only (weights ids resolve through it).
    with using_root(cfg.finetuned), shared_cluster(cfg.execution):
        manifest, duplicates, external = validate_inputs(cfg, progress=progress)
        finetuned = fine_tune_stage(cfg, manifest, device=device, progress=progress)
        specs = list(cfg.features.specs) + [f"{label}:{','.join(get_backbone(b).taps)}"
                                            for b, label in finetuned.items()]
        fs = extract_stage(cfg, manifest, specs, progress=progress, external=external)
        sweep_stage(cfg, manifest, fs, progress=progress, external=external)
        baselines_stage(cfg, manifest, device=device, progress=progress, external=external)
        hybrid_stage(cfg, manifest, fs, progress=progress, external=external)
        record_inputs(cfg, manifest, finetuned, specs, fs, duplicates, external=external)
        gradcam_stage(cfg)
        report = report_stage(cfg)
        export_stage(cfg, progress=progress)
        return report


def with_execution(cfg: ExperimentConfig, *, n_jobs: int | None = None, backend: str | None = None,
                   scheduler: str | None = None) -> ExperimentConfig:
    """``cfg`` with the given execution settings over its [sweep] ones (``None``: the
    config's). A backend other than ``dask`` drops the config's scheduler.

    Raises
    ------
    ConfigError
        A bad combination (``scheduler`` without ``backend = "dask"``, ``n_jobs = 0``), named.
    """
    given = {k: v for k, v in (("n_jobs", n_jobs), ("backend", backend), ("scheduler", scheduler)) if v is not None}
    if not given:
        return cfg
    if "backend" in given and given["backend"] != "dask" and "scheduler" not in given:
        given["scheduler"] = None
    return dataclasses.replace(cfg, execution=dataclasses.replace(cfg.execution, **given))


def validate_inputs(cfg: ExperimentConfig, *, progress: bool = True
                    ) -> tuple[Manifest, dict[str, Any], dict[str, Manifest]]:
    """The manifest to run on (validated, duplicates policy applied), the duplicates
    record and the [test] external sets (validated, classes selected).

    Opens the run folder: one made under another protocol is refused here, before any
    work, as are external images that also occur in the manifest and a set changed under
    a name the folder holds; the config goes into it verbatim (``experiment.toml``).
    """
    manifest, external = _external_sets(cfg)
    if cfg.classes:
        manifest = manifest.select_classes(cfg.classes)
    manifest = manifest.validate(progress=progress)  # warns of duplicate images
    manifest, duplicates = _apply_duplicates(cfg, manifest)
    external = {n: m.validate(progress=progress) for n, m in load_external(external, cfg.classes).items()}
    build_task(manifest, cfg.protocol, external).open_store(cfg.out)
    atomic_write(cfg.out / "experiment.toml", cfg.path.read_text().encode())
    return manifest, duplicates, external


def _external_sets(cfg: ExperimentConfig) -> tuple[Manifest, dict[str, Manifest]]:
    """The main manifest, less the rows held out as external sets, and the sets (as listed).

    A set given by ``ids`` of the main manifest itself is held out of it: those images
    leave the run's data (training and test split) and are only ever scored.

    Raises
    ------
    ConfigError
        An ids file naming ids its manifest lacks, or the main manifest given whole.
    MissingFileError
        An ids file that does not exist.
    """
    main = Manifest.load(cfg.manifest)
    sets, held = {}, set()
    for name, spec in cfg.test.external.items():
        same = spec.manifest == cfg.manifest
        m = main if same else Manifest.load(spec.manifest)
        if spec.ids is None:
            if same:
                raise ConfigError(cfg.path, f"test.external.{name}", str(spec.manifest),
                                  "the main manifest itself: give ids = \"FILE\" listing the images to hold out")
            sets[name] = m
            continue
        ids = _read_ids(spec.ids)
        known = set(m.ids)
        missing = [i for i in ids if i not in known]
        if missing:
            raise ConfigError(cfg.path, f"test.external.{name}.ids", str(spec.ids),
                              f"{len(missing)} id(s) not in {spec.manifest.name}: "
                              + ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else ""))
        sets[name] = m.subset(ids)
        if same:
            held.update(ids)
    if held:
        main = main.subset([i for i in main.ids if i not in held])
        logger.info(f"[{cfg.name}] {len(held)} image(s) of the manifest held out as external test set(s)")
    return main, sets


def _read_ids(path: Path) -> list[str]:
    """Ids listed one per line (blank lines and ``#`` comments skipped), each once."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise errors.MissingFileError(f"ids file not found: {path}") from None
    ids = [line.split("#", 1)[0].strip() for line in lines]
    return list(dict.fromkeys(i for i in ids if i))


def _pixel_store(cfg: ExperimentConfig) -> PixelStore | None:
    """The store extraction keeps beside the cache (``<cache>/pixels``), read by the
    fine-tuning stages too, or None with ``[features] pixel_store = false``."""
    return PixelStore(Path(cfg.cache) / "pixels") if cfg.features.extract.pixel_store else None


def fine_tune_stage(cfg: ExperimentConfig, manifest: Manifest, *, device: str | None = None,
                    progress: bool = True) -> dict[str, str]:
    """Fine-tune each of [features] finetuned (on the training split, or nested per fold).

    Returns backbone -> the fine-tuned label its feature blocks go under.
    """
    labels = {}
    pixels = _pixel_store(cfg)
    for backbone in cfg.features.finetuned:
        logger.info(f"[{cfg.name}] fine-tuning {backbone} for features")
        if cfg.features.nested:
            labels[backbone] = fine_tune_nested(backbone, manifest, cfg.finetune, protocol=cfg.protocol,
                                                device=device, progress=progress, execution=cfg.execution,
                                                pixels=pixels).label
        else:
            train_ids = [it.id for it in manifest if it.split != "test"]
            est = CNNClassifier(backbone, manifest, config=cfg.finetune, device=device, progress=progress,
                                pixels=pixels)
            if cfg.execution.backend == "dask":
                _fit_on_cluster(cfg.execution, est, train_ids, device)
            labels[backbone] = est.fit(train_ids).finetuned_.label  # from the store when the cluster trained it
    return labels


def _fit_on_cluster(execution: Execution, est: CNNClassifier, ids: list[str], device: str | None) -> None:
    """Train ``est``'s one network as a cluster task, on a ``GPU=1`` worker when it trains
    on a GPU (as nested members and baselines do), into the shared fine-tuned store."""
    # Paths resolved here: a worker may have started in another folder.
    pixels = est.pixels.root.resolve() if isinstance(est.pixels, PixelStore) else est.pixels
    worker = CNNClassifier(**{**est.get_params(), "progress": False, "pixels": pixels,
                              "root": str(resolved_root(est.root))})
    for wid in unordered(execution, _fit_unit, [(worker, ids)], resources=gpu_resources(device)):
        logger.info(f"fine-tuned {est.backbone} on the cluster: {wid}")


def _fit_unit(est: CNNClassifier, ids: list[str]) -> str:
    """A worker's fit: only the id comes back; the network is in the shared store."""
    return est.fit(ids).finetuned_.weights_id


def extract_stage(cfg: ExperimentConfig, manifest: Manifest, specs: list[str], *,
                  progress: bool = True, external: Mapping[str, Manifest] | None = None) -> FeatureSet:
    """Every feature block of the run (the external sets' images too), from the cache
    where it holds them."""
    logger.info(f"[{cfg.name}] features: {', '.join(specs)}")
    every = combine_external(manifest, external)[0]
    # Chunks of rows on the workers when the run is spread (extract() itself otherwise).
    return extract_on(cfg.execution, every, specs, cache=cfg.cache, options=cfg.features.extract,
                      progress=progress)


def sweep_stage(cfg: ExperimentConfig, manifest: Manifest, fs: FeatureSet, *, progress: bool = True,
                external: Mapping[str, Manifest] | None = None) -> None:
    """Heads over the block subsets, and their ensembles, into the run folder's records
    (each model fitted for the test split also scored on the external sets)."""
    sweep(manifest, fs, out=cfg.out, protocol=cfg.protocol, options=cfg.sweep, execution=cfg.execution,
          progress=progress, external=external)


def hybrid_stage(cfg: ExperimentConfig, manifest: Manifest, fs: FeatureSet, *, progress: bool = True,
                 external: Mapping[str, Manifest] | None = None) -> None:
    """Hybrid CNN + feature-head ensembles ([sweep] ensemble_members with ``baseline:``
    entries), once the baselines are recorded: the sweep again, which finds every head
    and plain ensemble recorded and computes only the hybrids (nothing, on a rerun)."""
    if cfg.sweep.ensemble_baselines and cfg.sweep.ensembles:
        sweep_stage(cfg, manifest, fs, progress=progress, external=external)


def baselines_stage(cfg: ExperimentConfig, manifest: Manifest, *, device: str | None = None,
                    progress: bool = True, external: Mapping[str, Manifest] | None = None) -> None:
    """End-to-end CNN baselines on the sweep's folds, into the same records (each test
    network also scored on the external sets)."""
    bl = cfg.baselines
    if bl.names:
        pixels = _pixel_store(cfg)
        run_baselines(manifest, list(bl.names), cfg.out, protocol=cfg.protocol, overrides=dict(bl.overrides),
                      tune=bl.tune, tune_cv=bl.tune_cv, val_fraction=bl.val_fraction, device=device,
                      progress=progress, execution=cfg.execution, external=external,
                      pixels=None if pixels is None else pixels.root)


def record_inputs(cfg: ExperimentConfig, manifest: Manifest, finetuned: dict[str, str], specs: list[str],
                  fs: FeatureSet, duplicates: dict[str, Any], *,
                  external: Mapping[str, Manifest] | None = None) -> None:
    """``finetuned.json`` and ``inputs.json``: what the run ran on, for the report."""
    atomic_write(cfg.out / "finetuned.json", (json.dumps(finetuned, indent=1, sort_keys=True) + "\n").encode())
    inputs = {"manifest": cfg.raw["manifest"], "manifest_file": str(cfg.manifest),
              "finetuned_root": str(resolved_root()), "cache_root": str(Path(cfg.cache).resolve()),
              "manifest_digest": manifest.digest(),
              "classes": manifest.classes, "n_images": len(manifest), "features": specs, "duplicates": duplicates,
              # What this config runs: the report shows these candidates only, so
              # records an earlier config left in the (append-only) folder stay out of it.
              "scope": {"blocks": sorted(fs.blocks), "heads": list(cfg.sweep.heads),
                        "baselines": list(cfg.baselines.names)}}
    if external:  # only then, so the file of a run without external sets keeps its bytes
        raw = cfg.raw.get("test", {}).get("external", {})
        inputs["external"] = {
            n: {"given": raw.get(n), "manifest_file": str(cfg.test.external[n].manifest),
                "ids_file": str(cfg.test.external[n].ids) if cfg.test.external[n].ids else None,
                "n_images": len(m), "manifest_digest": m.digest(),
                # A part of the main manifest held out of the run: the same collection, not another site.
                "held_out": cfg.test.external[n].manifest == cfg.manifest and cfg.test.external[n].ids is not None}
            for n, m in external.items()}
    atomic_write(cfg.out / "inputs.json", (json.dumps(inputs, indent=1, sort_keys=True) + "\n").encode())


def gradcam_stage(cfg: ExperimentConfig) -> list[Path]:
    """Grad-CAM maps of each baseline's test-split network, saved for the report.

    One ``gradcam/<network>.npz`` per network (:func:`workbench.report.gradcam.cam_path`),
    on up to :data:`GRID_MAX` test images of the positive class (or as many of each class);
    a network already saved is not computed again. Maps are computed on the CPU, as the
    report always did, so the figures keep their bytes.
    """
    store = ResultStore(cfg.out)
    proto = store.protocol()
    networks = _baseline_networks(store, cfg.baselines.names)
    todo = [n for n in networks if not cam_path(cfg.out, n).is_file()]
    if not todo:
        return [cam_path(cfg.out, n) for n in networks]
    # The manifest as the config names it (no duplicates dropped), as the report always read it.
    manifest = Manifest.load(cfg.manifest).select_classes(list(proto["classes"]))
    items = _cam_items(manifest, list(proto["classes"]), proto.get("positive"))
    items = list(manifest.subset([it.id for it in items]).validate(progress=False))
    for network in todo:
        logger.info(f"[{cfg.name}] Grad-CAM of {network}")
        try:
            CamSet.from_result(explain_on(cfg.execution, items, network, target="pred")).save(
                cam_path(cfg.out, network))
        except (FineTunedNotFoundError, FileNotFoundError) as e:
            # The report says the grid is missing and how to get it.
            logger.warning(f"[{cfg.name}] Grad-CAM of {network} skipped: {e}")
    return [p for p in (cam_path(cfg.out, n) for n in networks) if p.is_file()]


def _baseline_networks(store: ResultStore, names: tuple[str, ...]) -> list[str]:
    """``backbone@ft-...`` of each in-scope baseline's latest test-split record."""
    latest: dict[str, dict[str, Any]] = {}
    for r in store.current_records():
        if r.get("kind") == "baseline" and r.get("baseline") in names and r["fold"] == "test":
            latest[r["candidate"]] = r
    return [f"{r['backbone']}@{r['weights_id']}" for r in latest.values() if r.get("weights_id")]


def _cam_items(manifest: Manifest, classes: list[str], positive: str | None,
               max_images: int = GRID_MAX) -> list[Item]:
    """The test images a Grad-CAM grid shows: the positive class's, else as many of each
    class (first ids), so the grid is not all one class."""
    shown = [positive] if positive is not None else classes
    per_class = {c: sorted((it for it in manifest if it.split == "test" and it.label == c), key=lambda it: it.id)
                 for c in shown}
    return [it for c in shown for it in per_class[c][:max(1, max_images // len(shown))]][:max_images]


def report_stage(cfg: ExperimentConfig) -> Path:
    """The report, from the run folder's files alone; copied beside the config when [report] publish says so."""
    report = build_report(cfg.out)
    if cfg.report.publish:  # a copy beside the config, e.g. to commit with it
        dest = (cfg.path.resolve().parent / cfg.report.publish).resolve()
        # The report's own folders are replaced, not merged, so no stale figure or table
        # stays in a published copy; other files there (e.g. the manifest) are kept.
        for owned in ("figures", "tables"):
            shutil.rmtree(dest / owned, ignore_errors=True)
        shutil.copytree(report, dest, dirs_exist_ok=True)
        logger.info(f"[{cfg.name}] report copied to {dest}")
    return report


def export_stage(cfg: ExperimentConfig, *, progress: bool = True) -> Path | None:
    """The model bundle [export] asks for (replaced on every run: the run may have changed)."""
    if not cfg.export.out:
        return None
    from workbench.bundle.export import Recommendation, export_model

    e = cfg.export
    base = Recommendation()
    rec = Recommendation(above=e.above or base.above, below=e.below or base.below)
    out = (cfg.path.resolve().parent / e.out).resolve()
    export_model(cfg.out, out, candidate=e.candidate, cache=cfg.cache, recommendation=rec, overwrite=True,
                 progress=progress)
    logger.info(f"[{cfg.name}] model bundle of {e.candidate} written to {out}")
    return out


def _apply_duplicates(cfg: ExperimentConfig, manifest: Manifest) -> tuple[Manifest, dict[str, Any]]:
    """Apply the config's ``duplicates`` policy to a validated manifest.

    Returns the manifest to run on and the record for ``inputs.json`` (and so the
    report's ``provenance.json``): the policy, every group of byte-identical images
    (ids, labels, splits, conflicts) and the ids dropped.

    Raises
    ------
    ConfigError
        With ``duplicates = "error"`` when there is any group, naming every one.
    """
    groups = manifest.duplicates()
    record: dict[str, Any] = {"policy": cfg.duplicates, "groups": [g.to_dict() for g in groups], "dropped": []}
    if not groups:
        return manifest, record
    if cfg.duplicates == "error":
        listing = "; ".join(g.describe() for g in groups)
        raise ConfigError(cfg.path, "duplicates", "error",
                          f"the manifest holds {len(groups)} image(s) under more than one id: {listing}. "
                          'Fix the manifest, or set duplicates = "drop" or "warn"')
    if cfg.duplicates == "drop":
        manifest, dropped = manifest.drop_duplicates()
        record["dropped"] = dropped
        logger.info(f"[{cfg.name}] duplicates = \"drop\": left out {len(dropped)} image(s): {', '.join(dropped)}")
    return manifest, record


def build_report(run: str | os.PathLike) -> Path:
    """Rebuild ``RUN/report/`` (tables, figures, provenance) from the run folder's files alone."""
    return write_report(Path(run))
