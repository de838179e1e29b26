"""Planning a sweep: everything decided before the first head is fitted.

:func:`check_heads` validates heads and grids against the head registry (before the run
folder is touched); :func:`build_plan` aligns the feature blocks to the manifest, fixes
the task and its folds, opens the run folder, names and identifies every candidate and
lists the (candidate, fold) pairs that have no record yet. The result, a frozen
:class:`SweepPlan`, is all that running and recording need.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from workbench.backbones.finetuned import find_finetuned, is_finetuned_id
from workbench.baselines.configs import get_baseline
from workbench.core.provenance import package_versions
from workbench.data.manifest import Manifest
from workbench.errors import ConfigError, WorkbenchError
from workbench.evaluation.protocol import Protocol, RunTask, build_task, seen_by, sha
from workbench.evaluation.settings import TEST_FOLD, is_cv_fold
from workbench.evaluation.store import ResultStore
from workbench.features.featureset import FeatureSet
from workbench.heads.ensembles import ENSEMBLE_RULES, VOTE_KINDS
from workbench.heads.kernels import fast_path_grid
from workbench.heads.zoo import get_head
from workbench.search.candidates import Candidate, block_codes, enumerate_subsets, grid_suffix
from workbench.search.options import SweepOptions

__all__ = ["SweepInputError", "SweepPlan", "baseline_ids", "build_plan", "candidate_id", "check_heads"]

Grid = Mapping[str, Sequence[Any]]


class SweepInputError(WorkbenchError, ValueError):
    """Features or labels the sweep cannot use; raised before anything is written."""


# ---- the heads and their grids ---------------------------------------------------


def check_heads(options: SweepOptions) -> dict[str, Grid]:
    """Each swept head's grid (the registry default unless ``options.grids`` gives one).

    Raises
    ------
    UnknownHeadError
        For a head the registry does not hold.
    ConfigError
        For a grid naming a parameter the head's classifier does not have (it would
        otherwise fail mid-run, in a worker).
    UnknownBaselineError
        For a ``baseline:<name>`` ensemble member the baseline registry does not hold.
    """
    for b in options.ensemble_baselines:
        get_baseline(b)
    grids = {}
    for spec in (get_head(h) for h in options.heads):
        grid = options.grids[spec.name] if spec.name in options.grids else spec.grid
        bad = spec.unknown_params(grid)
        if bad:
            raise ConfigError(f"grid for head {spec.name} names unknown parameters {bad}; "
                              f"valid: {spec.param_names()}")
        grids[spec.name] = grid
    return grids


# ---- the feature blocks ----------------------------------------------------------


def _aligned(name: str, X: Any, order: np.ndarray | None, ids: list[str]) -> np.ndarray:
    """One block in manifest order (``order=None``: already so), refused if not finite."""
    X = np.asarray(X)
    X = X if order is None else X[order]
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        shown = ", ".join(repr(ids[i]) for i in np.flatnonzero(bad)[:5])
        raise SweepInputError(f"feature block {name} has NaN or infinite values in {int(bad.sum())} "
                              f"row(s): {shown}")
    return X


def align_blocks(features: FeatureSet, ids: list[str]) -> tuple[dict[str, np.ndarray],
                                                                 dict[str, dict[str, np.ndarray]]]:
    """Blocks (and nested blocks' fold variants) in manifest order; features may hold
    more ids, never fewer."""
    pos = {i: k for k, i in enumerate(features.ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise SweepInputError(f"the feature blocks have no rows for {len(missing)} of the manifest's "
                              f"{len(ids)} images: {shown}. Extract features with this manifest.")
    order = np.array([pos[i] for i in ids])
    identity = len(order) == len(features.ids) and bool((order == np.arange(len(order))).all())
    order = None if identity else order  # no copy of blocks already in manifest order
    blocks = {name: _aligned(name, features[name], order, ids) for name in features.names}
    variants = {name: {f: _aligned(f"{name} (fold {f})", X, order, ids) for f, X in v.items()}
                for name, v in features.fold_blocks.items()}
    return blocks, variants


def block_identities(features: FeatureSet, blocks: dict[str, np.ndarray],
                     variants: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Identity of each block: its cache key (when it came from the cache) and a digest of
    the values actually swept (every fold variant included), so a changed block can never
    reuse old records."""
    out: dict[str, dict[str, Any]] = {}
    for name, X in blocks.items():
        info = features.info.get(name)
        h = hashlib.sha256(np.ascontiguousarray(X, dtype=np.float32).tobytes())
        for f in sorted(variants.get(name, {})):
            h.update(f.encode())
            h.update(np.ascontiguousarray(variants[name][f], dtype=np.float32).tobytes())
        out[name] = {"cache_key": info.entry_key if info is not None else None, "data": h.hexdigest()[:16]}
        if name in features.fold_info:
            out[name]["fold_cache_keys"] = {f: i.entry_key for f, i in sorted(features.fold_info[name].items())}
    return out


def _seen_ids(backbone: str, weights_id: str) -> list[str]:
    """The images a fine-tuned network trained or early-stopped on."""
    _, meta = find_finetuned(backbone, weights_id)
    return list(meta.get("train_ids", [])) + list(meta.get("val_ids", []))


def _refuse_held(name: str, folds: set[str], what: str, network: str) -> None:
    """Refuse a block whose network saw the test split or an external set (``what`` says how)."""
    held = sorted(f for f in folds if not is_cv_fold(f))
    if held:
        raise SweepInputError(
            f"block {name} {what} fine-tuned on images of this task's "
            f"{' and '.join('test split' if f == TEST_FOLD else f'external set {f}' for f in held)} "
            f"({network}); its results there would be meaningless")


def optimistic_folds(features: FeatureSet, names: list[str], task: RunTask) -> dict[str, set[str]]:
    """For blocks from fine-tuned networks: the folds whose evaluation images the network saw.

    A network fine-tuned on the whole training split has seen every CV fold, so CV
    estimates on its features are optimistic (marked in the records); one that saw
    test images (or images of an external test set) would make that result meaningless,
    which is refused. A nested set's test member gives the features of external sets.
    Blocks on boxes a Y-Net predicted (``BlockInfo.boxes``) count the Y-Net's training
    images as seen too: it drew their boxes knowing their lesions.
    """
    out: dict[str, set[str]] = {}
    for name in names:
        info = features.info.get(name)
        if info is None:
            continue
        if name in features.fold_info:  # nested: fold f is scored on its own network's features
            members = features.fold_info[name]
            # A fold the set has no member for (a set made under fewer repeats) is fed the
            # test split's network, as blocks_of does: it saw every CV fold's images.
            folds = {f for f, _, _ in task.outer
                     if seen_by(_seen_ids(info.backbone, members.get(f, members.get(TEST_FOLD, info)).weights_id),
                                task, f)}
        elif is_finetuned_id(info.weights_id):
            trained = _seen_ids(info.backbone, info.weights_id)
            folds = {f for f, _, _ in task.outer if seen_by(trained, task, f)}
        elif not info.boxes:
            continue
        else:
            folds = set()
        if info.boxes:  # cropped to a Y-Net's predicted boxes: the images it trained on count as seen
            ynet = _seen_ids(info.boxes["backbone"], info.boxes["weights_id"])
            by_ynet = {f for f, _, _ in task.outer if seen_by(ynet, task, f)}
            _refuse_held(name, by_ynet, "is computed on the boxes of a Y-Net",
                         f"{info.boxes['backbone']}@{info.boxes['weights_id']}")
            folds |= by_ynet
        _refuse_held(name, folds, "comes from a network", f"{info.backbone}@{info.weights_id}")
        out[name] = folds
    return out


# ---- candidates ------------------------------------------------------------------


def _is_sizes(subsets: Any) -> bool:
    return isinstance(subsets, tuple) and len(subsets) == 2 and all(isinstance(k, int) for k in subsets)


def subset_list(names: list[str], subsets: Any, code_of: dict[str, str]) -> list[tuple[str, ...]]:
    """The subsets to sweep; explicit subsets may name blocks by their table codes as well."""
    if not isinstance(subsets, str) and not _is_sizes(subsets):
        by_code = {c: n for n, c in code_of.items()}
        subsets = [[by_code.get(b, b) for b in ([s] if isinstance(s, str) else s)] for s in subsets]
    return enumerate_subsets(names, subsets)


def ensemble_rule(c: Candidate, binary: bool) -> int | None:
    """The rule version an ensemble is computed by, where it is past the first (see
    :data:`ENSEMBLE_RULES`). Hard votes of several classes still vote by argmax: their
    rule (and ids) stay."""
    rule = ENSEMBLE_RULES.get(c.kind) if c.kind == "stack" or (c.kind == "vote-hard" and binary) else None
    return rule if rule is not None and rule > 1 else None


def candidate_id(c: Candidate, *, block_ids: Mapping[str, Any], grids: Mapping[str, Grid], protocol_hash: str,
                 binary: bool, baseline_ids: Mapping[str, str] | None = None) -> str:
    """A candidate's identity: its blocks' identities, head and grid (or members), protocol.

    A hybrid ensemble's identity holds its baselines' record candidate ids
    (``baseline_ids``: name -> id), so a retrained or reconfigured baseline gives a new
    hybrid; other candidates' ids do not hold the field at all, and keep their ids.
    """
    spec: dict[str, Any] = {"kind": c.kind, "blocks": [block_ids[b] for b in c.blocks], "protocol": protocol_hash}
    if c.kind == "head":
        spec.update(head=c.head, grid=grids[c.head])
    else:
        spec.update(members=[candidate_id(m, block_ids=block_ids, grids=grids, protocol_hash=protocol_hash,
                                          binary=binary) for m in c.members()])
        rule = ensemble_rule(c, binary)
        if rule is not None:  # absent for rule 1, so unchanged ensembles keep their ids
            spec.update(rule=rule)
        if c.baselines:
            spec.update(baselines=[(baseline_ids or {})[b] for b in c.baselines])
    return sha(spec)[:16]


def head_labels(store: ResultStore, grids: Mapping[str, Grid]) -> dict[str, str]:
    """The folder's first grid per head keeps the plain name; another gets a suffix."""
    plain = store.plain_label_grids(dict(grids))
    return {h: h if json.loads(json.dumps(g, default=str)) == plain[h] else h + grid_suffix(g)
            for h, g in grids.items()}


def candidates(subsets: list[tuple[str, ...]], options: SweepOptions,
               baselines: Sequence[str] = ()) -> tuple[list[Candidate], list[Candidate]]:
    """Head candidates (every subset x head) and ensembles (subsets of 2+ members).

    With ``baselines`` (those of ``options.ensemble_baselines`` whose records are
    complete), every subset also gets hybrid ensembles in which those networks vote
    with the heads; they come after the others, which stay as they were.
    """
    heads = list(options.heads)
    ens_heads = list(options.member_heads)
    head_cands = [Candidate("head", s, h) for s in subsets for h in heads]
    ens_cands: list[Candidate] = []
    if options.ensembles and ens_heads:
        kinds = list(VOTE_KINDS) + (["stack"] if options.stacking else [])
        for s in subsets:
            if len(s) * len(ens_heads) >= 2:
                ens_cands += [Candidate(k, s, None, tuple(ens_heads)) for k in kinds]
        if baselines:  # one head and one network are two members already: every subset qualifies
            ens_cands += [Candidate(k, s, None, tuple(ens_heads), tuple(baselines)) for s in subsets for k in kinds]
    return head_cands, ens_cands


def baseline_ids(store: ResultStore, task: RunTask, names: Sequence[str], done: set[str]) -> dict[str, str]:
    """Name -> record candidate id of each baseline in ``names`` with an intact record on
    every fold of ``task`` (left out: a baseline not run yet, or still running).

    Where the folder holds several complete ids of one baseline (retrained under another
    config), the one written last is taken.
    """
    folds = {f for f, _, _ in task.outer}
    seen: dict[str, dict[str, set[str]]] = {}
    last: dict[str, int] = {}
    for i, r in enumerate(store.current_records()):
        if r.get("kind") == "baseline" and r.get("baseline") in names and r["key"] in done:
            seen.setdefault(r["baseline"], {}).setdefault(r["candidate_id"], set()).add(str(r["fold"]))
            last[r["candidate_id"]] = i
    out = {}
    for name in names:
        complete = [cid for cid, fs in seen.get(name, {}).items() if folds <= fs]
        if complete:
            out[name] = max(complete, key=last.__getitem__)
    return out


# ---- the plan --------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep computes and how each result is named; built by :func:`build_plan`."""

    task: RunTask
    store: ResultStore
    names: list[str]                             # block names, in the features' order
    blocks: dict[str, np.ndarray]                # manifest order
    variants: dict[str, dict[str, np.ndarray]]   # nested blocks: fold -> that fold's network's rows
    codes: dict[str, str]                        # block -> table code
    grids: dict[str, Grid]                       # head -> grid swept
    head_labels: dict[str, str]                  # head -> name in labels (grid suffix if not the first)
    block_ids: dict[str, dict[str, Any]]
    head_candidates: list[Candidate]
    ensemble_candidates: list[Candidate]
    ids: dict[Candidate, str]                    # candidate -> candidate id
    todo_heads: list[tuple[Candidate, str]]      # (candidate, fold) without a record
    todo_ensembles: list[tuple[Candidate, str]]
    optimistic: dict[str, set[str]]              # block -> folds its fine-tuned network saw
    versions: dict[str, str]
    protocol: Protocol
    baseline_ids: dict[str, str] = field(default_factory=dict)  # hybrid members: name -> record candidate id
    waiting: tuple[str, ...] = ()                # baselines of hybrids without records on every fold yet

    @property
    def binary(self) -> bool:
        return len(self.task.class_names) == 2

    @property
    def positive_index(self) -> int:
        """Binary: the task's positive class (not necessarily index 1); else -1."""
        return self.task.class_names.index(self.task.positive) if self.binary else -1

    @property
    def total(self) -> int:
        return len(self.ids) * len(self.task.outer)

    @property
    def n_done(self) -> int:
        return self.total - len(self.todo_heads) - len(self.todo_ensembles)

    def label(self, c: Candidate) -> str:
        return c.label(self.codes, self.head_labels)

    def rule(self, c: Candidate) -> int | None:
        return ensemble_rule(c, self.binary)

    def candidate_id(self, c: Candidate) -> str:
        """The id of ``c``, also for a member the plan does not sweep itself."""
        return self.ids.get(c) or candidate_id(c, block_ids=self.block_ids, grids=self.grids,
                                               protocol_hash=self.task.protocol_hash, binary=self.binary,
                                               baseline_ids=self.baseline_ids)

    def blocks_of(self, fold: str) -> list[np.ndarray]:
        """Every block's rows for ``fold``: a nested block gives that fold's network's features."""
        return [self.variants.get(n, {}).get(fold, self.blocks[n]) for n in self.names]

    def kernel_groups(self) -> tuple[dict[tuple[str, str], list[tuple[str, ...]]], list[tuple[Candidate, str]]]:
        """To-do heads split into precomputed-kernel units (per head and fold: every
        subset) and plain (candidate, fold) units."""
        by_kernel: dict[tuple[str, str], list[tuple[str, ...]]] = {}
        plain: list[tuple[Candidate, str]] = []
        for c, f in self.todo_heads:
            if fast_path_grid(get_head(c.head), self.grids[c.head]):
                by_kernel.setdefault((c.head, f), []).append(c.blocks)
            else:
                plain.append((c, f))
        return by_kernel, plain


def build_plan(manifest: Manifest, features: FeatureSet, *, out: str | os.PathLike, protocol: Protocol,
               options: SweepOptions, grids: Mapping[str, Grid],
               external: Mapping[str, Manifest] | None = None) -> SweepPlan:
    """Check the inputs, fix the task, open the run folder and list what is left to do.

    Everything that can be wrong with the inputs (blocks, classes, folds, subsets) is
    raised before the run folder is created. ``external``: external test sets (see
    :func:`~workbench.evaluation.protocol.build_task`); ``features`` must hold their rows.
    """
    class_names = list(manifest.classes)
    if len(class_names) < 2:
        raise SweepInputError(f"need at least two classes, the manifest has {class_names}")
    if protocol.positive is not None and protocol.positive not in class_names:
        raise ConfigError(f"positive class {protocol.positive!r} is not one of {class_names}")
    blocks, variants = align_blocks(features, manifest.ids + [i for m in (external or {}).values() for i in m.ids])
    names = list(blocks)
    codes = block_codes(names, dict(options.codes) if options.codes is not None else None)
    subsets = subset_list(names, options.subsets, codes)
    task = build_task(manifest, protocol, external)
    store = task.open_store(out)
    # Identities from the manifest's own rows, so adding an external set keeps every
    # candidate id (and the CV and test records); its own rows are guarded by its digest.
    n = task.n_internal
    block_ids = block_identities(features, {b: X[:n] for b, X in blocks.items()},
                                 {b: {f: X[:n] for f, X in v.items()} for b, v in variants.items()})
    grids = {h: grids[h] for h in options.heads}
    labels = head_labels(store, grids)
    done = store.done()
    # Hybrids need their baselines' records of every fold: until then they wait (the
    # baselines run after the sweep in `workbench run`, which then sweeps again).
    wanted = options.ensemble_baselines if options.ensembles else ()
    bids = baseline_ids(store, task, wanted, done) if wanted else {}
    waiting = tuple(b for b in wanted if b not in bids)
    head_cands, ens_cands = candidates(subsets, options, () if waiting else wanted)
    binary = len(class_names) == 2
    ids = {c: candidate_id(c, block_ids=block_ids, grids=grids, protocol_hash=task.protocol_hash, binary=binary,
                           baseline_ids=bids)
           for c in head_cands + ens_cands}
    optimistic = optimistic_folds(features, names, task)
    folds = [f for f, _, _ in task.outer]
    return SweepPlan(
        task=task, store=store, names=names, blocks=blocks, variants=variants, codes=codes, grids=grids,
        head_labels=labels, block_ids=block_ids, head_candidates=head_cands,
        ensemble_candidates=ens_cands, ids=ids,
        todo_heads=[(c, f) for c in head_cands for f in folds if f"{ids[c]}/{f}" not in done],
        todo_ensembles=[(c, f) for c in ens_cands for f in folds if f"{ids[c]}/{f}" not in done],
        optimistic=optimistic, versions=package_versions(("xgboost", "joblib", "dask", "distributed")),
        protocol=protocol, baseline_ids=bids, waiting=waiting)
