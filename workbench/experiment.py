"""One experiment from one TOML file: extract -> (fine-tune) -> sweep -> baselines -> search -> report.

``workbench run experiments/NAME.toml`` runs every stage, each resuming what the cache,
the fine-tuned store and the run folder already hold, so a second run computes nothing;
``workbench report runs/NAME`` rebuilds the report from the records alone.

Config (paths relative to the config file)::

    name = "busi_benign_malignant"
    manifest = "../../shared/data/busi/labels.csv"
    classes = ["benign", "malignant"]
    positive = "malignant"
    out = "runs/busi_benign_malignant"        # default: runs/<name> beside the config's folder
    cache = "features_cache"
    finetuned = "finetuned"                   # the fine-tuned store (default: $WORKBENCH_FINETUNED or ./finetuned)
    duplicates = "warn"                       # byte-identical images under several ids: "warn", "drop", "error"

    [protocol]   cv = 5, inner_cv = 3, seed = 0, scoring = "auc", metric = "auc", top_k = 3
    [features]   specs = ["tf_efficientnet_lite0:avgpool", ...], image_size = 224 (optional)
                 finetuned = ["tf_efficientnet_lite0"]  (adds BACKBONE@ft-...:taps blocks)
                 nested = false                        (true: BACKBONE@ftn-..., clean CV)
    [finetune]   any FineTuneConfig field (epochs, lr, image_size, cut_remain, ...)
    [sweep]      heads = ["svm-rbf", "rf"], subsets = "all", ensembles = true, stacking = false,
                 [sweep.grids] svm-rbf = {C = [1, 10]}
    [baselines]  names = ["lite0"], tune = false, [baselines.set] epochs = 5

Every value is checked on load (:data:`CONFIG_SCHEMA`: type, allowed values, default);
a :class:`ConfigError` names ``section.key``, the value and what is allowed. A key that
takes a list takes a TOML list only: ``classes = "benign"`` is refused (never split into
characters, never wrapped), with the list to write instead.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import errors

__all__ = ["ExperimentConfig", "ConfigError", "run_experiment", "build_report", "CONFIG_SCHEMA", "DUPLICATE_POLICIES"]

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
    """One config key: its type, default and allowed values.

    ``kind`` is ``str``, ``int``, ``float``, ``bool``, ``strs`` (a list of strings; a
    single string is refused, never split or wrapped), ``table`` or ``any`` (checked
    by ``check``). ``check`` returns what is allowed, in words, when a well-typed value
    is not; ``default`` ``_MISSING`` leaves an optional key out of the section.
    """

    kind: str
    default: Any = _MISSING
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


#: The config's keys, per section ("" is the top level): type, default, allowed values.
CONFIG_SCHEMA: dict[str, dict[str, _Key]] = {
    "": {
        "name": _Key("str", required=True, check=_non_empty),
        "manifest": _Key("str", required=True, check=_non_empty),
        "classes": _Key("strs", None, check=_names(2)),
        "positive": _Key("str", None, check=_non_empty),
        "out": _Key("str", check=_non_empty),
        "cache": _Key("str", check=_non_empty),
        "finetuned": _Key("str", check=_non_empty),
        "duplicates": _Key("str", "warn", choices=DUPLICATE_POLICIES),
    },
    "protocol": {
        "cv": _Key("int", 5, check=_at_least(2)),
        "inner_cv": _Key("int", 3, check=_at_least(2)),
        "seed": _Key("int", 0, check=_at_least(0)),
        "scoring": _Key("str", "auc", choices=("auc", "balanced_accuracy", "accuracy")),
        "metric": _Key("str", "auc"),  # checked against the classes in _check_values
        "top_k": _Key("int", 3, check=_at_least(1)),
    },
    "features": {
        "specs": _Key("strs", [], check=_names()),
        "image_size": _Key("int", check=_at_least(16)),
        "finetuned": _Key("strs", [], check=_names()),
        "nested": _Key("bool", False),
        "resize": _Key("str", choices=("squash", "crop", "letterbox")),
        "input": _Key("str", choices=("whole", "box")),
        "batch_size": _Key("int", check=_at_least(1)),
    },
    "finetune": {},  # FineTuneConfig's fields, typed from its annotations (_finetune_keys)
    "sweep": {
        "heads": _Key("strs", ["svm-rbf", "rf"], check=_names(1)),
        "subsets": _Key("any", "all", check=_subsets),
        "ensembles": _Key("bool", True),
        "stacking": _Key("bool", False),
        "grids": _Key("table", check=_grids),
        "ensemble_heads": _Key("strs", check=_names(1)),
        "n_jobs": _Key("int", 1, check=_n_jobs),
    },
    "baselines": {
        "names": _Key("strs", [], check=_names()),
        "tune": _Key("bool", False),
        "tune_cv": _Key("int", 6, check=_at_least(2)),
        "set": _Key("table", {}),  # FineTuneConfig's fields, like [finetune]
        "val_fraction": _Key("float", 0.15, check=_open_unit),
    },
    "report": {
        "alpha": _Key("float", 0.05, check=_open_unit),
        "publish": _Key("str", check=_non_empty),
    },
}


def _finetune_keys() -> dict[str, _Key]:
    """FineTuneConfig's fields as schema keys, typed from its annotations."""
    import dataclasses
    import typing

    from workbench.training.finetune import FineTuneConfig

    hints = typing.get_type_hints(FineTuneConfig)
    kinds = {int: "int", float: "float", str: "str", bool: "bool"}
    out = {}
    for f in dataclasses.fields(FineTuneConfig):
        ts = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)]
        ks = [kinds[t] for t in ts if t in kinds]
        out[f.name] = _Key(ks[0] if len(ks) == 1 else "any",
                           check=None if len(ks) == 1 else _one_of_kinds(ks))
    if "class_weight" in out:
        # FineTuneConfig reads a TOML flag as "balanced"/"none", and the old name
        # class_weights (a bool) too: accept what it accepts, let it check the value.
        out["class_weight"] = _Key("any", check=_one_of_kinds(["str", "bool"]))
        out["class_weights"] = _Key("any", check=_one_of_kinds(["bool", "str"]))
    return out


def _one_of_kinds(kinds: list[str]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if any(_is(k, v) for k in kinds) else "expected " + " or ".join(_TYPE_WORDS[k] for k in kinds)
    return check


def _checked_section(path: Path, raw: dict[str, Any], section: str, schema: dict[str, _Key]) -> dict[str, Any]:
    """One section's values, type-checked, with its defaults filled in."""
    prefix = f"{section}." if section else ""
    for key in raw:
        if key not in schema:
            where = f" in [{section}]" if section else ""
            raise ConfigError(path, prefix + key, raw[key],
                              f"unknown key; known keys{where}: {', '.join(sorted(schema))}")
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        where = prefix + key
        if key not in raw:
            if spec.required:
                raise ConfigError(path, where)
            if spec.default is not _MISSING:
                out[key] = json.loads(json.dumps(spec.default))  # a fresh copy of lists
            continue
        v = raw[key]
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
        out[key] = v
    return out


def _metric_problem(metric: str, classes: list[str] | None) -> str | None:
    """Why the records of this task will not hold ``metric`` (None if they will)."""
    from workbench.evaluation.metrics import METRICS, PER_CLASS_METRICS

    if metric in METRICS:
        return None
    binary = classes is not None and len(classes) == 2
    macro = [f"{m}_macro" for m in PER_CLASS_METRICS]
    if not binary:
        if metric in macro:
            return None
        name, _, rest = metric.partition("[")
        if name in PER_CLASS_METRICS and rest.endswith("]") and (classes is None or rest[:-1] in classes):
            return None
    allowed = ", ".join(METRICS)
    if binary:
        return f"expected one of {allowed} (a binary task)"
    example = f"auc[{classes[0]}]" if classes else "auc[benign]"
    return f"expected one of {allowed}, {', '.join(macro)}, or a per-class METRIC[CLASS] such as {example}"


@dataclass
class ExperimentConfig:
    """A validated experiment config; ``raw`` is the TOML as read (recorded verbatim).

    Every value is checked on load against :data:`CONFIG_SCHEMA` (type, allowed values)
    and against the registries (backbones, taps, heads, baselines, fine-tune settings),
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
    protocol: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

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
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"experiment config not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
        sections = [s for s in CONFIG_SCHEMA if s]
        top_schema = {**CONFIG_SCHEMA[""], **{s: _Key("table") for s in sections}}
        top = _checked_section(path, raw, "", top_schema)
        sec = {s: _checked_section(path, top.get(s, {}), s, CONFIG_SCHEMA[s] if s != "finetune" else _finetune_keys())
               for s in sections}
        sec["baselines"]["set"] = _checked_section(path, sec["baselines"]["set"], "baselines.set", _finetune_keys())
        base = path.resolve().parent
        name = top["name"]
        cfg = cls(
            path=path, raw=raw, name=name, manifest=(base / top["manifest"]).resolve(),
            out=(base / top.get("out", f"../runs/{name}")).resolve(),
            cache=(base / top.get("cache", "../features_cache")).resolve(),
            finetuned=(base / top["finetuned"]).resolve() if "finetuned" in top else None,
            classes=top["classes"], positive=top["positive"], duplicates=top["duplicates"],
            protocol=sec["protocol"], features=sec["features"], finetune=sec["finetune"], sweep=sec["sweep"],
            baselines=sec["baselines"], report=sec["report"],
        )
        if isinstance(cfg.sweep["subsets"], list) and len(cfg.sweep["subsets"]) == 2 \
                and all(isinstance(k, int) for k in cfg.sweep["subsets"]):
            cfg.sweep["subsets"] = tuple(cfg.sweep["subsets"])  # sizes (k1, k2), as sweep() takes them
        cfg._check_values()
        cfg._check_names()
        return cfg

    def _check_values(self) -> None:
        """Checks across keys (each key alone is checked by the schema)."""
        p = self.path
        if self.positive is not None and self.classes is not None and self.positive not in self.classes:
            raise ConfigError(p, "positive", self.positive, f"expected one of the classes ({', '.join(self.classes)})")
        problem = _metric_problem(self.protocol["metric"], self.classes)
        if problem:
            raise ConfigError(p, "protocol.metric", self.protocol["metric"], problem)
        if self.features["nested"] and not self.features["finetuned"]:
            raise ConfigError(p, "features.nested", True,
                              "nested fine-tuning needs backbones in features.finetuned, and it names none")
        if not self.features["specs"] and not self.features["finetuned"]:
            raise ConfigError(p, "features.specs", self.features["specs"],
                              "[features] names no specs and no fine-tuned backbones; give at least one")
        heads = self.sweep["heads"]
        extra = [h for h in self.sweep.get("ensemble_heads") or [] if h not in heads]
        if extra:
            raise ConfigError(p, "sweep.ensemble_heads", self.sweep["ensemble_heads"],
                              f"expected heads among sweep.heads ({', '.join(heads)}); {', '.join(extra)} is not")
        extra = [h for h in self.sweep.get("grids") or {} if h not in heads]
        if extra:
            raise ConfigError(p, "sweep.grids", self.sweep["grids"],
                              f"expected grids for heads among sweep.heads ({', '.join(heads)}); "
                              f"{', '.join(extra)} is not swept")

    def _check_names(self) -> None:
        from workbench.backbones.registry import get_backbone
        from workbench.baselines.configs import get_baseline
        from workbench.training.finetune import FineTuneConfig
        from workbench.features.extraction import FeatureRequest
        from workbench.heads.zoo import get_head

        def named(key: str, value: Any, fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except (KeyError, ValueError) as e:
                msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                raise ConfigError(self.path, key, value, msg) from None

        for spec in self.features["specs"]:
            r = named("features.specs", spec, lambda: FeatureRequest.parse(spec))
            b = named("features.specs", spec, lambda: get_backbone(r.backbone))
            for t in r.taps or ():
                named("features.specs", spec, lambda: b.tap(t))
        for name in self.features["finetuned"]:
            named("features.finetuned", name, lambda: get_backbone(name))
        for h in self.sweep["heads"]:
            named("sweep.heads", h, lambda: get_head(h))
        for h, grid in (self.sweep.get("grids") or {}).items():
            valid = get_head(h).pipeline().named_steps["clf"].get_params(deep=False)
            bad = sorted(set(grid) - set(valid))
            if bad:
                raise ConfigError(self.path, f"sweep.grids.{h}", grid,
                                  f"unknown parameters {', '.join(bad)}; valid: {', '.join(sorted(valid))}")
        for b in self.baselines["names"]:
            named("baselines.names", b, lambda: get_baseline(b))
        for key, settings in (("finetune", self.finetune), ("baselines.set", self.baselines["set"])):
            try:
                FineTuneConfig.from_dict(settings)
            except ValueError as e:
                # "fine-tune config: epochs must be >= 1": name the key that says so.
                msg = str(e).removeprefix("fine-tune config: ")
                field_name = msg.split(" ", 1)[0]
                if field_name in settings:
                    raise ConfigError(self.path, f"{key}.{field_name}", settings[field_name], msg) from None
                raise ConfigError(self.path, key, settings, msg) from None


def _log(progress: bool):
    return (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)


def run_experiment(config: str | os.PathLike | ExperimentConfig, *, progress: bool = True,
                   device: str | None = None) -> Path:
    """Run (or resume) every stage of the experiment; return the report folder."""
    cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.load(config)
    from workbench.backbones.finetuned import using_root

    # The fine-tuned store the config names, for this run only (weights ids resolve through it).
    with using_root(cfg.finetuned):
        return _run(cfg, progress, device)


def _run(cfg: "ExperimentConfig", progress: bool, device: str | None) -> Path:
    from workbench.training.finetune import FineTuneConfig
    from workbench.baselines.run import run_baselines
    from workbench.data.manifest import Manifest
    from workbench.features.extraction import extract
    from workbench.search.sweep import sweep

    say = _log(progress)
    p = cfg.protocol
    manifest = Manifest.load(cfg.manifest)
    if cfg.classes:
        manifest = manifest.select_classes(cfg.classes)
    manifest = manifest.validate(progress=progress)  # warns of duplicate images
    manifest, duplicates = _apply_duplicates(cfg, manifest, say)
    # A run folder made under another protocol is refused before any work.
    from workbench.evaluation.protocol import Protocol, build_task

    build_task(manifest, Protocol(cv=p["cv"], inner_cv=p["inner_cv"], seed=p["seed"], scoring=p["scoring"],
                                  positive=cfg.positive)).open_store(cfg.out)
    (cfg.out / "experiment.toml").write_text(cfg.path.read_text())  # the config, verbatim
    ext = {k: cfg.features[k] for k in ("image_size", "resize", "input", "batch_size") if k in cfg.features}

    # 1. fine-tuned features ("with fine-tuning")
    specs = list(cfg.features["specs"])
    ft_config = FineTuneConfig.from_dict(cfg.finetune)
    finetuned_labels = {}
    for backbone in cfg.features["finetuned"]:
        say(f"[{cfg.name}] fine-tuning {backbone} for features")
        if cfg.features["nested"]:
            from workbench.training.nested import fine_tune_nested

            ns = fine_tune_nested(backbone, manifest, ft_config, cv=p["cv"], inner_cv=p["inner_cv"], seed=p["seed"],
                                  scoring=p["scoring"], positive=cfg.positive, device=device, progress=progress,
                                  log=say)
            label = ns.label
        else:
            from workbench.baselines.estimator import CNNClassifier

            train_ids = [it.id for it in manifest if it.split != "test"]
            est = CNNClassifier(backbone, manifest, config=ft_config, device=device, progress=progress).fit(train_ids)
            label = est.finetuned_.label
        finetuned_labels[backbone] = label
        from workbench.backbones.registry import get_backbone

        taps = ",".join(get_backbone(backbone).taps)
        specs.append(f"{label}:{taps}")

    # 2. extraction (cache), 3. sweep
    say(f"[{cfg.name}] features: {', '.join(specs)}")
    fs = extract(manifest, specs, cache=cfg.cache, progress=progress, log=say, **ext)
    sw = cfg.sweep
    sweep(manifest, fs, out=cfg.out, heads=sw["heads"], subsets=sw["subsets"], cv=p["cv"], inner_cv=p["inner_cv"],
          seed=p["seed"], scoring=p["scoring"], grids=sw.get("grids"), ensembles=sw["ensembles"],
          ensemble_heads=sw.get("ensemble_heads"), stacking=sw["stacking"], positive=cfg.positive,
          n_jobs=sw.get("n_jobs", 1), progress=progress, log=say)

    # 4. end-to-end baselines on the same folds
    bl = cfg.baselines
    if bl["names"]:
        run_baselines(manifest, bl["names"], cfg.out, cv=p["cv"], inner_cv=p["inner_cv"], seed=p["seed"],
                      scoring=p["scoring"], positive=cfg.positive, overrides=bl["set"], tune=bl["tune"],
                      tune_cv=bl.get("tune_cv", 6), val_fraction=bl.get("val_fraction", 0.15), device=device,
                      progress=progress, log=say)
    (cfg.out / "finetuned.json").write_text(json.dumps(finetuned_labels, indent=1, sort_keys=True) + "\n")
    from workbench.backbones.finetuned import default_root

    inputs = {"manifest": cfg.raw["manifest"], "manifest_file": str(cfg.manifest),
              "finetuned_root": str(default_root().resolve()), "manifest_digest": manifest.digest(), "classes": manifest.classes,
              "n_images": len(manifest), "features": specs, "duplicates": duplicates,
              # What this config runs: the report shows these candidates only, so
              # records an earlier config left in the (append-only) folder stay out of it.
              "scope": {"blocks": sorted(fs.blocks), "heads": list(sw["heads"]), "baselines": list(bl["names"])}}
    (cfg.out / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
    # 5. search and report, from the records alone
    report = build_report(cfg.out)
    publish = cfg.report.get("publish")
    if publish:  # a copy beside the config, e.g. to commit with it
        import shutil

        dest = (cfg.path.resolve().parent / publish).resolve()
        shutil.copytree(report, dest, dirs_exist_ok=True)
        say(f"[{cfg.name}] report copied to {dest}")
    return report


def _apply_duplicates(cfg: ExperimentConfig, manifest, say) -> tuple[Any, dict[str, Any]]:
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
        say(f"[{cfg.name}] duplicates = \"drop\": left out {len(dropped)} image(s): {', '.join(dropped)}")
    return manifest, record


def build_report(run: str | os.PathLike) -> Path:
    """Rebuild ``RUN/report/`` (tables, figures, provenance) from the run folder's records."""
    from workbench.report.build import write_report

    return write_report(Path(run))
