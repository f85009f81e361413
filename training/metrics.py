"""Offline CTR metrics: AUC, grouped AUC (per user, per request), logloss, calibration (PCOC, ECE) and the
gap to the oracle.

Pure numpy functions over 1-D arrays of labels (0/1), predicted probabilities and group keys, so the
trainer, the benchmarks and the promotion gates all compute a metric the same way. Per-user gAUC asks
"does the model rank this user's clicks above their non-clicks"; per-request gAUC asks the ranking question
a serving system actually faces -- order the candidates of one request -- and is blind to anything that is
constant within a request (user, hour, device), so it isolates candidate-level signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_EPS = 1e-7


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (what the Mann-Whitney statistic needs)."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # Boundaries of runs of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def group_aucs(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The AUC and the impression count of every group (user, request) that has both a click and a
    non-click, in sorted group-key order: the same groups in the same order for any scores over the same
    labels and groups, so two models' arrays line up group by group (what a paired bootstrap resamples).

    Vectorised over groups: one sort by (group, score), ranks within each group with ties sharing their
    mean rank, and per-group rank sums of the clicks (the Mann-Whitney statistic of ``auc``).
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    u = np.asarray(groups)
    if len(y) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    order = np.lexsort((s, u))
    y, s, u = y[order], s[order], u[order]
    new_group = np.r_[True, u[1:] != u[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(u)), 0))
    # Runs of equal (group, score): each member gets the run's mean 1-based rank within its group.
    run_starts = np.flatnonzero(new_group | np.r_[True, s[1:] != s[:-1]])
    run_ends = np.r_[run_starts[1:], len(u)]
    mean_rank = np.repeat((run_starts + run_ends + 1) / 2.0, run_ends - run_starts) - group_start
    starts = np.flatnonzero(new_group)
    n = np.diff(np.r_[starts, len(u)])
    pos = np.add.reduceat(y.astype(np.int64), starts)
    rank_sum = np.add.reduceat(np.where(y, mean_rank, 0.0), starts)
    both = (pos > 0) & (pos < n)
    p, neg = pos[both], n[both] - pos[both]
    return (rank_sum[both] - p * (p + 1) / 2.0) / (p * neg), n[both]


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Impression-weighted mean of per-group AUC over groups that have both a click and a non-click.

    ``users`` is any group key: user ids for per-user gAUC, request ids for per-request gAUC. NaN when no
    group has both classes (e.g. one impression per request).
    """
    per_group, weight = group_aucs(labels, scores, users)
    if not len(per_group):
        return float("nan")
    return float(np.sum(per_group * weight) / np.sum(weight))


@dataclass(frozen=True)
class PairedDifference:
    """Model A minus model B on one test window: the mean over seeds of the per-seed difference, and its
    bootstrap interval from resampling the window's groups (requests or users; rows for plain AUC) and
    the seeds."""

    mean: float
    low: float
    high: float
    level: float
    rounds: int
    unit: str  # what was resampled: "group" or "row"

    @property
    def resolved(self) -> bool:
        """The interval excludes 0: the window tells the two models apart."""
        return self.low > 0 or self.high < 0


def paired_bootstrap(
    labels: np.ndarray,
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    groups: np.ndarray | None = None,
    rounds: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """How far model A's metric is above model B's, with a percentile interval.

    ``a`` and ``b`` hold one score vector per seed (seed s of A is paired with seed s of B). With
    ``groups`` the metric is the grouped AUC and each round redraws the mixed groups with replacement;
    without, it is AUC and each round redraws rows. One redraw serves every seed and both models (the
    pairing), and each round also redraws the seeds themselves, so the interval holds both the test
    window's sampling noise and the seed-to-seed spread; two identical models get exactly [0, 0].
    """
    if len(a) != len(b) or not len(a):
        raise ValueError("need the same number (>= 1) of score vectors for A and B, one per seed")
    if rounds < 1 or not 0 < level < 1:
        raise ValueError("need rounds >= 1 and 0 < level < 1")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if groups is not None:
        per = [group_aucs(labels, s, groups) for s in (*a, *b)]
        weight = per[0][1].astype(np.float64)
        if not len(weight):
            raise ValueError("no group holds both a click and a non-click: a grouped AUC is undefined")
        diff = np.stack([pa - pb for (pa, _), (pb, _) in zip(per[:len(a)], per[len(a):], strict=True)])
        point = float(np.mean(diff @ weight) / weight.sum())
        # A round's per-seed gAUC difference is linear in the per-group AUCs: counts x weight over groups.
        counts = rng.multinomial(len(weight), np.full(len(weight), 1 / len(weight)), size=rounds) * weight
        per_seed = counts @ diff.T / counts.sum(1, keepdims=True)  # [rounds, seeds]
        unit = "group"
    else:
        point = float(np.mean([auc(labels, sa) - auc(labels, sb) for sa, sb in zip(a, b, strict=True)]))
        per_seed = np.empty((rounds, len(a)))
        for r in range(rounds):
            idx = rng.integers(0, len(labels), len(labels))
            y = labels[idx]
            per_seed[r] = [auc(y, sa[idx]) - auc(y, sb[idx]) for sa, sb in zip(a, b, strict=True)]
        unit = "row"
    chosen = rng.integers(0, len(a), (rounds, len(a)))
    draws = np.take_along_axis(per_seed, chosen, 1).mean(1)
    draws = draws[np.isfinite(draws)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return PairedDifference(point, float(low), float(high), level, rounds, unit)


# Groups holding both a click and a non-click below which a grouped AUC is too noisy to rank or choose by.
MIN_MIXED_GROUPS = 30
METRIC_TITLES = {"request_gauc": "request gAUC", "gauc": "user gAUC", "auc": "AUC"}


def mixed_groups(labels: np.ndarray, groups: np.ndarray) -> int:
    """How many groups (requests, users) hold both a click and a non-click: the groups a gAUC averages."""
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    clicks = np.bincount(index, weights=np.asarray(labels, dtype=np.float64))
    sizes = np.bincount(index)
    return int(((clicks > 0) & (clicks < sizes)).sum())


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def pcoc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Predicted over observed clicks (1.0 = calibrated on average); NaN when nothing was clicked."""
    clicks = float(np.sum(labels))
    return float(np.sum(probs) / clicks) if clicks > 0 else float("nan")


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins, weighted by bin size."""
    curve = reliability_curve(labels, probs, bins)
    total = sum(curve["count"])
    if not total:
        return float("nan")
    gaps = zip(curve["count"], curve["predicted"], curve["observed"], strict=True)
    return float(sum(c * abs(pr - ob) for c, pr, ob in gaps) / total)


def reliability_curve(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Mean prediction, observed rate and count per non-empty bin (the calibration plot's points)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    out: dict[str, list[float]] = {"predicted": [], "observed": [], "count": []}
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            out["predicted"].append(float(p[in_bin].mean()))
            out["observed"].append(float(y[in_bin].mean()))
            out["count"].append(float(in_bin.sum()))
    return out


def evaluate_predictions(
    labels: np.ndarray,
    probs: np.ndarray,
    users: np.ndarray | None = None,
    p_click: np.ndarray | None = None,
    requests: np.ndarray | None = None,
) -> dict[str, float]:
    """Every metric of one model on one holdout; ``gauc`` with user keys, ``request_gauc`` with request
    keys (absent when no request holds both a click and a non-click: single-slot logs such as Criteo or
    MovieLens), ``oracle_*`` only when the log carries true p_click."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and predictions {probs.shape} must be equal 1-D arrays")
    if not np.isfinite(probs).all():
        raise ValueError("predictions contain NaN or infinity")
    out = {
        "rows": float(len(labels)),
        "auc": auc(labels, probs),
        "logloss": logloss(labels, probs),
        "pcoc": pcoc(labels, probs),
        "ece": ece(labels, probs),
    }
    if users is not None:
        out["gauc"] = gauc(labels, probs, users)
    if requests is not None:
        by_request = gauc(labels, probs, requests)
        if by_request == by_request:  # left out, not NaN, where no request has both classes (one slot each)
            out["request_gauc"] = by_request
    if p_click is not None:
        oracle = auc(labels, np.asarray(p_click, dtype=np.float64))
        out["oracle_auc"] = oracle
        out["oracle_gap"] = oracle - out["auc"]
    return out
