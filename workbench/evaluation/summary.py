"""Per-candidate summaries of sweep records: CV mean and spread, and the test value."""
from __future__ import annotations

import pandas as pd
from workbench.errors import UnknownNameError, WorkbenchError
from workbench.evaluation.metrics import higher_is_better
from workbench.evaluation.settings import is_cv_fold

__all__ = ["DuplicateLabelError", "summarize"]


class DuplicateLabelError(WorkbenchError, ValueError):
    """Two different candidates (ids) carry the same label, so a table could not tell them apart."""


def check_unique_labels(records: pd.DataFrame) -> None:
    """Raise :class:`DuplicateLabelError` naming a label that two candidate ids share.

    The label is what tables and the search show; the id is what the records were
    computed from (blocks' data, head, grid, protocol). Pooling two ids' folds under one
    label would average two different models.
    """
    if "candidate_id" not in records.columns or records.empty:
        return
    ids = records.groupby("candidate", sort=True)["candidate_id"].unique()
    shared = ids[ids.map(len) > 1]
    if len(shared):
        label, both = shared.index[0], sorted(shared.iloc[0])
        more = f" ({len(shared) - 1} more labels alike)" if len(shared) > 1 else ""
        raise DuplicateLabelError(
            f"candidates {', '.join(both)} share the label {label!r}{more}: the same head and blocks under "
            "another grid or other feature values, swept into one run folder. Sweep into a new --out "
            "folder, or pass the records of one of them only")


def summarize(records: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """One row per candidate, ranked by the mean of ``metric`` over the CV folds.

    The ranking never reads the test split: ``test_<metric>`` is shown alongside, for
    the candidates a study selects by CV.

    Returns
    -------
    DataFrame
        ``candidate, kind, size, cv_<metric>, cv_<metric>_sd, n_folds, test_<metric>``,
        best first (ties broken by candidate label, so the order is reproducible).

    Raises
    ------
    DuplicateLabelError
        When two candidate ids share a label (naming both).
    """
    if records.empty:
        return pd.DataFrame()
    if metric not in records.columns:
        raise UnknownNameError(f"no metric {metric!r} in the records; metrics: "
                       f"{', '.join(c for c in records.columns if records[c].dtype.kind == 'f')}")
    check_unique_labels(records)
    cv = records[records["fold"].map(is_cv_fold)]
    test = records[records["fold"] == "test"].drop_duplicates("candidate", keep="last").set_index("candidate")[metric]
    g = cv.groupby("candidate", sort=False)
    out = pd.DataFrame({
        "kind": g["kind"].first(),
        "size": g["size"].first(),
        f"cv_{metric}": g[metric].mean(),
        f"cv_{metric}_sd": g[metric].std(ddof=1),
        "n_folds": g[metric].size(),
    })
    out[f"test_{metric}"] = test.reindex(out.index)
    # Best first in the metric's own direction (LR- ranks low values first).
    out = out.reset_index().sort_values([f"cv_{metric}", "candidate"],
                                        ascending=[not higher_is_better(metric), True], kind="stable")
    return out.reset_index(drop=True)
