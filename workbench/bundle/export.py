"""``workbench export``: a run's candidate as a self-contained, pickle-free model bundle.

Layout of ``MODEL_DIR``::

    bundle.json        format, what was exported from where, SHA-256 of every other file
    model.json         kind, classes, threshold, feature blocks, members, rule, card figures
    MODEL_CARD.md      the model card (training data, protocol, CV and test figures, use)
    heads/<n>.skops    fitted heads (and a stack's meta-learner), skops format
    weights/<backbone>/<id>/  fine-tuned networks the features (or the baseline) need; for
                       blocks on predicted boxes also the Y-Net that predicts them

Heads are refitted on the whole training split with the hyper-parameters the run chose
(one grid point, the run's inner folds and seed), which is the fit behind the run's test
record: the bundle predicts the run's test split with the recorded probabilities.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from workbench.bundle.card import build_card, write_card
from workbench.bundle.files import BundleError, save_fitted, write_index, write_json
from workbench.bundle.source import RunSource, RunSourceError
from workbench.backbones.finetuned import finetuned_dir, is_finetuned_id
from workbench.core.provenance import environment
from workbench.heads.ensembles import fit_stack
from workbench.heads.tuned import TunedHead
from workbench.heads.zoo import get_head
from workbench.evaluation.settings import is_cv_fold

__all__ = ["Recommendation", "export_model", "resolve_candidate"]

logger = logging.getLogger(__name__)

MEMBER_KINDS = ("head",)
ENSEMBLE_KINDS = ("vote-soft", "vote-hard", "stack")


@dataclass(frozen=True)
class Recommendation:
    """What the page and ``workbench predict`` say for a probability of the positive class.

    ``above`` at or above the bundle's threshold, ``below`` under it; ``{positive}``,
    ``{p}`` and ``{threshold}`` are filled in.
    """

    above: str = "{positive} likely (P = {p:.3f} >= threshold {threshold:.3f}): further work-up recommended"
    below: str = "{positive} unlikely (P = {p:.3f} < threshold {threshold:.3f})"

    def to_dict(self) -> dict[str, str]:
        return {"above": self.above, "below": self.below}


def resolve_candidate(source: RunSource, candidate: str) -> str:
    """``selected``, ``top-K`` or a candidate's name -> the name (from the run's report search)."""
    from workbench.report.build import reported_search

    if candidate == "selected" or candidate.startswith("top-"):
        k = 1 if candidate == "selected" else _top_k(candidate)
        result, settings = reported_search(source.run)
        if len(result.selected) < k:
            raise RunSourceError(f"--candidate {candidate}: the run's report selects {len(result.selected)} "
                                 f"candidate(s) (top_k = {settings['top_k']}); choose one of them by name")
        return result.selected[k - 1]
    source.record(candidate)  # unknown names fail here, with close matches
    return candidate


def _top_k(text: str) -> int:
    try:
        k = int(text[4:])
    except ValueError:
        k = 0
    if k < 1:
        raise RunSourceError(f"--candidate {text!r}: expected selected, top-K (K >= 1) or a candidate's name")
    return k


def _member_spec(source: RunSource, record: dict[str, Any], index: int, out: Path) -> dict[str, Any]:
    """Refit one head candidate on the training split (the run's test-fold fit); save it."""
    blocks = [source.block_def(b, record) for b in record["blocks"]]
    parts = [source.training_rows(b) for b in blocks]
    X = np.concatenate([p[0] for p in parts], axis=1) if len(parts) > 1 else parts[0][0]
    y, groups = parts[0][1], parts[0][2]
    p = source.protocol
    params = dict(record.get("best_params") or {})
    # One grid point: the inner folds then only fit the calibration's out-of-fold scores,
    # exactly those of the chosen point in the run's full search.
    est = TunedHead(record["head"], grid={k: [v] for k, v in params.items()}, inner_splits=p["inner_cv"],
                    scoring=p["scoring"], random_state=p["seed"])
    est.fit(X, y, groups=groups)
    path = out / "heads" / f"{index}.skops"
    save_fitted(est.estimator_, path)
    cal = est.calibrator_
    return {"name": record["candidate"], "head": record["head"], "blocks": [b.name for b in blocks],
            "params": params, "estimator": path.relative_to(out).as_posix(),
            "calibrate": bool(get_head(record["head"]).calibrate),
            "calibrator": None if cal is None else [list(map(float, c)) for c in cal.coef],
            "class_codes": [int(c) for c in est.classes_], "_blocks": blocks}


def _copy_weights(source: RunSource, backbone: str, weights_id: str, out: Path) -> dict[str, Any]:
    """Copy a fine-tuned network (weights file and meta.json) into the bundle."""
    src = finetuned_dir(backbone, weights_id, source.finetuned_root)
    if not (src / "meta.json").is_file():
        raise RunSourceError(f"fine-tuned network {backbone}@{weights_id} is not in {source.finetuned_root} "
                             f"(expected {src}); give the run's store: --finetuned DIR")
    dest = finetuned_dir(backbone, weights_id, out / "weights")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("weights.pth", "weights.safetensors", "meta.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    return {"backbone": backbone, "weights_id": weights_id, "folder": dest.relative_to(out).as_posix()}


def _features_model(source: RunSource, record: dict[str, Any], out: Path) -> dict[str, Any]:
    """Members (refitted heads), their blocks and the ensemble's rule."""
    kind = record["kind"]
    if record.get("baselines"):
        # A bundle runs either feature heads or one network; a hybrid needs both at once.
        raise BundleError(f"{record['candidate']!r} is a hybrid ensemble (feature heads + the CNN "
                          f"{', '.join(record['baselines'])}): bundles do not hold hybrids yet; export its "
                          f"feature-only twin or the CNN baseline instead (--candidate NAME)")
    if kind == "head":
        member_records = [record]
    else:
        member_records = [source.record(m) for m in record["members"]]
    _check_inputs(record["candidate"], [source.block_def(b, r) for r in member_records for b in r["blocks"]])
    members = [_member_spec(source, r, i, out) for i, r in enumerate(member_records)]
    blocks: dict[str, Any] = {}
    for m in members:
        for b in m.pop("_blocks"):
            blocks.setdefault(b.name, b)
    spec: dict[str, Any] = {"members": members, "blocks": [b.to_dict() for b in blocks.values()]}
    if kind == "vote-hard" and record.get("thresholds") is not None:
        spec["member_thresholds"] = [float(t) for t in record["thresholds"]]
    if kind == "stack":
        task = source.task
        folds = [g for g, _, _ in task.outer if is_cv_fold(g)]
        train_p = [np.concatenate([source.store.predictions(source.record(m["name"], g))["proba"] for g in folds])
                   for m in members]
        y = np.concatenate([task.y[task.eval_rows[g]] for g in folds])
        meta = fit_stack(train_p, y, seed=source.protocol["seed"])
        save_fitted(meta, out / "heads" / "stack.skops")
        spec["stack"] = "heads/stack.skops"
    weights = {}
    for b in blocks.values():
        if is_finetuned_id(b.weights_id):
            weights[(b.backbone, b.weights_id)] = _copy_weights(source, b.backbone, b.weights_id, out)
    box_fields = next((b.boxes for b in blocks.values() if b.boxes is not None), None)
    if box_fields is not None:
        # The Y-Net that crops each new image to its predicted box travels with the bundle.
        key = (box_fields["backbone"], box_fields["weights_id"])
        if key not in weights:
            weights[key] = _copy_weights(source, *key, out)
        spec["box_source"] = {"source": "predicted", "backbone": key[0], "weights_id": key[1],
                              "weights_digest": box_fields["weights_digest"], "threshold": box_fields["threshold"],
                              "folder": weights[key]["folder"]}
    spec["weights"] = list(weights.values())
    spec["input_mode"] = next(iter(blocks.values())).preprocess["input"] if blocks else "whole"
    return spec


def _check_inputs(name: str, blocks: Sequence[Any]) -> None:
    """One model reads one kind of input: refuse blocks mixing whole images and boxes, or
    manual and predicted boxes (or two Y-Nets' boxes), before any head is refitted."""
    modes = {b.preprocess["input"] for b in blocks}
    sources = {json.dumps(b.boxes, sort_keys=True) for b in blocks}
    if len(modes) > 1 or len(sources) > 1:
        what = (f"input modes {sorted(modes)}" if len(modes) > 1 else
                "boxes of several sources (manual and a Y-Net's predicted ones, or two Y-Nets)")
        raise BundleError(f"{name!r}: its blocks mix {what} ({', '.join(sorted({b.name for b in blocks}))}); a "
                          f"bundle reads one kind of input: export a candidate whose blocks share it")


def _baseline_model(source: RunSource, record: dict[str, Any], out: Path) -> dict[str, Any]:
    """The baseline's test network (trained on the training split) and its input; a Y-Net
    (segmentation + classification) is marked ``network.model = "ynet"``."""
    from workbench.backbones.registry import get_backbone

    backbone, wid = record["backbone"], record["weights_id"]
    copied = _copy_weights(source, backbone, wid, out)
    meta = json.loads((out / copied["folder"] / "meta.json").read_text())
    spec = get_backbone(backbone)
    dc = spec.data_config(meta["base_weights"])
    network = {"backbone": backbone, "weights_id": wid, "image_size": int(meta["image_size"]),
               "resize": meta["resize"], "interpolation": dc.interpolation, "mean": list(dc.mean),
               "std": list(dc.std), "classes": list(meta["classes"])}
    if (meta.get("config") or {}).get("model") == "ynet":
        # Only a Y-Net says so: a classifier's model.json stays as it was.
        network["model"] = "ynet"
    return {"network": network, "weights": [copied], "input_mode": "whole", "members": [], "blocks": []}


def export_model(run: str | Path, out: str | Path, *, candidate: str = "selected",
                 manifest: str | Path | None = None, cache: str | Path | None = None,
                 finetuned: str | Path | None = None, recommendation: Recommendation | None = None,
                 overwrite: bool = False, progress: bool = True) -> Path:
    """Export one candidate of ``run`` as a model bundle in ``out``.

    Parameters
    ----------
    run
        Run folder (``workbench run`` or a sweep's ``--out``).
    out
        Bundle folder to create (refused if it exists, unless ``overwrite``).
    candidate
        ``selected`` (the report's pick), ``top-K``, or a candidate's name
        (``"[L0+L1] vote-soft(svm-rbf+rf)"``, ``"CNN lite0"``).
    manifest, cache, finetuned
        The run's manifest, feature cache and fine-tuned store (defaults: what the run recorded).
    recommendation
        Texts for above / below the threshold (binary tasks).

    Returns
    -------
    Path
        The bundle folder.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"{out}: exists; choose another --out or pass --overwrite")
    source = RunSource(Path(run), None if manifest is None else Path(manifest),
                       None if cache is None else Path(cache), None if finetuned is None else Path(finetuned),
                       progress=progress)
    name = resolve_candidate(source, candidate)
    record = source.record(name)
    logger.info(f"exporting {name} ({record['kind']}) from {source.run}")
    tmp = out.with_name(f".{out.name}-{uuid.uuid4().hex}.part")
    (tmp / "heads").mkdir(parents=True)
    try:
        body = (_baseline_model(source, record, tmp) if record["kind"] == "baseline"
                else _features_model(source, record, tmp))
        card = build_card(source, name, record)
        p = source.protocol
        classes = list(p["classes"])
        positive = p.get("positive") if len(classes) == 2 else None
        model = {
            "name": name, "kind": record["kind"], "candidate_id": record["candidate_id"],
            "classes": classes, "positive": positive,
            "threshold": card.get("threshold"), "threshold_rule": card.get("threshold_rule"),
            # The argmax rule's cut-off, for comparison (the card holds its test figures too).
            "default_threshold": 0.5 if positive else None,
            "recommendation": (recommendation or Recommendation()).to_dict() if positive else None,
            **body, "card": card, "versions": environment()["versions"],
        }
        write_json(tmp / "model.json", model)
        write_card(tmp / "MODEL_CARD.md", model)
        write_index(tmp, {"exported_from": str(source.run.resolve()), "candidate": name,
                          "record": record["key"], "seconds": round(time.perf_counter() - t0, 3)})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    logger.info(f"bundle written to {out} in {time.perf_counter() - t0:.1f} s")
    return out
