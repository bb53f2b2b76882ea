"""AutoML: a simple model ranks first when the winner's lead over it is within the noise
of the out-of-fold rows (`simplicity`), and only then."""

import math

import numpy as np
import pandas as pd
import pytest

from nbml_server.domain.automl import SearchRequest, run_search, trials
from nbml_server.domain.automl import search as search_module
from nbml_server.domain.automl.simplicity import LEAD_IN_STANDARD_ERRORS, lead_in_standard_errors
from tests.unit.instant_executor import InstantExecutor


def test_a_lead_of_a_few_rows_is_noise_and_a_lead_on_every_row_is_not():
    rng = np.random.default_rng(0)
    y = rng.normal(size=2_000)
    winner = y + rng.normal(scale=0.5, size=len(y))
    independent = y + rng.normal(scale=0.5, size=len(y))  # as good, other errors
    worse_everywhere = y + 1.5 * (winner - y)
    assert abs(lead_in_standard_errors("rmse", y, (), winner, independent)) < 3
    assert lead_in_standard_errors("rmse", y, (), winner, worse_everywhere) > 10
    # The sign says who is better, whatever the metric's direction.
    assert lead_in_standard_errors("r2", y, (), winner, worse_everywhere) > 10
    assert lead_in_standard_errors("rmse", y, (), worse_everywhere, winner) < -10


def test_classification_leads_use_the_metric_itself():
    rng = np.random.default_rng(1)
    classes = ["no", "yes"]
    truth = rng.integers(0, 2, size=1_000)
    y = np.asarray(classes, dtype=object)[truth]

    def probabilities(noise):
        positive = 1 / (1 + np.exp(-(4 * truth - 2 + rng.normal(scale=noise, size=len(y)))))
        return np.column_stack([1 - positive, positive])

    sharp, blurred = probabilities(1.0), probabilities(3.0)
    for metric in ("roc_auc", "log_loss", "accuracy", "f1"):
        assert lead_in_standard_errors(metric, y, classes, sharp, blurred) > 3, metric
    # A metric undefined on the rows (one class only) decides nothing.
    only_yes = np.full(len(y), "yes", dtype=object)
    assert math.isnan(lead_in_standard_errors("roc_auc", only_yes, classes, sharp, blurred))


def regression_frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    data["y"] = data["a"] * 3 + rng.normal(size=n)
    return data


class OutOfFoldExecutor(InstantExecutor):
    """Answers at once: knn scores 1.00 (RMSE) on every fold and ridge `ridge_score`;
    their out-of-fold predictions are the target plus the same errors, except that
    ridge's are larger on the rows `ridge_worse_on` (so blending them helps nothing)."""

    def __init__(self, data, ridge_score, ridge_worse_on):
        super().__init__(data)
        self.ridge_score, self.worse_on = ridge_score, ridge_worse_on
        self.errors = np.random.default_rng(7).normal(size=len(data.y))

    def outcome(self, spec):
        y = np.asarray(self.data.y, dtype=np.float64)
        errors = self.errors.copy()
        if spec.family == "ridge":
            errors[self.worse_on] *= 1.5
        score = self.ridge_score if spec.family == "ridge" else 1.0
        return trials.TrialOutcome(spec.key, spec.rung, spec.family, dict(spec.params),
                                   [score] * 5, 0.01,
                                   oof=y + errors if spec.keep_oof else None)


def search(ridge_score, ridge_worse_on, max_trials=2):
    request = SearchRequest(regression_frame(), "y", budget_seconds=60, max_trials=max_trials,
                            families=["ridge", "knn"], holdout_fraction=0.0)
    return run_search(request, executor=lambda data, stop: OutOfFoldExecutor(
        data, ridge_score, ridge_worse_on))


def test_ridge_ranks_first_when_knn_leads_on_a_few_rows_only():
    result = search(ridge_score=1.01, ridge_worse_on=slice(0, 3))
    assert [m.family for m in result.models] == ["ridge", "knn"]
    assert result.best.cv_score == pytest.approx(1.01)  # its own score, not the winner's
    note = result.models[0].ranking_note
    assert "knn" in note and "standard errors" in note
    assert f"less than {LEAD_IN_STANDARD_ERRORS:g}" in note
    assert not result.models[1].ranking_note


def test_the_winner_stays_first_when_its_lead_is_on_every_row():
    result = search(ridge_score=1.5, ridge_worse_on=slice(None))
    assert [m.family for m in result.models] == ["knn", "ridge"]
    assert not any(m.ranking_note for m in result.models)


def test_ridge_is_compared_even_when_knn_trials_crowd_it_out_of_the_ensemble_pool(monkeypatch):
    monkeypatch.setattr(search_module, "ENSEMBLE_CANDIDATES", 2)
    result = search(ridge_score=1.01, ridge_worse_on=slice(0, 3), max_trials=6)
    assert sum(t.family == "knn" for t in result.trials) >= 2  # the pool holds knn only
    assert [m.family for m in result.models] == ["ridge", "knn"]
    assert "knn" in result.models[0].ranking_note
