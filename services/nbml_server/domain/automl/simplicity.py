"""Whether the search's winner beats the best simple model clearly enough to be
preferred to it.

The winner is the best of hundreds of trials (or a blend of them fitted to the same
out-of-fold rows), so part of its cross-validated lead over any one model is luck of
the rows: the winner's curse. On a few hundred rows that luck can be larger than the
real difference. A simple model - a regularisation knob (logistic regression also
weighs classes or not), fitted in closed form or by a convex fit: ridge, logistic
regression, the Gaussian class models LDA and QDA - is not flattered the same way: its
trials differ by that knob and score almost alike. So
the search ranks its best simple model first unless the winner's lead over it on the
out-of-fold rows is at least LEAD_IN_STANDARD_ERRORS standard errors (measured by a
paired bootstrap of the rows). On thousands of rows real leads are many standard errors
and the winner stays first.

QDA counts as simple since, without it, LDA was often the model compared on three
classes, and on wine a winning QDA (out-of-fold log loss 0.025) led LDA (0.071) by less
than 3 standard errors - the lead sits on a handful of rows LDA gets confidently wrong -
so LDA was ranked first and lost on the test rows (0.018 against 0.003). Over 16 random
75/25 splits at 20 s, with each simple family's best out-of-fold predictions kept for
the comparison: mean test log loss of the pick, wine 0.0619 (by CV alone) -> 0.0573,
iris 0.0726 -> 0.0709; without QDA among them wine's median went from 0.0222 to 0.0288.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .tasks import fixed_target_scorer, greater_is_better

# Families that count as simple (module docstring).
SIMPLE_FAMILIES = frozenset({"ridge", "logistic_regression", "lda", "qda"})
# About a one-sided 5 % test corrected for the ~30 candidates the winner was chosen
# among (Bonferroni: z at 0.05 / 30 is 2.9).
LEAD_IN_STANDARD_ERRORS = 3.0
BOOTSTRAP_SAMPLES = 100
# Bootstrap samples of at most this many rows; the standard error is rescaled to all.
MAX_BOOTSTRAP_ROWS = 5_000


def lead_in_standard_errors(metric: str, y: np.ndarray, classes: Sequence[str],
                            winner: np.ndarray, simple: np.ndarray, seed: int = 0) -> float:
    """The winner's lead over the simple model in `metric` (positive: the winner is
    better) on the rows of `y`, divided by the lead's standard error over bootstrap
    samples of the rows. `winner` and `simple` are out-of-fold predictions
    (classification: probabilities in `classes` order; `classes` empty for regression).
    inf when the winner is better on every sample alike, nan when undefined."""
    sign = 1.0 if greater_is_better(metric) else -1.0
    y = np.asarray(y)

    def lead(rows: np.ndarray | None) -> float:
        if rows is None:
            score = fixed_target_scorer(metric, y, classes)
            return sign * (score(winner) - score(simple))
        score = fixed_target_scorer(metric, y[rows], classes)
        return sign * (score(winner[rows]) - score(simple[rows]))

    observed = lead(None)
    if not math.isfinite(observed):
        return math.nan
    rng = np.random.default_rng(seed)
    n_rows = len(y)
    sample_rows = min(n_rows, MAX_BOOTSTRAP_ROWS)
    leads = np.array([lead(rng.integers(0, n_rows, sample_rows))
                      for _ in range(BOOTSTRAP_SAMPLES)])
    leads = leads[np.isfinite(leads)]
    if len(leads) < 2:
        return math.nan
    error = float(np.std(leads, ddof=1)) * math.sqrt(sample_rows / n_rows)
    if error == 0.0:
        return math.inf if observed > 0 else 0.0
    return observed / error
