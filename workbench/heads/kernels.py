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

Memory (:func:`kernel_unit_bytes`, within a few per cent of tracemalloc's peak): one
float64 matrix of ``n_rows x n_fit`` per block and fit, ``26 * n_train^2`` bytes per
block per outer fold with 3 inner folds (n_eval = n_train / 4), plus the summed kernels
of the subset being scored (``20-52 * n_train^2`` bytes for 1-3 gamma factors) and
libsvm's cache (at most 500 MiB). Six blocks with the default grid: ~21 GB at n_train =
10 000. The sweep checks each unit against its memory budget before it runs and falls
back to fewer blocks per unit, then to plain refits (:func:`plain_fit_bytes`); see
:mod:`workbench.search.running` and benchmarks/RESULTS.md.

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

from workbench.errors import ConfigError
from workbench.heads.nested import (
    InnerSearch,
    as_score_matrix,
    calibrated_proba,
    fit_calibrator,
    inner_search,
)
from workbench.heads.zoo import HeadSpec, get_head, rbf_gamma_scale

__all__ = ["BlockKernels", "SVC_CACHE_MB", "SubsetResult", "fast_path_grid", "kernel_subset_scores",
           "kernel_unit_bytes", "plain_fit_bytes"]

_FAST_KEYS = {"rbf": {"C", "tol", "gamma_factor"}, "linear": {"C", "tol"}}

#: libsvm's kernel cache (MiB) of every SVC fit here and of the zoo's SVMs; it holds float32
#: columns of the training rows, so it never exceeds ``4 * n_fit^2`` bytes.
SVC_CACHE_MB = 500


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
                # (sq_i + sq_j) - 2 dot_ij: the operations of the one-line expression, in
                # its order (so the same bits), done in place: two matrices alive, not four.
                mat = np.add(sq[:, None], sq[fit][None, :])
                dot *= 2.0
                mat -= dot
                del dot
            else:
                mat = dot
            # float64: float32 storage shifted inner scores enough to flip near-tied grid
            # points on real features (issue 11.3).
            mats.append(mat)
            # The rows are done with: freed before np.square's temporary, and before the
            # next block's rows are scaled (the same sums, the same bits).
            del Xr, Z
            sums.append((float(Zf.sum()), float(np.square(Zf).sum())))
            del Zf
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
        cache.clear()  # free the final kernel before the next subset's inner ones are summed
        del K
        cal = fit_calibrator(search.oof, y_train, n_classes)
        out.append(SubsetResult(subset, search, scores, calibrated_proba(cal, scores), cal))
    return out


# ---- memory estimates ------------------------------------------------------------------


def _svc_cache(n_fit: int) -> int:
    return min(SVC_CACHE_MB << 20, 4 * n_fit * n_fit)


def _fit_sizes(n_train: int, inner_folds: int | Sequence[int]) -> list[int]:
    """Training rows of each inner fit: given, or those of ``inner_folds`` even folds."""
    if isinstance(inner_folds, (int, np.integer)):
        k = int(inner_folds)
        if k < 2:
            raise ConfigError(f"inner_folds = {k}: expected at least 2")
        return [n_train - (n_train // k + (1 if i < n_train % k else 0)) for i in range(k)]
    return [int(f) for f in inner_folds]


def kernel_unit_bytes(n_train: int, n_eval: int, dims: Sequence[int], *, kernel: str = "rbf",
                      inner_folds: int | Sequence[int] = 3, gamma_factors: int = 1, n_classes: int = 2,
                      itemsize: int = 4) -> int:
    """Estimated peak memory (bytes) of one fast-path unit on one outer fold.

    :class:`BlockKernels` over blocks of widths ``dims``, then :func:`kernel_subset_scores`
    over subsets of them. Counted: the stored float64 matrices (``8 * n_rows * n_fit``
    per block and fit: each inner fit, then the final ``(n_train + n_eval) x n_train``),
    plus the larger of building the last one (one more such matrix and the widest block's
    scaled rows) and scoring a subset (its summed inner kernels, one per inner fit and
    gamma factor, with the copy of one fit's training rows and libsvm's kernel cache; or
    its final kernel likewise). Not counted: the input blocks, which exist already.
    ``inner_folds`` is their number or the inner training sizes; ``gamma_factors`` the
    distinct ``gamma_factor`` values of the grid (1 for a linear kernel); ``itemsize``
    the blocks' bytes per value. Checked against tracemalloc in tests/test_large_n.py.
    """
    if kernel not in _FAST_KEYS:
        raise ConfigError(f"no precomputed fast path for kernel {kernel!r}")
    if not dims:
        raise ConfigError("kernel_unit_bytes needs at least one block width")
    fits = _fit_sizes(n_train, inner_folds)
    parts = [(n_train, f, n_train - f) for f in fits] + [(n_train + n_eval, n_train, n_eval)]
    stored = len(dims) * sum(8 * r * f for r, f, _ in parts)
    d = max(dims)
    # Building a block's matrix: its rows as given and scaled in float64, the training
    # rows' copy, and the largest of: the product's temporary for the training rows, the
    # held-out rows' copy with their product, the product kept while the RBF distances
    # are formed next to it (the matrix itself is counted as stored).
    build = max(r * d * (itemsize + 8) + 8 * f * d + 8 * max(f * f, h * (d + f), r * f if kernel == "rbf" else 0)
                for r, f, h in parts)
    g = gamma_factors if kernel == "rbf" else 1
    # libsvm fits on a copy of the training rows of the kernel; scoring the held-out rows
    # takes their rows (multi-class) or support-vector columns (binary) of it.
    fit = [max(8 * f * f + _svc_cache(f), 8 * h * f) for r, f, h in parts]
    inner = g * sum(8 * r * f for r, f, _ in parts[:-1]) + max(fit[:-1])
    final = 8 * parts[-1][0] * parts[-1][1] + fit[-1]
    return int(stored + max(build, inner, final))


def plain_fit_bytes(n_rows: int, n_train: int, width: int, *, kernel: str = "rbf", itemsize: int = 4,
                    concatenated: bool = True) -> int:
    """Estimated peak memory (bytes) of one plain SVM refit: :class:`~workbench.heads.tuned.TunedHead`
    on one subset and outer fold, as the sweep runs it without stored kernels.

    The concatenation of the subset's blocks over all ``n_rows`` rows (none for one block:
    ``concatenated=False``), its ``n_train`` training rows, and at the largest fit (the
    refit on them): their scaled values, their float64 copy libsvm fits on, the support
    vectors libsvm returns (at most every training row) and libsvm's kernel cache. The
    inner fits are smaller. ``width``: the subset's total number of features.
    """
    if kernel not in _FAST_KEYS:
        raise ConfigError(f"no plain SVM estimate for kernel {kernel!r}")
    given = itemsize * width * ((n_rows if concatenated else 0) + 2 * n_train)
    as_float = 8 * n_train * width if itemsize != 8 else 0
    # libsvm hands back its support vectors as a float64 copy (up to every training row on
    # hard data); gamma="scale"'s float64 temporary is gone by then and no larger.
    support = 8 * n_train * width
    return int(given + as_float + support + _svc_cache(n_train))
