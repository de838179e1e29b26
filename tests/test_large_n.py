"""Large n in the sweep (issue 17.5): the SVM fast path's memory is estimated before a
unit runs, checked against a budget, and a unit over it falls back (fewer blocks per
unit, then plain refits) or stops the sweep with a clear error, never an OOM kill.

The estimates are checked against tracemalloc's peak (numpy's allocations; libsvm's own
kernel cache is not traced, so it is left out of the comparison), the fallbacks against
the fast path's own records on the same task.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from _sweepdata import make_task

from workbench.errors import ConfigError, WorkbenchError
from workbench.evaluation.protocol import Protocol
from workbench.evaluation.splits import make_folds
from workbench.evaluation.store import ResultStore
from workbench.evaluation.summary import summarize
from workbench.heads.kernels import (
    SVC_CACHE_MB,
    BlockKernels,
    kernel_subset_scores,
    kernel_unit_bytes,
    plain_fit_bytes,
)
from workbench.heads.tuned import TunedHead
from workbench.search import running
from workbench.search.options import DEFAULT_MEMORY_FRACTION, Execution, SweepOptions, parse_memory_budget
from workbench.search.plan import build_plan, check_heads
from workbench.search.running import RSS_MARGIN, MemoryBudget, MemoryBudgetError, memory_budget, plan_head_units
from workbench.search.sweep import sweep

MiB = 1 << 20
#: Measured / estimated peak: the estimate follows every large array (tests run within ~3 %).
RATIO = (0.9, 1.1)


def _blocks(n: int, dims, seed: int = 0):
    """Float32 blocks with a weak shared class signal and a per-column scale and offset."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    latent = np.eye(2)[y] @ rng.normal(size=(2, 4)) + rng.normal(size=(n, 4))
    blocks = [((latent @ rng.normal(size=(4, d)) * 0.4 + rng.normal(size=(n, d))) * rng.uniform(0.5, 4.0, d)
               + rng.normal(scale=5.0, size=d)).astype(np.float32) for d in dims]
    return blocks, y


def _cache(n_fit: int) -> int:
    return min(SVC_CACHE_MB << 20, 4 * n_fit * n_fit)


# ---- the estimates -------------------------------------------------------------------


@pytest.mark.parametrize("head, grid", [
    ("svm-rbf", {"C": [1.0, 10.0], "gamma_factor": [0.3, 1.0, 3.0]}),
    ("svm-rbf", {"C": [1.0]}),
    ("svm-linear", {"C": [0.01, 1.0]}),
])
def test_kernel_unit_estimate_matches_the_measured_peak(head, grid):
    dims = (20, 60, 150)
    blocks, y = _blocks(600, dims)
    train, evaluate = (np.sort(r) for r in make_folds(y, 5, 0)[0])
    inner = make_folds(y[train], 3, 0)
    subsets = [s for k in (1, 2, 3) for s in itertools.combinations(range(3), k)]
    kernel = "rbf" if head == "svm-rbf" else "linear"
    tracemalloc.start()
    try:
        kernels = BlockKernels(blocks, kernel, train, evaluate, inner)
        kernel_subset_scores(kernels, subsets, head, y, 2, grid=grid)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    fits = [len(tr) for tr, _ in inner]
    est = kernel_unit_bytes(len(train), len(evaluate), dims, kernel=kernel, inner_folds=fits,
                            gamma_factors=len(grid.get("gamma_factor", [1.0])))
    # libsvm's cache is malloc'd in C++, out of tracemalloc's sight: at most one fit's.
    untraced = _cache(max(fits))
    assert RATIO[0] <= peak / (est - untraced) <= RATIO[1], (peak, est)


@pytest.mark.parametrize("head, dims", [("svm-rbf", (20, 60, 120)), ("svm-linear", (200, 400)),
                                        ("svm-rbf", (1000,))])
def test_plain_fit_estimate_matches_the_measured_peak(head, dims):
    n = 500
    blocks, y = _blocks(n, dims)
    train, evaluate = make_folds(y, 5, 0)[0]
    tracemalloc.start()
    try:
        X = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
        est = TunedHead(head, grid={"C": [1.0]}, inner_splits=3, random_state=0).fit(X[train], y[train])
        est.predict_proba(X[evaluate])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    need = plain_fit_bytes(n, len(train), sum(dims), kernel=head.removeprefix("svm-"),
                           concatenated=len(blocks) > 1)
    assert RATIO[0] <= peak / (need - _cache(len(train))) <= RATIO[1], (peak, need)


def test_kernel_estimate_follows_the_documented_model():
    n_t, n_e = 3000, 750  # 3 inner folds of 2000 training rows, n_eval = n_train / 4
    one, two = (kernel_unit_bytes(n_t, n_e, [512] * b, gamma_factors=3) for b in (1, 2))
    assert two - one == 26 * n_t ** 2  # each block's stored matrices: 26 x n_train^2 bytes
    # Scoring with three gamma factors: 48 x n_train^2 of summed inner kernels, plus one
    # fit's training-row copy (8 x (2/3 n_train)^2) and libsvm's cache.
    assert one - 26 * n_t ** 2 == 48 * n_t ** 2 + 8 * 2000 ** 2 + _cache(2000)
    # The module docstring's figure: six blocks, default grid, n_train = 10 000.
    assert 20e9 < kernel_unit_bytes(10_000, 2_500, [1280] * 6, gamma_factors=3) < 22e9
    with pytest.raises(ConfigError, match="'poly'"):
        kernel_unit_bytes(100, 20, [4], kernel="poly")
    with pytest.raises(ConfigError, match="inner_folds = 1"):
        kernel_unit_bytes(100, 20, [4], inner_folds=1)


# ---- the budget ----------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (None, ("fraction", DEFAULT_MEMORY_FRACTION)), (0.5, ("fraction", 0.5)), ("50%", ("fraction", 0.5)),
    ("0.25", ("fraction", 0.25)), (1, ("fraction", 1.0)), ("12GB", ("bytes", 12e9)),
    ("12 GiB", ("bytes", 12 * 2 ** 30)), (8_000_000_000, ("bytes", 8e9)), ("2e9", ("bytes", 2e9)),
])
def test_memory_budget_values(value, expected):
    assert parse_memory_budget(value) == expected
    assert Execution(memory_budget=value).memory_budget == value


@pytest.mark.parametrize("value, message", [
    ("lots", "memory_budget = 'lots'"), (16, "missing unit"), ("16", "missing unit"), ("0%", "(0, 100]"),
    ("150%", "(0, 100]"), (-1, "memory_budget = -1"), (True, "memory_budget = True"), ("10kB", "'10kB'"),
    (float("nan"), "nan"), ([1], "[1]"),
])
def test_bad_memory_budgets_are_refused_naming_the_value(value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        Execution(memory_budget=value)


def test_available_memory_is_within_the_machine():
    avail = running.available_memory()
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert avail is not None and 0 < avail <= total


def test_budget_is_a_share_of_available_memory_split_over_the_units_at_once(monkeypatch):
    monkeypatch.setattr(running, "available_memory", lambda: 8 * 2 ** 30)
    b = memory_budget(Execution(n_jobs=2, memory_budget=0.5), n_units=10)
    assert (b.total, b.concurrent, b.per_unit) == (4 * 2 ** 30, 2, 2 * 2 ** 30)
    assert memory_budget(Execution(n_jobs=2, memory_budget=0.5), n_units=1).per_unit == 4 * 2 ** 30
    assert memory_budget(Execution(n_jobs=4, backend="sequential"), n_units=10).concurrent == 1
    default = memory_budget(Execution(), n_units=3)
    assert default.per_unit == int(8 * 2 ** 30 * DEFAULT_MEMORY_FRACTION)
    fixed = memory_budget(Execution(n_jobs=2, memory_budget="3GiB"), n_units=5)  # a size ignores what is free
    assert (fixed.total, fixed.per_unit) == (3 * 2 ** 30, 3 * 2 ** 29)
    monkeypatch.setattr(running, "available_memory", lambda: None)
    unknown = memory_budget(Execution(), n_units=3)
    assert unknown.per_unit is None and "give memory_budget as a size" in unknown.source
    assert memory_budget(Execution(memory_budget="2GB"), n_units=3).per_unit == 2_000_000_000


def test_on_a_remote_dask_cluster_the_budget_is_a_workers_memory_limit():
    from distributed import LocalCluster

    from workbench.core.parallel import parallel_backend

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, memory_limit="512MiB",
                      dashboard_address=":0") as cluster:
        execution = Execution(backend="dask", scheduler=cluster.scheduler_address, memory_budget=0.5)
        with parallel_backend(execution):  # connected as to any cluster by its address
            b = memory_budget(execution, n_units=10)
    assert (b.total, b.concurrent, b.per_unit) == (256 * MiB, 2, 128 * MiB)
    assert "Dask worker's memory limit" in b.source


# ---- the sweep under a budget --------------------------------------------------------

OPTS = dict(heads=("svm-rbf",), grids={"svm-rbf": {"C": [1.0, 10.0], "gamma_factor": [0.5, 1.0]}}, ensembles=False)
PROTOCOL = Protocol(cv=3, inner_cv=3)
N = 400  # 300 training images: CV folds fit on 200, the test refit on 300
#: Fields of a record that may differ between two computations of the same numbers.
VOLATILE = {"seconds", "created", "time", "timestamp", "versions"}


def _plan(tmp_path: Path, options: SweepOptions, n: int = N):
    manifest, fs = make_task(n=n)
    return build_plan(manifest, fs, out=tmp_path / "plan", protocol=PROTOCOL, options=options,
                      grids=check_heads(options))


def _need(plan, fold: str, blocks_per_unit: int) -> int:
    """What a kernel unit on ``fold`` over its ``blocks_per_unit`` widest blocks is planned at."""
    task = plan.task
    widest = sorted((plan.blocks[b].shape[1] for b in plan.names), reverse=True)[:blocks_per_unit]
    return int(RSS_MARGIN * kernel_unit_bytes(len(task.train_rows[fold]), len(task.eval_rows[fold]), widest,
                                              inner_folds=[len(tr) for tr, _ in task.inner_of[fold]],
                                              gamma_factors=2))


def _folds(plan) -> list[str]:
    return [f for f, _, _ in plan.task.outer]


def _run(tmp_path: Path, name: str, budget, options: SweepOptions, n: int = N):
    """A sweep into ``tmp_path/name`` under ``budget``: its rows, records and predictions by key."""
    manifest, fs = make_task(n=n)
    out = tmp_path / name
    df = sweep(manifest, fs, out=out, protocol=PROTOCOL, options=options,
               execution=Execution(memory_budget=budget), progress=False)
    store = ResultStore(out)
    recs = {r["key"]: r for r in store.records()}
    return df, recs, {key: store.predictions(r) for key, r in recs.items()}


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def fast_pairs(tmp_path_factory):
    """The fast path's records at the default budget, for subsets of one and two blocks."""
    return _run(tmp_path_factory.mktemp("fast"), "run", None, SweepOptions(**OPTS, subsets=(1, 2)))


def test_fewer_blocks_per_unit_gives_the_fast_paths_records_bit_for_bit(tmp_path, fast_pairs, caplog):
    options = SweepOptions(**OPTS, subsets=(1, 2))
    plan = _plan(tmp_path, options)
    # The test refit (300 training rows) fits any two blocks, not all three; the CV
    # folds' units (200 rows) fit whole.
    budget = _need(plan, "test", 2)
    assert budget < _need(plan, "test", 3) and max(_need(plan, f, 3) for f in _folds(plan) if f != "test") <= budget
    units = plan_head_units(plan, Execution(memory_budget=budget))
    assert not units.plain
    on_test = [subs for _, f, subs in units.kernel if f == "test"]
    assert len(on_test) > 1 and max(len({b for s in subs for b in s}) for subs in on_test) == 2
    assert len(units.kernel) == len(_folds(plan)) - 1 + len(on_test)
    for f in _folds(plan):  # every subset once per fold
        got = sorted(s for _, g, subs in units.kernel if g == f for s in subs)
        assert got == sorted({c.blocks for c, g in plan.todo_heads if g == f})
    with caplog.at_level(logging.WARNING, logger="workbench.search.running"):
        df, recs, preds = _run(tmp_path, "split", budget, options)
    assert "split into" in caplog.text and "at most 2 blocks" in caplog.text
    _, fast_recs, fast_preds = fast_pairs
    assert recs.keys() == fast_recs.keys()
    for key in recs:
        assert _strip(recs[key]) == _strip(fast_recs[key]), key
        for k in ("proba", "scores", "pred"):
            np.testing.assert_array_equal(preds[key][k], fast_preds[key][k], err_msg=key)


def test_plain_refits_when_no_kernel_unit_fits_give_the_same_selection(tmp_path, fast_pairs, caplog):
    options = SweepOptions(**OPTS, subsets=(1, 2))
    plan = _plan(tmp_path, options)
    budget = MiB
    assert min(_need(plan, f, 1) for f in _folds(plan)) > budget  # not even one block's kernels fit ...
    units = plan_head_units(plan, Execution(memory_budget=budget))  # ... yet every plain refit does
    assert not units.kernel and len(units.plain) == len(plan.todo_heads)
    with caplog.at_level(logging.WARNING, logger="workbench.search.running"):
        df, recs, preds = _run(tmp_path, "plain", budget, options)
    assert "no kernel unit fits" in caplog.text and "plain refits" in caplog.text
    fast_df, fast_recs, fast_preds = fast_pairs
    assert recs.keys() == fast_recs.keys()
    for key in recs:
        assert recs[key]["best_params"] == fast_recs[key]["best_params"], key
        np.testing.assert_array_equal(preds[key]["pred"], fast_preds[key]["pred"], err_msg=key)
        d, fd = preds[key]["scores"], fast_preds[key]["scores"]
        scale = max(1.0, float(np.abs(fd).max()))
        # Rounding of the kernel entries, except where libsvm stops elsewhere within its tol=1e-3.
        assert np.median(np.abs(d - fd)) <= 1e-9 * scale, key
        assert np.abs(d - fd).max() <= 1e-3 * scale, key
        np.testing.assert_allclose(preds[key]["proba"], fast_preds[key]["proba"], rtol=0, atol=1e-3)
        np.testing.assert_allclose(recs[key]["inner_score"], fast_recs[key]["inner_score"], rtol=0, atol=1e-3)
    ranked, fast_ranked = summarize(df, "auc"), summarize(fast_df, "auc")
    assert list(ranked["candidate"]) == list(fast_ranked["candidate"])  # the same selection on CV
    np.testing.assert_allclose(ranked["cv_auc"], fast_ranked["cv_auc"], rtol=0, atol=1e-9)


def test_subsets_too_big_for_any_unit_run_plain_and_the_rest_stay_in_units(tmp_path):
    plan = _plan(tmp_path, SweepOptions(**OPTS))  # every subset, the three-block one too
    units = plan_head_units(plan, Execution(memory_budget=_need(plan, "test", 2)))
    # On the test refit only the three-block subset runs plain; the rest stay in units.
    assert [(c.blocks, f) for c, f in units.plain] == [(tuple(plan.names), "test")]
    on_test = [s for _, f, subs in units.kernel if f == "test" for s in subs]
    assert len(on_test) == 6 and all(len(s) < 3 for s in on_test)


def test_the_budget_is_shared_by_the_units_that_run_at_once(tmp_path):
    plan = _plan(tmp_path, SweepOptions(**OPTS))
    whole = _need(plan, "test", 3)
    # One worker: the whole budget per unit, no split. Four workers: a quarter each.
    assert len(plan_head_units(plan, Execution(memory_budget=whole)).kernel) == len(plan.task.outer)
    split = plan_head_units(plan, Execution(n_jobs=4, backend="threading", memory_budget=whole))
    assert split.budget.concurrent == 4 and split.budget.per_unit == whole // 4
    assert len(split) > len(plan.task.outer)


def test_over_the_budget_even_as_plain_refits_is_a_clear_error_before_any_record(tmp_path, monkeypatch):
    monkeypatch.setattr(running, "available_memory", lambda: 900 * 1024)  # 80 % of it: 720 KiB
    manifest, fs = make_task(n=N)
    out = tmp_path / "run"
    with pytest.raises(MemoryBudgetError) as err:
        sweep(manifest, fs, out=out, protocol=PROTOCOL, options=SweepOptions(**OPTS), progress=False)
    assert isinstance(err.value, WorkbenchError) and isinstance(err.value, MemoryError)
    msg = str(err.value)
    assert "svm-rbf" in msg and "even as a plain refit" in msg and "n_train = " in msg
    assert "over the memory budget of 720.00 kiB per unit (80% of 900.00 kiB available)" in msg
    assert "--memory-budget" in msg
    records = out / "records.jsonl"
    assert not records.exists() or records.read_text() == ""


def test_other_heads_are_not_estimated(tmp_path, monkeypatch):
    monkeypatch.setattr(running, "available_memory", lambda: 900 * 1024)
    plan = _plan(tmp_path, SweepOptions(heads=("logreg",), grids={"logreg": {"C": [1.0]}}, ensembles=False))
    units = plan_head_units(plan, Execution())
    assert not units.kernel and len(units.plain) == len(plan.todo_heads)


def test_memory_budget_str_names_share_and_source():
    b = MemoryBudget(8 * 2 ** 30, 2, "memory_budget 8.00 GiB", cap=4)
    assert str(b) == "4.00 GiB per unit (memory_budget 8.00 GiB, shared by 2 units at once)"
    assert b.for_units(10).concurrent == 4 and b.for_units(0).concurrent == 1


# ---- the option in the CLI and the config --------------------------------------------


def test_cli_memory_budget_reaches_the_sweep(monkeypatch, tmp_path, capsys):
    from workbench.cli import main, sweep_command

    got = {}

    def fake_sweep(*args, **kw):
        got.update(kw)
        raise SystemExit(0)  # stop before the ranking: the execution is what is checked

    monkeypatch.setattr(sweep_command, "sweep", fake_sweep)
    base = ["sweep", "--manifest", "m.csv", "--features", "alexnet:fc6", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        main(base + ["--memory-budget", "12GB", "--n-jobs", "2"])
    assert got["execution"] == Execution(n_jobs=2, memory_budget="12GB")
    got.clear()
    with pytest.raises(SystemExit):
        main(base)
    assert got["execution"].memory_budget is None
    got.clear()
    code = main(base + ["--memory-budget", "lots"])
    assert code != 0 and not got
    assert "memory_budget = 'lots'" in capsys.readouterr().err


CONFIG = """
name = "t"
manifest = "labels.csv"
classes = ["benign", "malignant"]

[features]
specs = ["tf_efficientnet_lite0:avgpool"]

[sweep]
heads = ["svm-rbf"]
"""


@pytest.mark.parametrize("value, expected", [('"50%"', "50%"), ('"12GB"', "12GB"), ("0.5", 0.5)])
def test_config_memory_budget_is_the_executions(tmp_path, value, expected):
    from workbench.experiment import ExperimentConfig

    path = tmp_path / "exp.toml"
    path.write_text(CONFIG + f"memory_budget = {value}\nn_jobs = 2\n")
    cfg = ExperimentConfig.load(path)
    assert cfg.execution == Execution(n_jobs=2, memory_budget=expected)
    assert "memory_budget" not in dataclasses.asdict(cfg.sweep)


def test_config_bad_memory_budget_names_the_key(tmp_path):
    from workbench.experiment import ConfigError as ExperimentConfigError, ExperimentConfig

    path = tmp_path / "exp.toml"
    path.write_text(CONFIG + 'memory_budget = "lots"\n')
    with pytest.raises(ExperimentConfigError, match=r"sweep\.memory_budget.*lots"):
        ExperimentConfig.load(path)
