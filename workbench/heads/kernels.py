"""The precomputed-kernel fast path for SVMs over many feature subsets.

For standardized blocks, the squared distance between two rows of a concatenation is
the sum of the blocks' squared distances, and a linear kernel is the sum of the blocks'
Gram matrices. So for each fit (every inner fold, and the final refit of an outer fold)
each block's matrix is computed once, with the scaler fitted on that fit's training rows
exactly as the plain pipeline would; a subset's kernel is then a sum of a few stored
matrices (and one ``exp`` for RBF), and libsvm runs on ``SVC(kernel="precomputed")``.
``gamma="scale"`` is rebuilt from per-block sums of the scaled values, so a subset gets
the same gamma as :class:`~workbench.heads.zoo.ScaledGammaSVC` on the concatenation.

Exactness: every matrix is float64, computed from the same float64 scaled values libsvm
sees, so a kernel entry differs from libsvm's own by rounding (~1e-16 relative) only.
Float32 storage (before) moved inner AUCs by up to 2.4e-4 on real features and flipped
near-tied grid points; in float64 the fast path and the plain pipeline choose the same
grid point and give the same decision signs (tested on real BUSI features).

Memory: one float64 matrix of ``n_rows x n_fit`` per block and fit, about
``26 * n_train^2`` bytes per block per outer fold with 3 inner folds, plus the float64
summed kernels of the subset being scored (``20-52 * n_train^2`` bytes for 1-3 gamma
factors). Six blocks with the default grid need ~24 GB at n_train = 10 000, where plain
refits (or fewer blocks per run) are the better trade (benchmarks/RESULTS.md).

Only the grid keys the precomputed kernel can honour are accepted (``C``, ``tol`` and,
for RBF, ``gamma_factor``); :func:`fast_path_grid` tells the sweep which heads qualify,
and the others run through plain refits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sklearn import config_context
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from workbench.heads.nested import (
    InnerSearch,
    as_score_matrix,
    calibrated_proba,
    fit_calibrator,
    inner_search,
)
from workbench.heads.zoo import HeadSpec, get_head, rbf_gamma_scale

__all__ = ["BlockKernels", "SubsetResult", "fast_path_grid", "kernel_subset_scores"]

_FAST_KEYS = {"rbf": {"C", "tol", "gamma_factor"}, "linear": {"C", "tol"}}


def fast_path_grid(spec: HeadSpec, grid: dict[str, Sequence[Any]] | None) -> bool:
    """Whether the precomputed-kernel path can run ``spec`` over ``grid`` exactly.

    True for an SVM head whose grid (None: the head's default) only names parameters the
    precomputed kernel reproduces; anything else (a class weight, say) must go through
    :class:`~workbench.heads.tuned.TunedHead` so it is not silently dropped.
    """
    if spec.kernel not in _FAST_KEYS:
        return False
    keys = set(spec.grid if grid is None else grid)
    return keys <= _FAST_KEYS[spec.kernel]


@dataclass
class _Part:
    """One fit: ``fit`` positions (into ``rows``) train, the rest are scored."""

    rows: np.ndarray  # row indices into the full feature arrays
    fit: np.ndarray  # positions within rows used for training
    held: np.ndarray  # positions within rows that are scored
    mats: list[np.ndarray]  # per block: (len(rows), len(fit)) float64
    sums: list[tuple[float, float]]  # per block: sum and sum of squares of scaled fit rows


class BlockKernels:
    """Per-block kernel matrices for every fit of one outer fold.

    Parameters
    ----------
    blocks : list of ndarray
        Feature blocks, all rows of the run (``n x d_b`` each).
    kernel : {"rbf", "linear"}
        RBF stores squared distances, linear stores Gram matrices.
    train, evaluate : ndarray of int
        Row indices of the outer fold's training and evaluation rows.
    inner_folds : list of (ndarray, ndarray)
        Inner folds as positions within ``train``.
    """

    def __init__(self, blocks: Sequence[np.ndarray], kernel: str, train: np.ndarray,
                 evaluate: np.ndarray, inner_folds: Sequence[tuple[np.ndarray, np.ndarray]]):
        if kernel not in ("rbf", "linear"):
            raise ValueError(f"no precomputed fast path for kernel {kernel!r}")
        self.kernel = kernel
        self.dims = [b.shape[1] for b in blocks]
        n_t = len(train)
        self.inner = [self._part(blocks, train, np.asarray(tr), np.asarray(va)) for tr, va in inner_folds]
        self.final = self._part(blocks, np.concatenate([train, evaluate]), np.arange(n_t),
                                np.arange(n_t, n_t + len(evaluate)))

    def _part(self, blocks, rows, fit, held) -> _Part:
        if len(np.union1d(fit, held)) != len(rows) or len(fit) + len(held) != len(rows):
            raise ValueError(f"an inner fold's training ({len(fit)}) and held-out ({len(held)}) rows "
                             f"must partition the outer fold's {len(rows)} training rows")
        mats, sums = [], []
        for b, X in enumerate(blocks):
            Xr = np.asarray(X)[rows]
            if not np.isfinite(Xr).all():
                # The plain pipeline refuses these too; checked here so the SVC fits
                # on kernels built from them can skip scikit-learn's input checks.
                bad = rows[np.flatnonzero(~np.isfinite(Xr).all(axis=1))[:5]]
                raise ValueError(f"feature block {b} holds NaN or infinite values, e.g. in rows {bad.tolist()}")
            # The pipeline's own scaler, fitted on this fit's training rows only, so the
            # scaled values match the plain path's bit for bit.
            Z = StandardScaler().fit(Xr[fit]).transform(Xr).astype(np.float64)
            Zf = np.ascontiguousarray(Z[fit])
            dot = np.empty((len(rows), len(fit)))
            dot[fit] = Zf @ Zf.T  # numpy runs A @ A.T as BLAS syrk: half the flops
            dot[held] = Z[held] @ Zf.T
            if self.kernel == "rbf":
                sq = np.einsum("ij,ij->i", Z, Z)
                mat = sq[:, None] + sq[fit][None, :] - 2.0 * dot
            else:
                mat = dot
            # float64: float32 storage shifted inner scores enough to flip near-tied grid
            # points on real features (issue 11.3).
            mats.append(mat)
            sums.append((float(Zf.sum()), float(np.square(Zf).sum())))
        return _Part(rows, fit, held, mats, sums)

    def gamma_scale(self, part: _Part, subset: Sequence[int]) -> float:
        """``gamma="scale"`` of the scaled concatenation of ``subset`` on the fit rows."""
        n = len(part.fit) * sum(self.dims[b] for b in subset)
        s = sum(part.sums[b][0] for b in subset)
        ss = sum(part.sums[b][1] for b in subset)
        var = ss / n - (s / n) ** 2
        return rbf_gamma_scale(sum(self.dims[b] for b in subset), var)

    @staticmethod
    def summed(part: _Part, subset: Sequence[int]) -> np.ndarray:
        """The subset's distance (or Gram) matrix: the sum of its blocks', in float64 (a new array)."""
        out = part.mats[subset[0]].copy()
        for b in subset[1:]:
            out += part.mats[b]
        return out


@dataclass
class SubsetResult:
    """What a kernel head yields for one subset on one outer fold."""

    subset: tuple[int, ...]
    search: InnerSearch
    scores: np.ndarray  # decision values on the evaluation rows, (n_eval, C)
    proba: np.ndarray  # calibrated probabilities on the evaluation rows
    calibrator: Any


def _fit_scores(K: np.ndarray, part: _Part, y_fit: np.ndarray, C: float, tol: float,
                n_classes: int) -> np.ndarray:
    # y holds class codes 0..n_classes-1, so decision columns line up with TunedHead's.
    svc = SVC(kernel="precomputed", C=C, tol=tol, cache_size=500)
    # Input checks cost twice libsvm's own time on these small kernels; BlockKernels
    # checked the features (finite) and the kernels are built from them, so skip them.
    with config_context(assume_finite=True, skip_parameter_validation=True):
        svc.fit(K[part.fit], y_fit)
        if n_classes == 2:
            # scikit-learn's documented binary decision, sum(dual_coef * K) + intercept,
            # without a second round of checks; equal to decision_function up to rounding.
            d = K[np.ix_(part.held, svc.support_)] @ svc.dual_coef_[0] + svc.intercept_[0]
        else:
            d = svc.decision_function(K[part.held])
    return as_score_matrix(d, n_classes)


def kernel_subset_scores(
    kernels: BlockKernels,
    subsets: Sequence[Sequence[int]],
    head: str | HeadSpec,
    y: np.ndarray,
    n_classes: int,
    *,
    grid: dict[str, Sequence[Any]] | None = None,
    scoring: str = "auc",
) -> list[SubsetResult]:
    """Nested SVM selection, refit and calibration for each subset of blocks.

    Equals :class:`~workbench.heads.tuned.TunedHead` fitted on the concatenated blocks of
    the outer fold's training rows and scored on its evaluation rows. ``y`` holds class
    codes ``0..n_classes-1`` for all rows; parameters the grid leaves out take the head's
    own defaults, and a grid key the kernel cannot honour raises ValueError.
    """
    spec = get_head(head)
    if spec.kernel != kernels.kernel:
        raise ValueError(f"head {spec.name} is not a {kernels.kernel} SVM")
    grid = dict(spec.grid if grid is None else grid)
    if not fast_path_grid(spec, grid):
        bad = sorted(set(grid) - _FAST_KEYS[spec.kernel])
        raise ValueError(f"the precomputed-kernel path cannot search {bad} for head {spec.name}; "
                         f"it supports {sorted(_FAST_KEYS[spec.kernel])} (use TunedHead)")
    proto = spec.pipeline().named_steps["clf"]
    defaults = {"C": proto.C, "tol": proto.tol, "gamma_factor": getattr(proto, "gamma_factor", 1.0)}
    y = np.asarray(y)
    train_rows = kernels.final.rows[kernels.final.fit]
    y_train = y[train_rows]
    out = []
    for subset in subsets:
        subset = tuple(subset)
        cache: dict[tuple[int, float], np.ndarray] = {}

        def kernel_of(part: _Part, key: int, gamma_factor: float) -> np.ndarray:
            if (key, gamma_factor) not in cache:
                M = kernels.summed(part, subset)
                if kernels.kernel == "rbf":
                    g = gamma_factor * kernels.gamma_scale(part, subset)
                    np.multiply(M, -g, out=M)
                    np.exp(M, out=M)
                cache[(key, gamma_factor)] = M
            return cache[(key, gamma_factor)]

        def score_fold(params, i, tr, va):
            p = {**defaults, **params}
            part = kernels.inner[i]
            K = kernel_of(part, i, p["gamma_factor"])
            return _fit_scores(K, part, y_train[tr], p["C"], p["tol"], n_classes)

        search = inner_search(score_fold, grid, y_train, [(p.fit, p.held) for p in kernels.inner],
                              n_classes, scoring=scoring, need_oof=True)
        cache.clear()  # inner matrices are done with; free them before the final one
        best = {**defaults, **search.best_params}
        K = kernel_of(kernels.final, -1, best["gamma_factor"])
        scores = _fit_scores(K, kernels.final, y_train, best["C"], best["tol"], n_classes)
        cal = fit_calibrator(search.oof, y_train, n_classes)
        out.append(SubsetResult(subset, search, scores, calibrated_proba(cal, scores), cal))
    return out
