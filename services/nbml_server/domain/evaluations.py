"""Holdout evaluation of a job's models, computed once and kept in the store."""

import threading

from nbml_server.domain import automl
from nbml_server.domain.datasets import read_canonical
from nbml_server.domain.model_registry import ModelRegistry, StoredEvaluation

# Bound on one model's permutation importance, so a leaderboard answers in seconds.
EVALUATION_SECONDS = 15.0


class Evaluations:
    def __init__(self, models: ModelRegistry):
        self.models = models
        # One evaluation at a time per process: they are CPU-bound on a small machine,
        # and two requests for the same model should not both compute it.
        self._lock = threading.Lock()

    def of(self, model: dict) -> StoredEvaluation:
        stored = self.models.evaluation(model["model_id"])
        if stored is not None:
            return stored
        with self._lock:
            stored = self.models.evaluation(model["model_id"])
            if stored is None:
                stored = self._compute(model)
                self.models.save_evaluation(model["model_id"], stored)
            return stored

    def _compute(self, model: dict) -> StoredEvaluation:
        holdout = read_canonical(self.models.blobs.get(model["holdout_key"]))
        if len(holdout) == 0:
            # The job kept no holdout (holdout_fraction 0): nothing to measure, and no
            # reason to load the model.
            return StoredEvaluation(metrics={}, confusion_labels=[], confusion_counts=[],
                                    feature_importances=[], holdout_rows=0)
        pipeline = automl.load_model(self.models.artifact(model))
        result = automl.evaluate(pipeline, holdout, model["target_column"], model["task"],
                                 model["metric"], deadline=automl.Deadline(EVALUATION_SECONDS))
        return StoredEvaluation(
            metrics={k: float(v) for k, v in result.metrics.items()},
            confusion_labels=[str(x) for x in result.confusion_labels],
            confusion_counts=[int(x) for x in result.confusion_counts],
            feature_importances=[(str(c), float(m), float(s))
                                 for c, m, s in result.feature_importances],
            holdout_rows=int(result.holdout_rows))
