"""Vote ensembles and stacking over stored member predictions.

Ensembles are evaluated from the probabilities each member head already produced on
the same rows, so no head is refitted per ensemble: the sweep stores every head's
out-of-fold and test probabilities once, and every subset of members is a few array
operations.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

__all__ = ["ENSEMBLE_RULES", "VOTE_KINDS", "fit_stack", "stack", "stack_proba", "vote"]

VOTE_KINDS = ("vote-hard", "vote-soft")

#: Version of the rule each ensemble kind is computed by, where it changed since the
#: first release (rule 1). Part of a candidate's identity, so records made under an
#: older rule are recomputed while every other record is reused.
#: stack 2: on a CV fold, the meta-learner is fitted on inner out-of-fold predictions
#: of members trained inside the outer training rows (rule 1 used the other outer
#: folds' predictions, made by members that had trained on the scored fold: optimistic).
#: vote-hard 2 (two classes): each member votes at its own out-of-fold Youden threshold
#: (rule 1 thresholded every member at 0.5).
ENSEMBLE_RULES = {"stack": 2, "vote-hard": 2}


def _stacked(probas: Sequence[np.ndarray]) -> np.ndarray:
    if not len(probas):
        raise ValueError("an ensemble needs at least one member")
    P = np.stack([np.asarray(p, dtype=np.float64) for p in probas])
    if P.ndim != 3:
        raise ValueError(f"member probabilities must be (n, n_classes) each, got {P.shape[1:]}")
    return P


def vote(probas: Sequence[np.ndarray], kind: str = "vote-soft", *,
         thresholds: Sequence[float] | None = None, positive: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Combine member probabilities by vote.

    Parameters
    ----------
    probas : list of ndarray, each (n, n_classes)
        The members' class probabilities on the same rows.
    kind : {"vote-soft", "vote-hard"}
        Soft: the mean probability decides. Hard: the majority of the members'
        predicted classes decides, and a tie goes to the tied class with the highest
        mean probability (scikit-learn's ``VotingClassifier`` gives ties to the lowest
        class index instead, which favours whichever class happens to sort first).
    thresholds, positive : optional, two classes and ``vote-hard`` only
        Member ``m`` votes for class ``positive`` iff its probability of it is at least
        ``thresholds[m]`` (its own operating point, e.g. Youden's on out-of-fold
        predictions) instead of taking its argmax; a tie goes to the positive class iff
        the members' mean margin over their thresholds is >= 0.

    Returns
    -------
    pred : ndarray of int, (n,)
    proba : ndarray, (n, n_classes)
        Soft: the mean probabilities. Hard: each class's share of the votes, a coarse
        score for ROC curves.
    """
    P = _stacked(probas)
    soft = P.mean(axis=0)
    if kind not in VOTE_KINDS:
        raise ValueError(f"unknown vote {kind!r}; choose from {', '.join(VOTE_KINDS)}")
    if thresholds is not None:
        if kind != "vote-hard" or P.shape[2] != 2 or positive not in (0, 1):
            raise ValueError("member thresholds apply to a hard vote over two classes, with positive 0 or 1 "
                             f"(got {kind}, {P.shape[2]} classes, positive={positive!r})")
        t = np.asarray(thresholds, dtype=np.float64)
        if t.shape != (P.shape[0],):
            raise ValueError(f"{P.shape[0]} members need {P.shape[0]} thresholds, got shape {t.shape}")
        margin = P[:, :, positive] - t[:, None]  # (members, n)
        share = (margin >= 0).mean(axis=0)
        pos_wins = (share > 0.5) | ((share == 0.5) & (margin.mean(axis=0) >= 0))
        pred = np.where(pos_wins, positive, 1 - positive)
        proba = np.empty_like(soft)
        proba[:, positive], proba[:, 1 - positive] = share, 1.0 - share
        return pred, proba
    if kind == "vote-soft":
        return soft.argmax(axis=1), soft
    n_members, n, n_classes = P.shape
    votes = np.zeros((n, n_classes))
    np.add.at(votes, (np.arange(n)[None, :].repeat(n_members, 0), P.argmax(axis=2)), 1.0)
    tied = votes == votes.max(axis=1, keepdims=True)
    pred = np.where(tied, soft, -np.inf).argmax(axis=1)
    return pred, votes / n_members


def _design(probas: Sequence[np.ndarray]) -> np.ndarray:
    """Members' probabilities side by side, each member's last column dropped (its
    columns sum to one)."""
    P = _stacked(probas)
    return P[:, :, :-1].transpose(1, 0, 2).reshape(P.shape[1], -1)


def fit_stack(train_probas: Sequence[np.ndarray], y_train: np.ndarray, seed: int = 0) -> LogisticRegression:
    """The meta-learner of a stack, fitted on out-of-fold member probabilities only."""
    return LogisticRegression(max_iter=5000, random_state=seed).fit(_design(train_probas), np.asarray(y_train))


def stack_proba(meta: LogisticRegression, eval_probas: Sequence[np.ndarray]) -> np.ndarray:
    """A fitted meta-learner's class probabilities over all classes (absent ones 0)."""
    Xe = _design(eval_probas)
    proba = np.zeros((len(Xe), _stacked(eval_probas).shape[2]))
    proba[:, meta.classes_] = meta.predict_proba(Xe)
    return proba


def stack(
    train_probas: Sequence[np.ndarray],
    y_train: np.ndarray,
    eval_probas: Sequence[np.ndarray],
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Stacking: a logistic regression over the members' probabilities.

    It must be fitted on out-of-fold probabilities only (``train_probas``: each row
    predicted by members that did not train on it), then applied to ``eval_probas``.
    """
    proba = stack_proba(fit_stack(train_probas, y_train, seed), eval_probas)
    return proba.argmax(axis=1), proba
