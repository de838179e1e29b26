"""``workbench compare``: candidates every run holds, ranked within each run and across runs."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from scipy.stats import friedmanchisquare

from workbench.cli import main
from workbench.errors import MissingFileError
from workbench.evaluation.store import ResultStore
from workbench.report.compare import RunsDifferError, compare_runs, write_comparison

BINARY = ("benign", "malignant")


def make_run(path, cv_means: dict[str, float], classes=BINARY, folds=("0", "1", "2"), spread=0.01, seed=0,
             blocks: dict[str, tuple[list[str], list[str]]] | None = None, optimistic: bool = False,
             test: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None):
    """A run folder whose candidates score ``cv_means[c]`` (+ small noise) on each CV fold, and 0.5 on test;
    ``blocks`` gives candidates their (block names, codes); ``optimistic`` marks the
    candidates' (not the baselines') CV records optimistic, as a sweep on a Y-Net's boxes does;
    ``test`` gives a candidate's test predictions as (ids, y 0/1, p of the positive class)."""
    store = ResultStore(path)
    store.open({"format": 1, "task": str(path.name), "classes": list(classes), "positive": classes[-1], "cv": 3})
    rng = np.random.default_rng(seed)
    for c, mean in cv_means.items():
        noise = rng.normal(size=len(folds)) * spread
        noise -= noise.mean()  # the CV mean is exactly cv_means[c]
        for f, v in [*zip(folds, mean + noise), ("test", 0.5)]:
            record = {"key": f"{c}/{f}", "candidate_id": f"id-{c}", "candidate": c,
                      "kind": "baseline" if c.startswith("CNN") else "svm-rbf", "size": 1, "fold": f,
                      "n_train": 80, "n_eval": 20, "metrics": {"auc": float(v), "accuracy": float(v) - 0.1}}
            bs, cs = (blocks or {}).get(c, ([], []))
            record.update(blocks=bs, codes=cs)
            if optimistic and f != "test" and not c.startswith("CNN"):
                record["optimistic"] = True
            if f == "test" and test and c in test:
                ids, y, p = test[c]
                store.append(record, {"ids": np.asarray(ids), "y_true": np.asarray(y),
                                      "proba": np.column_stack([1 - np.asarray(p), p])})
                continue
            # Each run its own images (as different datasets have), unless ``test`` says otherwise.
            store.append(record, {"ids": np.array([f"{path.name}-a", f"{path.name}-b"]), "y_true": np.array([0, 1]),
                                  "proba": np.array([[0.6, 0.4], [0.3, 0.7]])})
    return path


@pytest.fixture()
def runs(tmp_path):
    a = make_run(tmp_path / "busi", {"[A] svm": 0.90, "[B] svm": 0.85, "[AB] svm": 0.92, "CNN r50": 0.88,
                                     "[A] rf": 0.80})
    b = make_run(tmp_path / "thyroid", {"[A] svm": 0.80, "[B] svm": 0.83, "[AB] svm": 0.86, "CNN r50": 0.70},
                 seed=1)
    c = make_run(tmp_path / "other" / "breast", {"[A] svm": 0.75, "[B] svm": 0.70, "[AB] svm": 0.79,
                                                 "CNN r50": 0.72, "[C] svm": 0.9}, seed=2)
    return [a, b, c]


def test_ranks_per_run_and_mean_rank(runs):
    res = compare_runs(runs)
    assert res.runs == ["busi", "thyroid", "breast"]
    f = res.frame.set_index("candidate")
    # Within each run, among the 4 common candidates (1 = best):
    #   busi     [AB] .92 > [A] .90 > CNN .88 > [B] .85
    #   thyroid  [AB] .86 > [B] .83 > [A] .80 > CNN .70
    #   breast   [AB] .79 > [A] .75 > CNN .72 > [B] .70
    assert list(f["busi:rank"]) == [1, 2, 4, 3] and list(f.index) == ["[AB] svm", "[A] svm", "[B] svm", "CNN r50"]
    assert f.loc["[B] svm", "thyroid:rank"] == 2 and f.loc["CNN r50", "thyroid:rank"] == 4
    # [B] (4, 2, 4) and CNN (3, 4, 3) tie on mean rank 10/3; [B]'s mean CV AUC (0.793 > 0.767) puts it first.
    assert f["mean_rank"].to_dict() == pytest.approx({"[AB] svm": 1.0, "[A] svm": 7 / 3, "[B] svm": 10 / 3,
                                                      "CNN r50": 10 / 3})
    assert f.loc["[A] svm", "thyroid:cv_auc"] == pytest.approx(0.80)
    assert f.loc["CNN r50", "kind"] == "baseline"
    # The Friedman statistic over runs (blocks) x candidates is scipy's.
    expect = friedmanchisquare(*res.scores.to_numpy().T)
    assert res.friedman.statistic == pytest.approx(expect.statistic) and res.friedman.n_blocks == 3
    assert res.friedman.mean_ranks == pytest.approx(f["mean_rank"].to_numpy())
    long = res.long
    assert len(long) == 12 and set(long.columns) >= {"candidate", "run", "cv_auc", "rank"}
    # Candidates some run lacks are named, with where they are.
    note = next(n for n in res.notes if "not in every run" in n)
    assert "2 candidates not in every run" in note and "[A] rf (only in busi)" in note
    assert "[C] svm (only in breast)" in note


def test_top_keeps_the_best_mean_ranks_and_reranks(runs):
    res = compare_runs(runs, top=3)
    assert list(res.frame.candidate) == ["[AB] svm", "[A] svm", "[B] svm"]
    # Among the three, CNN r50 gone: busi [AB] 1, [A] 2, [B] 3.
    assert list(res.frame["busi:rank"]) == [1, 2, 3]
    assert any("The 3 candidates with the best mean rank among the 4" in n for n in res.notes)
    two = compare_runs(runs, top=2)
    assert two.friedman is None and any("need at least 3" in n for n in two.notes)


def test_another_metric_and_lower_is_better(tmp_path, monkeypatch):
    a = make_run(tmp_path / "a", {"x": 0.9, "y": 0.8, "z": 0.7})
    b = make_run(tmp_path / "b", {"x": 0.6, "y": 0.5, "z": 0.4})
    res = compare_runs([a, b], metric="accuracy")
    assert list(res.frame.candidate) == ["x", "y", "z"]
    assert res.frame["a:cv_accuracy"].tolist() == pytest.approx([0.8, 0.7, 0.6])
    # A metric where lower is better ranks the lowest value first.
    import workbench.report.compare as compare

    monkeypatch.setattr(compare, "higher_is_better", lambda m: False)
    assert list(compare_runs([a, b], metric="accuracy").frame.candidate) == ["z", "y", "x"]


def test_runs_that_cannot_be_compared(runs, tmp_path):
    three = make_run(tmp_path / "three", {"[A] svm": 0.8, "[B] svm": 0.7, "[AB] svm": 0.9},
                     classes=("benign", "malignant", "normal"))
    with pytest.raises(RunsDifferError, match="different numbers of classes .*three: benign, malignant, normal"):
        compare_runs([runs[0], three])
    other = make_run(tmp_path / "other-names", {"[A] svm": 0.8, "[B] svm": 0.7, "[AB] svm": 0.9},
                     classes=("nodule", "cancer"))
    res = compare_runs([runs[0], other])
    assert any("classes differ" in n and "other-names: nodule, cancer, positive cancer" in n for n in res.notes)
    disjoint = make_run(tmp_path / "disjoint", {"[Q] svm": 0.8})
    with pytest.raises(RunsDifferError, match="no candidate is in every run"):
        compare_runs([runs[0], disjoint])
    with pytest.raises(MissingFileError, match="not a run folder"):
        compare_runs([runs[0], tmp_path / "nowhere"])
    with pytest.raises(ValueError, match="given twice"):
        compare_runs([runs[0], runs[0]])
    with pytest.raises(KeyError, match="no metric 'aucc'"):
        compare_runs(runs, metric="aucc")
    with pytest.raises(ValueError, match="top = 0"):
        compare_runs(runs, top=0)


def test_same_folder_names_are_told_apart(tmp_path):
    a = make_run(tmp_path / "x" / "run", {"p": 0.9, "q": 0.8, "r": 0.7})
    b = make_run(tmp_path / "y" / "run", {"p": 0.8, "q": 0.9, "r": 0.7})
    assert compare_runs([a, b]).runs == ["x/run", "y/run"]


def test_write_comparison_table_and_cd_figure(runs, tmp_path):
    res = compare_runs(runs)
    out = tmp_path / "out"
    paths = write_comparison(res, out)
    assert [p.name for p in paths] == ["compare-auc.md", "compare-auc.tex", "compare-auc.csv",
                                       "compare-auc-long.csv", "cd-runs-auc.png", "cd-runs-auc.pdf"]
    md = (out / "compare-auc.md").read_text()
    header = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    assert header == ["Model", "busi: CV AUC", "busi: rank", "thyroid: CV AUC", "thyroid: rank", "breast: CV AUC",
                      "breast: rank", "Mean rank"]
    assert "Friedman test over 3 runs of 4 candidates" in md and "[A] rf (only in busi)" in md
    assert "CNN r50 (baseline)" in md
    csv = pd.read_csv(out / "compare-auc.csv")
    assert csv["Mean rank"].tolist() == pytest.approx([1.0, 7 / 3, 10 / 3, 10 / 3])
    # Same data, same bytes.
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    again = write_comparison(compare_runs(runs), tmp_path / "again")
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in again} == digests


def test_one_run_and_two_candidates_write_no_figure(tmp_path):
    a = make_run(tmp_path / "a", {"p": 0.9, "q": 0.8, "r": 0.7})
    res = compare_runs([a])
    assert res.friedman is None and any("One run" in n for n in res.notes)
    assert not [p for p in write_comparison(res, tmp_path / "out") if p.suffix == ".png"]


def test_cli_end_to_end(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--top", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Candidates across runs: CV AUC and ranks" in printed and f"wrote {out / 'cd-runs-auc.png'}" in printed
    assert (out / "cd-runs-auc.pdf").is_file()
    assert main(["compare", str(runs[0]), str(tmp_path / "nowhere")]) == 2
    assert "workbench compare: error:" in capsys.readouterr().err


L0, L1 = "tf_efficientnet_lite0:avgpool", "tf_efficientnet_lite1:avgpool"


def test_across_inputs_matches_predicted_box_candidates_with_their_plain_twins(tmp_path):
    """One task on the whole image, the manual box and a Y-Net's predicted boxes: the
    predicted-box run's ``[Lp0+Lp1]`` is the others' ``[L0+L1]``."""
    plain = {"[L0] svm": ([L0], ["L0"]), "[L1] svm": ([L1], ["L1"]), "[L0+L1] svm": ([L0, L1], ["L0", "L1"])}
    pbox = {"[Lp0] svm": ([L0 + "#pbox"], ["Lp0"]), "[Lp1] svm": ([L1 + "#pbox"], ["Lp1"]),
            "[Lp0+Lp1] svm": ([L0 + "#pbox", L1 + "#pbox"], ["Lp0", "Lp1"])}
    whole = make_run(tmp_path / "whole", {"[L0] svm": 0.80, "[L1] svm": 0.82, "[L0+L1] svm": 0.85,
                                          "CNN lite0": 0.83}, blocks=plain)
    box = make_run(tmp_path / "box", {"[L0] svm": 0.86, "[L1] svm": 0.84, "[L0+L1] svm": 0.90,
                                      "CNN lite0": 0.83}, blocks=plain, seed=1)
    pred = make_run(tmp_path / "pbox", {"[Lp0] svm": 0.84, "[Lp1] svm": 0.83, "[Lp0+Lp1] svm": 0.88,
                                        "CNN lite0": 0.83}, blocks=pbox, seed=2, optimistic=True)
    # Without it only the CNN, which has no blocks, is in every run.
    assert list(compare_runs([whole, box, pred]).frame.candidate) == ["CNN lite0"]
    res = compare_runs([whole, box, pred], across_inputs=True)
    frame = res.frame.set_index("candidate")
    assert set(frame.index) == {"[L0] svm", "[L1] svm", "[L0+L1] svm", "CNN lite0"}
    assert frame.loc["[L0+L1] svm", "pbox:cv_auc"] == pytest.approx(0.88)
    assert frame.loc["[L0+L1] svm", "box:cv_auc"] == pytest.approx(0.90)
    assert frame.loc["[L0] svm", "whole:cv_auc"] == pytest.approx(0.80)
    # The Y-Net saw the predicted-box run's CV folds: its heads' CV figures carry the mark.
    assert list(frame["pbox:optimistic_cv"]) == [c != "CNN lite0" for c in frame.index]
    assert "whole:optimistic_cv" not in frame.columns and "box:optimistic_cv" not in frame.columns
    from workbench.report.compare import comparison_across_runs_table
    from workbench.report.tables import to_markdown

    text = to_markdown(comparison_across_runs_table(res))
    assert text.count(" §") == 3 and "§: an optimistic CV estimate" in text and "in pbox" in text
    # Plain runs are not relabelled, and a run mixing both kinds of one candidate is refused.
    mixed = make_run(tmp_path / "mixed", {"[L0] svm": 0.8, "[Lp0] svm": 0.8}, blocks={**plain, **pbox})
    with pytest.raises(RunsDifferError, match="fall together"):
        compare_runs([whole, mixed], across_inputs=True)
    assert main(["compare", str(whole), str(pred), "--across-inputs"]) == 0


def test_runs_sharing_their_test_split_get_a_paired_test_table(tmp_path):
    """One task on two inputs: each shared candidate's test AUC per run, DeLong against
    the first run on the same images (Holm over the table), in the order the runs came."""
    from sklearn.metrics import roc_auc_score

    from workbench.evaluation import stats
    from workbench.report.compare import comparison_test_table
    from workbench.report.tables import to_markdown

    rng = np.random.default_rng(0)
    ids = np.array([f"img{i:02d}" for i in range(40)])
    y = np.array([0, 1] * 20)
    preds = {run: {c: np.clip(y * shift + rng.normal(0.4, 0.25, 40), 0, 1) for c in ("[A] svm", "[B] svm")}
             for run, shift in (("whole", 0.2), ("box", 0.35))}
    order = rng.permutation(40)  # a run's prediction file may list the images in another order
    runs = [make_run(tmp_path / run, {"[A] svm": 0.8, "[B] svm": 0.7},
                     test={c: (ids[order], y[order], p[order]) if run == "box" else (ids, y, p)
                           for c, p in preds[run].items()}) for run in ("whole", "box")]
    res = compare_runs(runs)
    t = res.test.set_index("candidate")
    for c in ("[A] svm", "[B] svm"):
        for run in ("whole", "box"):
            assert t.loc[c, f"{run}:test_auc"] == pytest.approx(roc_auc_score(y, preds[run][c]))
        assert t.loc[c, "box:p"] == pytest.approx(stats.delong_test(y, preds["box"][c], preds["whole"][c]).p_value)
    np.testing.assert_allclose(t["box:p_holm"], stats.holm(t["box:p"].to_numpy()))
    assert "whole:p" not in t.columns  # the first run is the reference
    text = to_markdown(comparison_test_table(res))
    assert "box vs whole: p (Holm)" in text and "DeLong" in text
    written = write_comparison(res, tmp_path / "out")
    assert tmp_path / "out" / "compare-test-auc.csv" in written
    # Several test images per patient (the first run's groups): a cluster bootstrap instead.
    groups = [f"patient{k // 2}" for k in range(40)]
    pd.DataFrame({"id": ids, "group": groups}).to_csv(runs[0] / "splits.csv", index=False)
    grouped = compare_runs(runs).test.set_index("candidate")
    assert grouped.attrs["clustered"] and "cluster bootstrap" in to_markdown(comparison_test_table(compare_runs(runs)))
    for c in ("[A] svm", "[B] svm"):
        assert grouped.loc[c, "box:p"] == pytest.approx(
            stats.cluster_bootstrap_test(y, groups, p1=preds["box"][c], p2=preds["whole"][c]).p_value)
    # Different test images: no paired table, and a note says why.
    other = make_run(tmp_path / "other", {"[A] svm": 0.8, "[B] svm": 0.7},
                     test={c: (np.char.add(ids, "x"), y, p) for c, p in preds["box"].items()})
    res = compare_runs([runs[0], other])
    assert res.test is None and any("different images" in n for n in res.notes)
    with pytest.raises(ValueError, match="no test-split comparison"):
        comparison_test_table(res)
