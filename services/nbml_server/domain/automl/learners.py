"""The registry of model families ("learners").

Each learner declares, in one place: which tasks it handles, which preprocessing it
needs (`preprocessing.SCALED` or `preprocessing.TREE`), a rough relative cost, a
row limit, its default configurations (the portfolio tried first), its search space
and how to build the estimator from a parameter dict. Parameter values are plain
JSON-friendly values (str, int, float, bool, None).

LightGBM and XGBoost are registered only when their library imports (lightgbm is a
default dependency, xgboost an optional one); their build functions import them.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import TransformedTargetRegressor
from sklearn.discriminant_analysis import (LinearDiscriminantAnalysis,
                                           QuadraticDiscriminantAnalysis)
from sklearn.ensemble import (ExtraTreesClassifier, ExtraTreesRegressor,
                              HistGradientBoostingClassifier, HistGradientBoostingRegressor,
                              RandomForestClassifier, RandomForestRegressor)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR

from .estimators import LabelEncodedClassifier
from .preprocessing import SCALED, TREE
from .tasks import CLASSIFICATION, REGRESSION

# At most this many cores for one model (the workers run on small machines).
N_JOBS = 2
# k-NN and kernel SVMs scale badly with rows; they are skipped above this.
LARGE_DATA_ROWS = 20_000
# Below this many rows, LightGBM and XGBoost start from smaller trees.
SMALL_DATA_ROWS = 1_000


class ParamSampler(Protocol):
    """What a search space draws parameters from (an Optuna trial, prefixed)."""

    def float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...

    def categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class LearnerContext:
    task: str
    n_rows: int  # rows a model is fit on in cross-validation
    n_classes: int = 0
    min_class_count: int = 0  # rows in the rarest class, for classification
    seed: int = 0
    n_jobs: int = N_JOBS


def _unit_cost(params: Mapping[str, Any]) -> float:
    return 1.0


@dataclass(frozen=True)
class Learner:
    name: str
    tasks: frozenset[str]
    preprocessing: str
    relative_cost: float  # rough cost of the default configuration, logistic = 1
    defaults: Callable[[LearnerContext], list[dict]]
    space: Callable[[ParamSampler, LearnerContext], dict]
    build: Callable[[Mapping[str, Any], LearnerContext], Any]
    max_rows: int | None = None
    # Cost of a configuration relative to the default one (e.g. trees / 100).
    cost_factor: Callable[[Mapping[str, Any]], float] = field(default=_unit_cost)
    # False: searched on two-class data only when the job names this family.
    default_for_binary: bool = True

    def supports(self, task: str, n_rows: int) -> bool:
        return task in self.tasks and (self.max_rows is None or n_rows <= self.max_rows)


BOTH = frozenset({CLASSIFICATION, REGRESSION})


# --------------------------------------------------------------------------- linear

def _logistic_space(s: ParamSampler, ctx: LearnerContext) -> dict:
    return {"C": s.float("C", 1e-3, 1e3, log=True),
            "class_weight": s.categorical("class_weight", [None, "balanced"])}


def _logistic_build(p: Mapping[str, Any], ctx: LearnerContext):
    return LogisticRegression(C=p["C"], class_weight=p["class_weight"], max_iter=2000,
                              random_state=ctx.seed)


def _ridge_space(s: ParamSampler, ctx: LearnerContext) -> dict:
    return {"alpha": s.float("alpha", 1e-3, 1e3, log=True)}


def _ridge_build(p: Mapping[str, Any], ctx: LearnerContext):
    return Ridge(alpha=p["alpha"], random_state=ctx.seed)


# ------------------------------------------------------------ discriminant analysis
# Gaussian class models. With three classes or more they pay for themselves on small
# data whose classes are near-Gaussian: over 20 random 75/25 splits, adding them to
# logistic regression, SVM, extra trees and HGB and picking by 5-fold CV cut the test
# log loss of wine from 0.065 to 0.024 and of iris from 0.092 to 0.059. On two classes
# they did not (breast_cancer's ROC-AUC fell from 0.9950 to 0.9919, one-vs-rest wine and
# iris were even or worse): there the CV picks them by luck, so two-class jobs search
# them only when asked. Shrinkage keeps the covariance estimates sound when columns are
# collinear (one-hot columns always are).

def _lda_space(s: ParamSampler, ctx: LearnerContext) -> dict:
    return {"shrinkage": s.float("shrinkage", 0.0, 1.0)}


def _lda_build(p: Mapping[str, Any], ctx: LearnerContext):
    return LinearDiscriminantAnalysis(solver="lsqr", shrinkage=p["shrinkage"])


# QDA shrinks each class's covariance towards a multiple of the identity (the eigen
# solver): unlike reg_param with the SVD solver, this also fits a class with fewer rows
# than columns.
def _qda_space(s: ParamSampler, ctx: LearnerContext) -> dict:
    return {"shrinkage": s.float("shrinkage", 0.01, 1.0, log=True)}


def _qda_build(p: Mapping[str, Any], ctx: LearnerContext):
    return QuadraticDiscriminantAnalysis(solver="eigen", shrinkage=p["shrinkage"])


# ---------------------------------------------------------------------------- k-NN

def _knn_max_neighbors(ctx: LearnerContext) -> int:
    return max(1, min(50, ctx.n_rows - 1))


def _knn_defaults(ctx: LearnerContext) -> list[dict]:
    return [{"n_neighbors": min(15, _knn_max_neighbors(ctx)), "weights": "distance"}]


def _knn_space(s: ParamSampler, ctx: LearnerContext) -> dict:
    high = _knn_max_neighbors(ctx)
    return {"n_neighbors": s.int("n_neighbors", 1, high, log=True) if high > 1 else 1,
            "weights": s.categorical("weights", ["uniform", "distance"])}


def _knn_build(p: Mapping[str, Any], ctx: LearnerContext):
    cls = KNeighborsClassifier if ctx.task == CLASSIFICATION else KNeighborsRegressor
    return cls(n_neighbors=min(int(p["n_neighbors"]), max(1, ctx.n_rows - 1)),
               weights=p["weights"], n_jobs=1)


# ------------------------------------------------------------------ gradient boosting

def _hgb_defaults(ctx: LearnerContext) -> list[dict]:
    return [
        {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 31, "min_samples_leaf": 20,
         "l2_regularization": 1e-8, "max_features": 1.0},
        {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 15, "min_samples_leaf": 10,
         "l2_regularization": 1e-2, "max_features": 0.6},
    ]


def _hgb_space(s: ParamSampler, ctx: LearnerContext) -> dict:
    return {"learning_rate": s.float("learning_rate", 0.01, 0.3, log=True),
            "max_iter": s.int("max_iter", 50, 500, log=True),
            "max_leaf_nodes": s.int("max_leaf_nodes", 4, 128, log=True),
            "min_samples_leaf": s.int("min_samples_leaf", 2, 100, log=True),
            "l2_regularization": s.float("l2_regularization", 1e-8, 10.0, log=True),
            "max_features": s.float("max_features", 0.3, 1.0)}


def _hgb_build(p: Mapping[str, Any], ctx: LearnerContext):
    cls = (HistGradientBoostingClassifier if ctx.task == CLASSIFICATION
           else HistGradientBoostingRegressor)
    return cls(learning_rate=p["learning_rate"], max_iter=int(p["max_iter"]),
               max_leaf_nodes=int(p["max_leaf_nodes"]),
               min_samples_leaf=int(p["min_samples_leaf"]),
               l2_regularization=p["l2_regularization"], max_features=p["max_features"],
               early_stopping="auto", random_state=ctx.seed)


def _hgb_cost(p: Mapping[str, Any]) -> float:
    return max(0.2, p.get("max_iter", 100) / 100)


# -------------------------------------------------------------------------- forests

_MAX_FEATURES = ["sqrt", 0.3, 0.6, 1.0]


def _forest_defaults(ctx: LearnerContext) -> list[dict]:
    max_features = "sqrt" if ctx.task == CLASSIFICATION else 0.6
    return [{"n_estimators": 100, "max_features": max_features, "min_samples_leaf": 1}]


def _forest_space(s: ParamSampler, ctx: LearnerContext) -> dict:
    return {"n_estimators": s.int("n_estimators", 50, 500, log=True),
            "max_features": s.categorical("max_features", _MAX_FEATURES),
            "min_samples_leaf": s.int("min_samples_leaf", 1, 20, log=True)}


def _forest_builder(classifier, regressor):
    def build(p: Mapping[str, Any], ctx: LearnerContext):
        cls = classifier if ctx.task == CLASSIFICATION else regressor
        return cls(n_estimators=int(p["n_estimators"]), max_features=p["max_features"],
                   min_samples_leaf=int(p["min_samples_leaf"]), n_jobs=ctx.n_jobs,
                   random_state=ctx.seed)
    return build


def _forest_cost(p: Mapping[str, Any]) -> float:
    return max(0.2, p.get("n_estimators", 100) / 100)


# ------------------------------------------------------------------------------ SVM

_GAMMAS = ["scale", 0.001, 0.01, 0.1, 1.0]


def _svm_defaults(ctx: LearnerContext) -> list[dict]:
    if ctx.task == CLASSIFICATION:
        return [{"C": 1.0, "gamma": "scale"}]
    return [{"C": 1.0, "gamma": "scale", "epsilon": 0.1}]


def _svm_space(s: ParamSampler, ctx: LearnerContext) -> dict:
    params = {"C": s.float("C", 1e-2, 1e3, log=True), "gamma": s.categorical("gamma", _GAMMAS)}
    if ctx.task == REGRESSION:
        params["epsilon"] = s.float("epsilon", 1e-3, 1.0, log=True)
    return params


def _svm_build(p: Mapping[str, Any], ctx: LearnerContext):
    if ctx.task == CLASSIFICATION:
        # Probabilities by Platt scaling on inner cross-validation (SVC(probability=True)
        # is deprecated since scikit-learn 1.9).
        folds = max(2, min(3, ctx.min_class_count or 3))
        return CalibratedClassifierCV(
            SVC(C=p["C"], gamma=p["gamma"], kernel="rbf", cache_size=500, random_state=ctx.seed),
            method="sigmoid", cv=folds, ensemble=False)
    # The target is standardised so that C and epsilon mean the same on any scale.
    return TransformedTargetRegressor(
        regressor=SVR(C=p["C"], gamma=p["gamma"], epsilon=p["epsilon"], kernel="rbf",
                      cache_size=500),
        transformer=StandardScaler())


# ------------------------------------------------------------------------------ MLP

_HIDDEN = ["64", "128", "64,32", "128,64"]


def _mlp_defaults(ctx: LearnerContext) -> list[dict]:
    return [{"hidden_layer_sizes": "128", "alpha": 1e-4, "learning_rate_init": 1e-3}]


def _mlp_space(s: ParamSampler, ctx: LearnerContext) -> dict:
    return {"hidden_layer_sizes": s.categorical("hidden_layer_sizes", _HIDDEN),
            "alpha": s.float("alpha", 1e-6, 1e-1, log=True),
            "learning_rate_init": s.float("learning_rate_init", 1e-4, 1e-2, log=True)}


def _mlp_build(p: Mapping[str, Any], ctx: LearnerContext):
    kwargs = dict(hidden_layer_sizes=tuple(int(h) for h in str(p["hidden_layer_sizes"]).split(",")),
                  alpha=p["alpha"], learning_rate_init=p["learning_rate_init"], max_iter=300,
                  early_stopping=ctx.n_rows >= 1000, n_iter_no_change=10, random_state=ctx.seed)
    if ctx.task == CLASSIFICATION:
        return MLPClassifier(**kwargs)
    return TransformedTargetRegressor(regressor=MLPRegressor(**kwargs), transformer=StandardScaler())


def _mlp_cost(p: Mapping[str, Any]) -> float:
    sizes = [int(h) for h in str(p.get("hidden_layer_sizes", "128")).split(",")]
    return max(0.3, (sum(sizes) + math.prod(sizes[:2]) / 64) / 128)


# ------------------------------------------------- LightGBM and XGBoost (when installed)

# Defaults: a first configuration close to the usual Kaggle starting point and a second
# one with smaller trees and more regularisation. Below SMALL_DATA_ROWS both use smaller
# trees (on a few hundred rows 31 leaves or depth 6 do worse: measured on breast_cancer,
# diabetes and synthetic sets). 1e-3, the floor of the reg_alpha and reg_lambda ranges,
# means practically no penalty. relative_cost is for 100 trees (cost_factor 1), set from
# CPU time against hist_gradient_boosting's 100 iterations on 350-13,000 rows: LightGBM
# about 0.7 times, XGBoost about 1.0 times (each from 0.2 to 1.8).

def _lightgbm_defaults(ctx: LearnerContext) -> list[dict]:
    if ctx.n_rows < SMALL_DATA_ROWS:
        return [
            {"learning_rate": 0.05, "n_estimators": 200, "num_leaves": 8,
             "min_child_samples": 10, "subsample": 0.8, "colsample_bytree": 0.8,
             "reg_alpha": 1e-3, "reg_lambda": 1e-3, "max_bin": 255},
            {"learning_rate": 0.03, "n_estimators": 300, "num_leaves": 4,
             "min_child_samples": 5, "subsample": 0.7, "colsample_bytree": 0.5,
             "reg_alpha": 1e-3, "reg_lambda": 1.0, "max_bin": 255},
        ]
    # 63 histogram bins first: a third of the time of 255 on many columns (1,200 x 400:
    # 3.2 s against 9.1 s for 300 trees), the same ROC-AUC there.
    return [
        {"learning_rate": 0.05, "n_estimators": 300, "num_leaves": 31, "min_child_samples": 20,
         "subsample": 0.8, "colsample_bytree": 0.8, "reg_alpha": 1e-3, "reg_lambda": 1e-3,
         "max_bin": 63},
        {"learning_rate": 0.03, "n_estimators": 500, "num_leaves": 15, "min_child_samples": 20,
         "subsample": 0.8, "colsample_bytree": 0.5, "reg_alpha": 1e-3, "reg_lambda": 1.0,
         "max_bin": 255},
    ]


def _lightgbm_space(s: ParamSampler, ctx: LearnerContext) -> dict:
    return {"learning_rate": s.float("learning_rate", 0.01, 0.3, log=True),
            "n_estimators": s.int("n_estimators", 50, 1000, log=True),
            "num_leaves": s.int("num_leaves", 4, 128, log=True),
            "min_child_samples": s.int("min_child_samples", 2, 100, log=True),
            "subsample": s.float("subsample", 0.5, 1.0),
            "colsample_bytree": s.float("colsample_bytree", 0.3, 1.0),
            "reg_alpha": s.float("reg_alpha", 1e-3, 10.0, log=True),
            "reg_lambda": s.float("reg_lambda", 1e-3, 10.0, log=True),
            "max_bin": s.categorical("max_bin", [31, 63, 255])}


def _lightgbm_build(p: Mapping[str, Any], ctx: LearnerContext):
    import lightgbm

    cls = lightgbm.LGBMClassifier if ctx.task == CLASSIFICATION else lightgbm.LGBMRegressor
    subsample = float(p["subsample"])
    return cls(learning_rate=p["learning_rate"], n_estimators=int(p["n_estimators"]),
               num_leaves=int(p["num_leaves"]), min_child_samples=int(p["min_child_samples"]),
               subsample=subsample, subsample_freq=1 if subsample < 1.0 else 0,
               colsample_bytree=p["colsample_bytree"], reg_alpha=p["reg_alpha"],
               reg_lambda=p["reg_lambda"], max_bin=int(p["max_bin"]),
               n_jobs=ctx.n_jobs, random_state=ctx.seed, verbose=-1)


def _column_cost(p: Mapping[str, Any]) -> float:
    # Histograms are built for the sampled columns only; the rest of a tree's cost is not.
    return 0.3 + 0.7 * p.get("colsample_bytree", 1.0)


def _lightgbm_cost(p: Mapping[str, Any]) -> float:
    # Measured: linear in trees, about leaves ** 0.75 (100 trees of 31 leaves = 1).
    # Bins: 63 take about 0.35 times the time of 255 (split finding scans every bin).
    bins = (p.get("max_bin", 255) / 255) ** 0.75
    return max(0.05, p.get("n_estimators", 100) / 100 * (p.get("num_leaves", 31) / 31) ** 0.75
               * _column_cost(p) * bins)


def _xgboost_defaults(ctx: LearnerContext) -> list[dict]:
    if ctx.n_rows < SMALL_DATA_ROWS:
        return [
            {"learning_rate": 0.05, "n_estimators": 200, "max_depth": 3, "min_child_weight": 1.0,
             "subsample": 0.8, "colsample_bytree": 0.8, "reg_alpha": 1e-3, "reg_lambda": 1.0},
            {"learning_rate": 0.03, "n_estimators": 300, "max_depth": 2, "min_child_weight": 2.0,
             "subsample": 0.7, "colsample_bytree": 0.5, "reg_alpha": 1e-3, "reg_lambda": 3.0},
        ]
    return [
        {"learning_rate": 0.05, "n_estimators": 300, "max_depth": 6, "min_child_weight": 1.0,
         "subsample": 0.8, "colsample_bytree": 0.8, "reg_alpha": 1e-3, "reg_lambda": 1.0},
        {"learning_rate": 0.05, "n_estimators": 400, "max_depth": 4, "min_child_weight": 3.0,
         "subsample": 0.7, "colsample_bytree": 0.5, "reg_alpha": 1e-3, "reg_lambda": 3.0},
    ]


def _xgboost_space(s: ParamSampler, ctx: LearnerContext) -> dict:
    return {"learning_rate": s.float("learning_rate", 0.01, 0.3, log=True),
            "n_estimators": s.int("n_estimators", 50, 1000, log=True),
            "max_depth": s.int("max_depth", 2, 10),
            "min_child_weight": s.float("min_child_weight", 0.1, 50.0, log=True),
            "subsample": s.float("subsample", 0.5, 1.0),
            "colsample_bytree": s.float("colsample_bytree", 0.3, 1.0),
            "reg_alpha": s.float("reg_alpha", 1e-3, 10.0, log=True),
            "reg_lambda": s.float("reg_lambda", 1e-3, 10.0, log=True)}


def _xgboost_build(p: Mapping[str, Any], ctx: LearnerContext):
    import xgboost

    kwargs = dict(learning_rate=p["learning_rate"], n_estimators=int(p["n_estimators"]),
                  max_depth=int(p["max_depth"]), min_child_weight=p["min_child_weight"],
                  subsample=p["subsample"], colsample_bytree=p["colsample_bytree"],
                  reg_alpha=p["reg_alpha"], reg_lambda=p["reg_lambda"], tree_method="hist",
                  n_jobs=ctx.n_jobs, random_state=ctx.seed, verbosity=0)
    if ctx.task == CLASSIFICATION:
        # XGBClassifier takes only class codes 0..k-1; the search hands it strings.
        return LabelEncodedClassifier(xgboost.XGBClassifier(**kwargs))
    return xgboost.XGBRegressor(**kwargs)


def _xgboost_cost(p: Mapping[str, Any]) -> float:
    # Measured: linear in trees, about 1.5 times per extra level (100 trees of depth 6 = 1).
    return max(0.05, p.get("n_estimators", 100) / 100 * 2 ** (0.6 * (p.get("max_depth", 6) - 6))
               * _column_cost(p))


# ------------------------------------------------------------------------- registry

def _registry(*learners: Learner) -> dict[str, Learner]:
    return {learner.name: learner for learner in learners}


def _if_importable(module: str, *learners: Learner) -> tuple[Learner, ...]:
    """`learners` when `module` imports, else none: an optional library that is not
    installed (or whose native library does not load) means no such family."""
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - also OSError (libgomp missing), XGBoostError
        return ()
    return learners


# Cheapest first: the portfolio runs in this order.
LEARNERS: dict[str, Learner] = _registry(
    # Weak regularization (C=10) second: on small, clean sets (iris, wine) it has the
    # best cross-validated log loss of the three; strong (C=0.1) for noisy, wide data.
    Learner("logistic_regression", frozenset({CLASSIFICATION}), SCALED, 1.0,
            defaults=lambda ctx: [{"C": 1.0, "class_weight": None},
                                  {"C": 10.0, "class_weight": None},
                                  {"C": 0.1, "class_weight": None}],
            space=_logistic_space, build=_logistic_build),
    Learner("ridge", frozenset({REGRESSION}), SCALED, 1.0,
            defaults=lambda ctx: [{"alpha": 1.0}, {"alpha": 10.0}],
            space=_ridge_space, build=_ridge_build),
    Learner("lda", frozenset({CLASSIFICATION}), SCALED, 1.0,
            defaults=lambda ctx: [{"shrinkage": 0.0}, {"shrinkage": 0.1}],
            space=_lda_space, build=_lda_build, default_for_binary=False),
    Learner("qda", frozenset({CLASSIFICATION}), SCALED, 1.0,
            defaults=lambda ctx: [{"shrinkage": 0.05}, {"shrinkage": 0.3}],
            space=_qda_space, build=_qda_build, default_for_binary=False),
    Learner("knn", BOTH, SCALED, 1.5, defaults=_knn_defaults, space=_knn_space,
            build=_knn_build, max_rows=LARGE_DATA_ROWS),
    *_if_importable("lightgbm", Learner(
        "lightgbm", BOTH, TREE, 3.0, defaults=_lightgbm_defaults, space=_lightgbm_space,
        build=_lightgbm_build, cost_factor=_lightgbm_cost)),
    Learner("hist_gradient_boosting", BOTH, TREE, 4.0, defaults=_hgb_defaults,
            space=_hgb_space, build=_hgb_build, cost_factor=_hgb_cost),
    *_if_importable("xgboost", Learner(
        "xgboost", BOTH, TREE, 4.0, defaults=_xgboost_defaults, space=_xgboost_space,
        build=_xgboost_build, cost_factor=_xgboost_cost)),
    Learner("extra_trees", BOTH, TREE, 4.0, defaults=_forest_defaults, space=_forest_space,
            build=_forest_builder(ExtraTreesClassifier, ExtraTreesRegressor),
            cost_factor=_forest_cost),
    Learner("random_forest", BOTH, TREE, 6.0, defaults=_forest_defaults, space=_forest_space,
            build=_forest_builder(RandomForestClassifier, RandomForestRegressor),
            cost_factor=_forest_cost),
    Learner("svm", BOTH, SCALED, 6.0, defaults=_svm_defaults, space=_svm_space,
            build=_svm_build, max_rows=LARGE_DATA_ROWS),
    Learner("mlp", BOTH, SCALED, 8.0, defaults=_mlp_defaults, space=_mlp_space,
            build=_mlp_build, cost_factor=_mlp_cost),
)
