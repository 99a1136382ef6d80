"""Ranking metrics of subgraph retrieval: mean average precision and HITS@k over queries."""

import numpy as np

from .._optional import require


def _check(scores, labels):
    if len(scores) != len(labels):
        raise ValueError(f"scores and labels must list the same queries, got {len(scores)} and {len(labels)}")


def mean_average_precision(scores, labels) -> float:
    """Mean over queries of scikit-learn's average precision of ranking that query's corpus graphs by score.

    scores, labels: sequences (one per query) of 1-D arrays; labels are 0/1. Queries with no positive are
    skipped (their AP is undefined)."""
    skm = require("sklearn.metrics", "fastlayers.data.mean_average_precision")
    average_precision_score = skm.average_precision_score

    _check(scores, labels)
    aps = [average_precision_score(np.asarray(y), np.asarray(s)) for s, y in zip(scores, labels)
           if np.asarray(y).any()]
    return float(np.mean(aps)) if aps else float("nan")


def hits_at_k(scores, labels, k: int = 20) -> float:
    """Mean over queries of the fraction of positives scored above the k-th highest-scoring negative (all
    positives when there are fewer than k negatives): how much of the relevant set a user meets before the k-th
    irrelevant result."""
    _check(scores, labels)
    out = []
    for s, y in zip(scores, labels):
        s, y = np.asarray(s, dtype=np.float64), np.asarray(y).astype(bool)
        if not y.any():
            continue
        neg = np.sort(s[~y])[::-1]
        if len(neg) < k:
            out.append(1.0)
            continue
        out.append(float(np.mean(s[y] > neg[k - 1])))
    return float(np.mean(out)) if out else float("nan")
