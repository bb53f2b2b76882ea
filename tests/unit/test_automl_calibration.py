"""AutoML: temperature scaling of probabilities for log loss - the fit, the estimator
that carries it, and a log-loss search whose trials and models use it."""

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax
from sklearn.metrics import log_loss

from nbml_server.domain.automl import (LEARNERS, LearnerContext, SearchRequest, build_pipeline,
                                       load_model, prepare_trials, run_search, save_model)
from nbml_server.domain.automl.calibration import MIN_GAIN_NATS, fit_temperature, scale
from nbml_server.domain.automl.estimators import TemperatureScaled
from nbml_server.domain.automl.trials import TrialSpec


def labelled(n=4_000, classes=4, seed=0):
    """Logits, and labels drawn from their softmax: those probabilities are calibrated."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, classes))
    proba = softmax(logits, axis=1)
    codes = np.array([rng.choice(classes, p=row) for row in proba])
    return logits, codes


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.0])
def test_the_fit_finds_the_temperature_that_distorted_calibrated_probabilities(true_temperature):
    logits, codes = labelled()
    distorted = softmax(logits / true_temperature, axis=1)  # T < 1 timid, T > 1 overconfident
    found = fit_temperature(distorted, codes)
    # Scaling by `found` undoes the distortion: found ~ 1 / true_temperature.
    assert found == pytest.approx(1 / true_temperature, rel=0.1)
    assert log_loss(codes, scale(distorted, found)) <= log_loss(codes, distorted) + 1e-12


def test_a_model_that_ranks_every_row_right_is_not_made_certain():
    # Timid but always right (a heavily shrunk QDA on wine): without smoothing the fit
    # runs to the boldest temperature allowed, where one later miss costs up to 34 nats.
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=133)
    proba = np.full((133, 3), 0.25)
    proba[np.arange(133), codes] = 0.5 + rng.uniform(0, 0.1, size=133)
    proba /= proba.sum(axis=1, keepdims=True)
    found = fit_temperature(proba, codes)
    assert found < 1.0  # bolder: every row was right
    miss = scale(np.array([[0.55, 0.3, 0.15]]), found)  # ranked wrong: the truth is class 1
    assert log_loss([1], miss, labels=[0, 1, 2]) < 8  # 12.1 at the boldest temperature


def test_scaling_keeps_each_row_s_most_probable_class_and_sums_to_one():
    logits, _ = labelled(n=200)
    proba = softmax(logits, axis=1)
    for temperature in (0.1, 0.7, 3.0):
        scaled = scale(proba, temperature)
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
        np.testing.assert_array_equal(scaled.argmax(axis=1), proba.argmax(axis=1))
    np.testing.assert_array_equal(scale(proba, 1.0), proba)


def test_probabilities_with_zeros_scale_and_broken_ones_are_left_alone():
    proba = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.8, 0.0]])
    assert np.all(np.isfinite(scale(proba, 0.3))) and np.all(np.isfinite(scale(proba, 4.0)))
    assert fit_temperature(np.full((3, 3), np.nan), np.array([0, 1, 2])) == 1.0


def frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    score = X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.7, size=n)
    data = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    data["label"] = np.select([score < -0.6, score < 0.6], ["low", "mid"], "high")
    return data


def test_the_estimator_scales_its_model_s_probabilities_and_survives_the_artifact():
    data = frame()
    X, y = data.drop(columns="label"), data["label"].to_numpy()
    types = dict.fromkeys(X.columns, "numeric")
    ctx = LearnerContext(task="classification", n_rows=len(X), n_classes=3, min_class_count=50)
    forest = LEARNERS["random_forest"]
    params = forest.defaults(ctx)[0]
    plain = build_pipeline(forest, params, ctx, types, types).fit(X, y)
    scaled = build_pipeline(forest, params, ctx, types, types, temperature=0.4).fit(X, y)
    assert isinstance(scaled.named_steps["model"], TemperatureScaled)
    np.testing.assert_allclose(scaled.predict_proba(X), scale(plain.predict_proba(X), 0.4))
    np.testing.assert_array_equal(scaled.predict(X), plain.predict(X))
    restored = load_model(save_model(scaled))  # TemperatureScaled is on the allowlist
    np.testing.assert_allclose(restored.predict_proba(X), scaled.predict_proba(X))


def test_a_log_loss_trial_is_scored_on_its_scaled_out_of_fold_probabilities():
    data = prepare_trials(SearchRequest(frame(), "label", metric="log_loss"))
    spec = TrialSpec(key=0, family="extra_trees", rung=0, max_seconds=60, keep_oof=True,
                     params={"n_estimators": 50, "max_features": "sqrt", "min_samples_leaf": 1})
    outcome = data.evaluate(spec)
    assert outcome.error is None and outcome.temperature != 1.0
    expected = [score(outcome.oof[valid])
                for score, (_, valid) in zip(data.fold_scorers, data.folds)]
    np.testing.assert_allclose(outcome.scores, expected)
    unscaled = scale(outcome.oof, 1 / outcome.temperature)
    assert data.scorer(outcome.oof) < data.scorer(unscaled)

    accuracy = prepare_trials(SearchRequest(frame(), "label", metric="accuracy"))
    assert accuracy.evaluate(spec).temperature == 1.0  # only log loss is scaled


def test_a_log_loss_search_deploys_models_with_their_trial_s_temperature():
    result = run_search(SearchRequest(frame(), "label", metric="log_loss", max_trials=6,
                                      families=["extra_trees", "logistic_regression"]))
    trials = {t.number: t for t in result.trials}
    assert any(t.temperature != 1.0 for t in result.trials if t.cv_score is not None)
    for model in result.models:
        if model.family == "ensemble":
            assert model.pipeline.temperature == model.params.get("temperature", 1.0)
            continue
        temperature = trials[model.trial_number].temperature
        step = model.pipeline.named_steps["model"]
        if temperature == 1.0:
            assert not isinstance(step, TemperatureScaled) and "temperature" not in model.params
        else:
            assert step.temperature == temperature
            assert model.params["temperature"] == pytest.approx(temperature, abs=1e-6)


def test_a_temperature_is_kept_only_when_it_gains_more_than_chance_on_these_rows():
    # Overconfident probabilities: on 4,000 rows scaling gains hundreds of nats and is
    # kept; on 40 rows (the same distortion) it gains under a nat, less than one parameter
    # fitted to the rows it is scored on gains by chance, and is not.
    logits, codes = labelled(classes=3)
    overconfident = softmax(logits / 0.8, axis=1)
    assert fit_temperature(overconfident, codes) == pytest.approx(1 / 0.8, rel=0.1)
    few_proba, few_codes = overconfident[:40], codes[:40]
    assert fit_temperature(few_proba, few_codes) == 1.0
    best_scaled = min(log_loss(few_codes, scale(few_proba, t), labels=[0, 1, 2])
                      for t in np.linspace(0.5, 2.0, 151))
    gain = 40 * (log_loss(few_codes, few_proba, labels=[0, 1, 2]) - best_scaled)
    assert 0 < gain < MIN_GAIN_NATS  # it would have helped a little, on these rows
