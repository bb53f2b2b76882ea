"""Model artifacts: skops (never pickle). Loading trusts only ALLOWED_TYPES.

skops loads the types it considers safe by default (plain containers, numpy arrays,
most scikit-learn estimators) and reports the others as untrusted. We accept an
artifact only if every type it reports is named in ALLOWED_TYPES, a list written
here by hand from what our pipelines contain (the learners in `learners.py`, the
transformers in `transformers.py`, the estimators in `estimators.py`) and from
`ensemble.WeightedEnsemble`, the one stored model that is not a Pipeline (it holds
member Pipelines); anything else is refused with FailedPrecondition(UNTRUSTED_ARTIFACT).
"""

from __future__ import annotations

import copy
import io
import zipfile
from collections.abc import Callable

import skops.io as sio
from sklearn.ensemble._forest import BaseForest
from sklearn.pipeline import Pipeline

from nbml_server.errors import FailedPrecondition

from .ensemble import WeightedEnsemble
from .estimators import TemperatureScaled
from .packed_trees import PackedTrees, packable

_OWN = "nbml_server.domain.automl.transformers."

ALLOWED_TYPES: frozenset[str] = frozenset({
    # Our transformers.
    _OWN + "SchemaCoercer",
    _OWN + "DatePartsTransformer",
    _OWN + "TextStatsTransformer",
    "nbml_server.domain.automl.estimators.LabelEncodedClassifier",  # xgboost (classification)
    "nbml_server.domain.automl.estimators.TemperatureScaled",  # log loss
    "nbml_server.domain.automl.ensemble.WeightedEnsemble",
    "nbml_server.domain.automl.packed_trees.PackedTrees",  # a forest's trees
    # numpy.
    "numpy.dtype",
    # Fitted state of scikit-learn models that skops does not trust by default.
    "sklearn.tree._tree.Tree",  # random_forest, extra_trees
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.calibration._CalibratedClassifier",  # svm (classification)
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.neighbors._kd_tree.KDTree",  # knn
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.EuclideanDistance32",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",  # mlp
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    # The tree preprocessing's TargetEncoder keeps the splitter it cross-fits with.
    "sklearn.model_selection._split.KFold",
    "sklearn.model_selection._split.StratifiedKFold",
    # LightGBM and XGBoost (optional families): the scikit-learn wrappers and their
    # Boosters, which load from the library's own model format (text for LightGBM, UBJSON
    # for XGBoost), not from pickle. OrderedDict: the factory of LightGBM's best_score.
    "lightgbm.sklearn.LGBMClassifier",
    "lightgbm.sklearn.LGBMRegressor",
    "lightgbm.basic.Booster",
    "collections.OrderedDict",
    "xgboost.sklearn.XGBClassifier",
    "xgboost.sklearn.XGBRegressor",
    "xgboost.core.Booster",
})


def save_model(pipeline) -> bytes:
    """The fitted pipeline (or WeightedEnsemble) as skops bytes, each forest's trees
    packed (`packed_trees`: loads many times faster)."""
    return sio.dumps(_with_forests(pipeline, _packed))


def _with_forests(model, change: Callable[[BaseForest], BaseForest]):
    """`model` with `change(forest)` for each fitted forest in it; what holds a changed
    forest is copied, `model` itself is left as it is."""
    if isinstance(model, BaseForest) and hasattr(model, "estimators_"):
        return change(model)
    if isinstance(model, Pipeline):
        changed = copy.copy(model)
        changed.steps = [(name, _with_forests(step, change)) for name, step in model.steps]
        return changed
    if isinstance(model, TemperatureScaled) and hasattr(model, "estimator_"):
        changed = copy.copy(model)
        changed.estimator_ = _with_forests(model.estimator_, change)
        return changed
    if isinstance(model, WeightedEnsemble):
        changed = copy.copy(model)
        changed.members = [_with_forests(member, change) for member in model.members]
        return changed
    return model


def _packed(forest: BaseForest) -> BaseForest:
    if not packable(forest.estimators_):
        return forest
    packed = copy.copy(forest)
    packed.estimators_ = PackedTrees(forest.estimators_)
    return packed


def _unpacked(forest: BaseForest) -> BaseForest:
    if isinstance(forest.estimators_, PackedTrees):
        forest.estimators_ = list(forest.estimators_)
    return forest


def untrusted_types(data: bytes) -> list[str]:
    """Types in the artifact that skops does not trust by default."""
    if not zipfile.is_zipfile(io.BytesIO(data)):  # a skops file is a zip archive
        raise FailedPrecondition(
            "the model artifact is not a skops file: only skops artifacts are loaded, "
            "never pickle or joblib files", reason="INVALID_ARTIFACT")
    try:
        return list(sio.get_untrusted_types(data=data))
    except Exception as exc:  # noqa: BLE001 - not a skops file at all
        raise FailedPrecondition(f"the model artifact cannot be read: {exc}",
                                 reason="INVALID_ARTIFACT") from exc


def load_model(data: bytes) -> Pipeline | WeightedEnsemble:
    """The pipeline (or ensemble of pipelines) in `data`. Raises FailedPrecondition:
    UNTRUSTED_ARTIFACT when the artifact holds a type outside ALLOWED_TYPES,
    INVALID_ARTIFACT when it cannot be read or is neither a Pipeline nor a
    WeightedEnsemble of Pipelines."""
    found = untrusted_types(data)
    refused = sorted(t for t in found if t not in ALLOWED_TYPES)
    if refused:
        raise FailedPrecondition(
            f"the model artifact contains a type that is not allowed: {', '.join(refused)}",
            reason="UNTRUSTED_ARTIFACT")
    try:
        model = _with_forests(sio.loads(data, trusted=found), _unpacked)
    except Exception as exc:  # noqa: BLE001
        raise FailedPrecondition(f"the model artifact cannot be read: {exc}",
                                 reason="INVALID_ARTIFACT") from exc
    if isinstance(model, WeightedEnsemble) and all(
            isinstance(m, Pipeline) for m in model.members) and len(model.members):
        return model
    if not isinstance(model, Pipeline):
        raise FailedPrecondition(f"the model artifact holds a {type(model).__name__}, "
                                 "not a Pipeline", reason="INVALID_ARTIFACT")
    return model
