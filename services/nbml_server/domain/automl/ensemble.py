"""Ensemble selection (Caruana et al., 2004) over the out-of-fold predictions of the
search's best trials, and the estimator that serves the result.

`greedy_selection` adds, one at a time and with replacement, the candidate whose
addition to the running average scores best, starting from the best single
candidate; the counts of the best-scoring state become the weights.

`WeightedEnsemble` holds fitted member pipelines (each takes the raw frame) and
their weights: one estimator, stored as one skops artifact like a Pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.base import BaseEstimator, clone

from .calibration import scale
from .tasks import CLASSIFICATION

ENSEMBLE_FAMILY = "ensemble"
MAX_ITERATIONS = 50
# Stop when this many additions in a row have not improved the best score.
PATIENCE = 10
TOLERANCE = 1e-9  # relative improvement below which a step does not count


def greedy_selection(predictions: Sequence[np.ndarray], score: Callable[[np.ndarray], float],
                     greater_is_better: bool, *, start: int = 0,
                     iterations: int = MAX_ITERATIONS, patience: int = PATIENCE,
                     out_of_time: Callable[[], bool] | None = None) -> tuple[np.ndarray, float]:
    """Integer counts per candidate (same order as `predictions`) of the best
    ensemble found, and its score. `score(blend)` rates an average of predictions
    (non-finite counts as worst). The first member is `predictions[start]`."""
    sign = 1.0 if greater_is_better else -1.0

    def rated(blend: np.ndarray) -> float:
        value = score(blend)
        return sign * value if np.isfinite(value) else -np.inf

    counts = np.zeros(len(predictions), dtype=np.int64)
    counts[start] = 1
    total = np.array(predictions[start], dtype=np.float64)
    best_counts, best = counts.copy(), rated(total)
    stale = 0
    for step in range(1, iterations):
        if out_of_time is not None and out_of_time():
            break
        size = step + 1
        choice, choice_value = -1, -np.inf
        for j, p in enumerate(predictions):
            value = rated((total + p) / size)
            if value > choice_value:
                choice, choice_value = j, value
        if choice < 0:
            break
        counts[choice] += 1
        total += predictions[choice]
        if choice_value > best + TOLERANCE * max(1.0, abs(best)):  # not float noise
            best_counts, best, stale = counts.copy(), choice_value, 0
        else:
            stale += 1
            if stale >= patience:
                break
    return best_counts, float(sign * best)


class WeightedEnsemble(BaseEstimator):
    """Weighted average of fitted pipelines' predictions.

    Classification: `predict_proba` averages the members' probabilities (members
    must share `classes_`) and scales the average by `temperature`
    (`calibration.scale`; log loss), `predict` is the most probable class, `classes_`
    are strings. Regression: `predict` averages the members' predictions."""

    def __init__(self, members: Sequence = (), weights: Sequence[float] = (),
                 task: str = CLASSIFICATION, temperature: float = 1.0):
        self.members = members
        self.weights = weights
        self.task = task
        self.temperature = temperature

    # -- checks

    def _weights(self) -> np.ndarray:
        w = np.asarray(self.weights, dtype=np.float64)
        if len(self.members) == 0 or w.shape != (len(self.members),):
            raise ValueError(f"{len(self.members)} members but weights {list(w)}")
        if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
            raise ValueError(f"weights must be non-negative with a positive sum, got {list(w)}")
        return w / w.sum()

    @property
    def classes_(self) -> np.ndarray:
        if self.task != CLASSIFICATION:
            raise AttributeError("a regression ensemble has no classes_")
        first = [str(c) for c in self.members[0].classes_]
        for member in self.members[1:]:
            assert [str(c) for c in member.classes_] == first, "members disagree on classes_"
        return np.asarray(first, dtype=object)

    def __sklearn_is_fitted__(self) -> bool:
        return len(self.members) > 0

    # -- scikit-learn API

    def fit(self, X, y):
        """Refits (clones of) every member on X, y; the weights stay."""
        self.members = [clone(m).fit(X, y) for m in self.members]
        return self

    def predict_proba(self, X) -> np.ndarray:
        if self.task != CLASSIFICATION:
            raise AttributeError("predict_proba is for classification ensembles")
        w = self._weights()
        self.classes_  # noqa: B018 - asserts the members share their classes
        out = None
        for weight, member in zip(w, self.members):
            proba = np.asarray(member.predict_proba(X), dtype=np.float64) * weight
            out = proba if out is None else out + proba
        return scale(out, self.temperature)

    def predict(self, X) -> np.ndarray:
        if self.task == CLASSIFICATION:
            return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
        w = self._weights()
        out = None
        for weight, member in zip(w, self.members):
            values = np.asarray(member.predict(X), dtype=np.float64).reshape(-1) * weight
            out = values if out is None else out + values
        return out
