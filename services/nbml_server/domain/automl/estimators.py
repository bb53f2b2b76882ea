"""Custom scikit-learn estimators used in the fitted pipelines.

Every class here is named in `artifacts.ALLOWED_TYPES`; keep that list in step when
adding one (the artifact tests check it)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from .calibration import scale


class LabelEncodedClassifier(ClassifierMixin, BaseEstimator):
    """Fits `estimator` on class codes 0..k-1 instead of the labels themselves.

    For classifiers that accept only such codes (XGBoost's XGBClassifier), while the
    search hands every classifier string labels. `classes_` are the sorted labels;
    `predict_proba` columns follow them and `predict` returns labels.
    """

    def __init__(self, estimator=None):
        self.estimator = estimator

    def fit(self, X, y):
        self.classes_, codes = np.unique(np.asarray(y), return_inverse=True)
        self.estimator_ = clone(self.estimator).fit(X, codes)
        self.n_features_in_ = self.estimator_.n_features_in_
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "estimator_")
        if len(self.classes_) == 1:  # XGBoost would still give two columns
            return np.ones((len(X), 1))
        return self.estimator_.predict_proba(X)

    def predict(self, X):
        proba = self.predict_proba(X)  # first: raises NotFittedError before fit
        return self.classes_[np.argmax(proba, axis=1)]



class TemperatureScaled(ClassifierMixin, BaseEstimator):
    """`estimator`'s probabilities scaled by a temperature fitted during the search
    (`calibration.scale`); the temperature stays fixed when this is fit."""

    def __init__(self, estimator=None, temperature: float = 1.0):
        self.estimator = estimator
        self.temperature = temperature

    def fit(self, X, y):
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.classes_ = self.estimator_.classes_
        if hasattr(self.estimator_, "n_features_in_"):
            self.n_features_in_ = self.estimator_.n_features_in_
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "estimator_")
        return scale(self.estimator_.predict_proba(X), self.temperature)

    def predict(self, X):
        # The temperature keeps each row's most probable class.
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(X)
