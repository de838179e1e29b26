"""Per-candidate summaries of sweep records: CV mean and spread, and the test value."""
from __future__ import annotations

import pandas as pd

__all__ = ["summarize"]


def summarize(records: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """One row per candidate, ranked by the mean of ``metric`` over the CV folds.

    The ranking never reads the test split: ``test_<metric>`` is shown alongside, for
    the candidates a study selects by CV.

    Returns
    -------
    DataFrame
        ``candidate, kind, size, cv_<metric>, cv_<metric>_sd, n_folds, test_<metric>``,
        best first (ties broken by candidate label, so the order is reproducible).
    """
    if records.empty:
        return pd.DataFrame()
    if metric not in records.columns:
        raise KeyError(f"no metric {metric!r} in the records; metrics: "
                       f"{', '.join(c for c in records.columns if records[c].dtype.kind == 'f')}")
    cv = records[records["fold"] != "test"]
    test = records[records["fold"] == "test"].set_index("candidate")[metric]
    g = cv.groupby("candidate", sort=False)
    out = pd.DataFrame({
        "kind": g["kind"].first(),
        "size": g["size"].first(),
        f"cv_{metric}": g[metric].mean(),
        f"cv_{metric}_sd": g[metric].std(ddof=1),
        "n_folds": g[metric].size(),
    })
    out[f"test_{metric}"] = test.reindex(out.index)
    out = out.reset_index().sort_values([f"cv_{metric}", "candidate"], ascending=[False, True],
                                        kind="stable")
    return out.reset_index(drop=True)
