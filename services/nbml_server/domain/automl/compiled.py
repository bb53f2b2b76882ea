"""Compiled inference: a fitted pipeline's preprocessing as plain numpy lookups.

scikit-learn's ColumnTransformer costs about 12 ms a call whatever the rows (frame
indexing, input validation, output wrapping for each branch), while the model behind
it predicts one row in a fraction of a millisecond: for a deployed model answering
single rows, that overhead is the serving cost. `compile_model` turns the fitted
preprocessing steps the search builds (imputers, scalers, one-hot, ordinal and target
encoders) into functions of numpy arrays taken from their fitted attributes, and feeds
the model step a matrix. It returns None for anything it does not know, and checks
itself at compile time: on probe rows made of the fitted categories, unseen values and
missing values it must give the pipeline's own predictions (within CHECK_TOLERANCE),
or it is not used.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.special import expit, softmax
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (ExtraTreesClassifier, ExtraTreesRegressor, RandomForestClassifier,
                              RandomForestRegressor)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder

from .calibration import scale
from .columns import bool_or_nan, coerce_datetime, number_or_nan, to_label
from .ensemble import WeightedEnsemble
from .estimators import TemperatureScaled
from .tasks import CLASSIFICATION
from .transformers import SchemaCoercer

CHECK_TOLERANCE = 1e-9
UNSEEN = "\x00unseen"  # a category no encoder was fit on
MISSING = object()  # the lookup key of missing values

Step = Callable[[np.ndarray], np.ndarray]


class Unsupported(Exception):
    """A step compile does not know: the pipeline is served as it is."""


# ------------------------------------------------------------------ steps

def _missing(values: np.ndarray) -> np.ndarray:
    return pd.isna(values) if values.dtype == object else np.isnan(values)


def _imputer(step: SimpleImputer) -> Step:
    fill = np.asarray(step.statistics_)
    if step.keep_empty_features or pd.isna(fill).any() or not (
            isinstance(step.missing_values, float) and np.isnan(step.missing_values)):
        raise Unsupported("imputer with empty features or a non-NaN missing marker")
    numeric = fill.dtype != object
    indicator = (np.asarray(step.indicator_.features_) if step.add_indicator
                 and step.indicator_ is not None else None)

    def impute(X: np.ndarray) -> np.ndarray:
        X = X.astype(np.float64 if numeric else object)
        missing = _missing(X)
        out = np.where(missing, fill, X)
        if indicator is not None and len(indicator):
            out = np.hstack([out, missing[:, indicator].astype(out.dtype)])
        return out
    return impute


def _scaler(step: StandardScaler) -> Step:
    mean = step.mean_ if step.with_mean else 0.0
    std = step.scale_ if step.with_std else 1.0
    return lambda X: (X.astype(np.float64) - mean) / std


def _lookups(categories: list[np.ndarray]) -> list[dict]:
    """Per feature: category -> its index; missing values under the key MISSING when
    the encoder saw them (they are then a category of their own)."""
    return [{(MISSING if pd.isna(value) else value): i for i, value in enumerate(cats)}
            for cats in categories]


def _key(value):
    return MISSING if value is None or value != value else value  # NaN != NaN


def _one_hot(step: OneHotEncoder) -> Step:
    if step.drop_idx_ is not None or step.handle_unknown not in ("ignore", "infrequent_if_exist"):
        raise Unsupported("one-hot encoding with dropped or erroring categories")
    infrequent = (step.infrequent_categories_ if step._infrequent_enabled
                  else [None] * len(step.categories_))
    columns: list[dict] = []  # per feature: value -> output column
    unknown: list[int] = []  # per feature: column of unseen values, -1 for none
    width = 0
    for cats, rare in zip(step.categories_, infrequent):
        if any(pd.isna(c) for c in cats):
            raise Unsupported("one-hot encoding that saw missing values")
        rare = set(rare) if rare is not None else set()
        frequent = [c for c in cats if c not in rare]
        mapping = {c: width + j for j, c in enumerate(frequent)}
        width += len(frequent)
        if rare:
            mapping.update(dict.fromkeys(rare, width))
            unknown.append(width if step.handle_unknown == "infrequent_if_exist" else -1)
            width += 1
        else:
            unknown.append(-1)
        columns.append(mapping)

    def encode(X: np.ndarray) -> np.ndarray:
        out = np.zeros((len(X), width))
        for i, (mapping, fallback) in enumerate(zip(columns, unknown)):
            hit = np.fromiter((mapping.get(v, fallback) for v in X[:, i]), np.int64, len(X))
            rows = np.nonzero(hit >= 0)[0]
            out[rows, hit[rows]] = 1.0
        return out
    return encode


def _ordinal(step: OrdinalEncoder) -> Step:
    if step.handle_unknown != "use_encoded_value":
        raise Unsupported("ordinal encoding that errors on unseen values")
    lookups = _lookups(step.categories_)
    unknown, missing_code = float(step.unknown_value), float(step.encoded_missing_value)

    def encode(X: np.ndarray) -> np.ndarray:
        out = np.empty(X.shape)
        for i, mapping in enumerate(lookups):
            # Missing values: encoded_missing_value when seen in training, else unseen.
            missing = missing_code if MISSING in mapping else unknown
            out[:, i] = [missing if _key(v) is MISSING else mapping.get(v, unknown)
                         for v in X[:, i]]
        return out
    return encode


def _target(step: TargetEncoder) -> Step:
    lookups = _lookups(step.categories_)
    encodings = [np.asarray(e, dtype=np.float64) for e in step.encodings_]
    n_features = len(step.categories_)
    per_feature = len(encodings) // n_features  # classes (multiclass) or 1
    default = np.atleast_1d(np.asarray(step.target_mean_, dtype=np.float64))

    def encode(X: np.ndarray) -> np.ndarray:
        out = np.empty((len(X), n_features * per_feature))
        for i, mapping in enumerate(lookups):
            index = np.fromiter((mapping.get(_key(v), -1) for v in X[:, i]), np.int64, len(X))
            for k in range(per_feature):
                table = encodings[i * per_feature + k]
                out[:, i * per_feature + k] = np.where(
                    index >= 0, table[np.maximum(index, 0)], default[k % len(default)])
        return out
    return encode


STEPS: dict[type, Callable[[object], Step]] = {
    SimpleImputer: _imputer, StandardScaler: _scaler, OneHotEncoder: _one_hot,
    OrdinalEncoder: _ordinal, TargetEncoder: _target}


def _step(transformer) -> Step:
    if isinstance(transformer, Pipeline):
        steps = [_step(t) for _, t in transformer.steps]

        def chained(X: np.ndarray) -> np.ndarray:
            for step in steps:
                X = step(X)
            return X
        return chained
    compile_one = STEPS.get(type(transformer))
    if compile_one is not None:
        return compile_one(transformer)
    # Our own date and text transformers take the frame columns as they are.
    if type(transformer).__module__.startswith("nbml_server.domain.automl.transformers"):
        return lambda X: np.asarray(transformer.transform(pd.DataFrame(X)), dtype=np.float64)
    raise Unsupported(f"no compiled form of {type(transformer).__name__}")


def _column_transformer(ct: ColumnTransformer, columns: list[str]) -> Step:
    if getattr(ct, "sparse_output_", False):
        raise Unsupported("a column transformer with sparse output")
    position = {c: i for i, c in enumerate(columns)}
    branches = []
    for _, transformer, selected in ct.transformers_:  # the remainder included
        if isinstance(transformer, str):
            if transformer == "drop":
                continue
            raise Unsupported(f"{transformer} columns")
        branches.append(([position[c] for c in selected], _step(transformer)))

    def transform(X: np.ndarray) -> np.ndarray:
        return np.hstack([step(X[:, index]) for index, step in branches])
    return transform


# ------------------------------------------------------------------ models

# Rows up to which a compiled forest walks its trees itself (300 trees: 0.9 ms for one
# row against 56 ms in scikit-learn; 365 ms against 90 ms for 1,000 rows).
FOREST_WALK_MAX_ROWS = 64
FORESTS = (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier,
           ExtraTreesRegressor)


class CompiledForest:
    """A fitted forest's trees as flat arrays, walked for all trees at once: one numpy
    step per tree level instead of one scikit-learn call per tree (300 trees: about
    15 ms a call on one row, whatever the rows)."""

    def __init__(self, forest):
        trees = [e.tree_ for e in forest.estimators_]
        offsets = np.cumsum([0] + [t.node_count for t in trees])[:-1]
        self.roots = offsets
        self.feature = np.concatenate([np.maximum(t.feature, 0) for t in trees])
        self.threshold = np.concatenate([t.threshold for t in trees])
        leaf = np.concatenate([t.children_left < 0 for t in trees])
        left = np.concatenate([t.children_left + o for t, o in zip(trees, offsets)])
        right = np.concatenate([t.children_right + o for t, o in zip(trees, offsets)])
        nodes = np.arange(len(leaf))
        self.left = np.where(leaf, nodes, left)  # a leaf leads to itself
        self.right = np.where(leaf, nodes, right)
        self.depth = max(e.get_depth() for e in forest.estimators_)
        values = np.concatenate([t.value[:, 0, :] for t in trees])  # nodes x outputs
        self.classifier = hasattr(forest, "classes_")
        if self.classifier:
            values = values / values.sum(axis=1, keepdims=True)
            self.classes_ = forest.classes_
        self.values = values
        self.forest = forest

    def _leaf_values(self, X: np.ndarray) -> np.ndarray:
        """rows x trees x outputs: each tree's leaf value for each row."""
        X = np.asarray(X, dtype=np.float32)  # scikit-learn's trees compare float32 inputs
        rows = np.arange(len(X))[:, None]
        nodes = np.broadcast_to(self.roots, (len(X), len(self.roots)))
        for _ in range(self.depth):
            go_left = X[rows, self.feature[nodes]] <= self.threshold[nodes]
            nodes = np.where(go_left, self.left[nodes], self.right[nodes])
        return self.values[nodes]

    def _walks(self, X) -> bool:
        # Past a few dozen rows scikit-learn's per-tree loops win; missing values take
        # their own branches there.
        return len(X) <= FOREST_WALK_MAX_ROWS and not np.isnan(
            np.asarray(X, dtype=np.float64)).any()

    def predict_proba(self, X) -> np.ndarray:
        if not self._walks(X):
            return self.forest.predict_proba(X)
        return self._leaf_values(X).mean(axis=1)

    def predict(self, X) -> np.ndarray:
        if self.classifier:
            return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
        if not self._walks(X):
            return self.forest.predict(X)
        return self._leaf_values(X)[:, :, 0].mean(axis=1)


class CompiledLinear:
    """A logistic regression or ridge as one matrix product: on a few rows scikit-learn's
    input checks cost several times the product itself."""

    def __init__(self, model: LogisticRegression | Ridge):
        self.coef = np.asarray(model.coef_, dtype=np.float64)
        self.intercept = np.asarray(model.intercept_, dtype=np.float64)
        self.classes_ = getattr(model, "classes_", None)

    def _decision(self, X) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef.T + self.intercept

    def predict_proba(self, X) -> np.ndarray:
        decision = self._decision(X)
        if decision.shape[1] == 1:  # two classes: one logit, for the second class
            positive = expit(decision[:, 0])
            return np.column_stack([1 - positive, positive])
        return softmax(decision, axis=1)

    def predict(self, X) -> np.ndarray:
        if self.classes_ is not None:
            return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
        return self._decision(X)


class _Scaled:
    """A TemperatureScaled model with its inner model compiled."""

    def __init__(self, model: TemperatureScaled):
        self.inner = _model(model.estimator_)
        self.temperature = model.temperature
        self.model = model

    def predict_proba(self, X) -> np.ndarray:
        return scale(self.inner.predict_proba(X), self.temperature)

    def predict(self, X) -> np.ndarray:
        return self.model.predict(X)


def _model(model):
    """The model step, its forests and linear models compiled; other models are fast on a
    matrix as they are."""
    if isinstance(model, FORESTS):
        return CompiledForest(model)
    if isinstance(model, (LogisticRegression, Ridge)):
        return CompiledLinear(model)
    if isinstance(model, TemperatureScaled):
        return _Scaled(model)
    return model


# ------------------------------------------------------------------ pipelines

def _coercer(kind: str) -> Callable[[list], np.ndarray]:
    """`SchemaCoercer`'s conversion of one column's raw values, without a Series."""
    if kind == "numeric":
        def numbers(raw) -> np.ndarray:
            if isinstance(raw, np.ndarray) and raw.dtype.kind in "fiu":  # numbers already
                values = raw.astype(np.float64)
            else:
                values = np.fromiter((number_or_nan(v) for v in raw), np.float64, len(raw))
            return np.where(np.isfinite(values), values, np.nan)
        return numbers
    if kind == "boolean":
        return lambda raw: np.fromiter((bool_or_nan(v) for v in raw), np.float64, len(raw))
    if kind == "datetime":
        return lambda raw: coerce_datetime(pd.Series(raw, dtype=object)).to_numpy(dtype=object)

    def labels(raw: list) -> np.ndarray:
        out = np.empty(len(raw), dtype=object)
        out[:] = [np.nan if (label := to_label(v)) is None else label for v in raw]
        return out
    return labels


def _raw_columns(X, columns: list[str]) -> tuple[int, list]:
    """(rows, each column's raw values) of a DataFrame or a mapping of column ->
    values (arrays are kept: a float array is coerced without a Python loop); a
    missing column is all missing."""
    if isinstance(X, pd.DataFrame):
        n = len(X)
        return n, [X[c].to_numpy(dtype=object, na_value=None).tolist() if c in X.columns
                   else [None] * n for c in columns]
    n = len(next(iter(X.values()))) if X else 0
    return n, [(X[c] if isinstance(X[c], np.ndarray) else list(X[c])) if c in X
               else [None] * n for c in columns]


class CompiledPipeline:
    """`predict_proba` / `predict` of a fitted Pipeline(coerce, preprocess, model) on
    raw rows - a DataFrame, or a mapping of column -> values (no frame to build) -
    with the coercion and the preprocessing compiled."""

    def __init__(self, pipeline: Pipeline):
        coerce, preprocess, model = (pipeline.named_steps.get(k) for k in
                                     ("coerce", "preprocess", "model"))
        if (len(pipeline.steps) != 3 or not isinstance(coerce, SchemaCoercer)
                or not isinstance(preprocess, ColumnTransformer)):
            raise Unsupported("not a coerce / preprocess / model pipeline")
        self.column_types = dict(coerce.column_types_)
        self.columns = list(self.column_types)
        self.coercers = [_coercer(kind) for kind in self.column_types.values()]
        self.preprocess = _column_transformer(preprocess, self.columns)
        self.model = _model(model)
        self.classes_ = getattr(pipeline, "classes_", None)

    def matrix(self, X) -> np.ndarray:
        n, raw = _raw_columns(X, self.columns)
        coerced = np.empty((n, len(self.columns)), dtype=object)
        for j, (coerce, values) in enumerate(zip(self.coercers, raw)):
            coerced[:, j] = coerce(values)
        return self.preprocess(coerced)

    def predict_proba(self, X) -> np.ndarray:
        return self.model.predict_proba(self.matrix(X))

    def predict(self, X) -> np.ndarray:
        return self.model.predict(self.matrix(X))


class CompiledEnsemble:
    def __init__(self, ensemble: WeightedEnsemble):
        self.members = [CompiledPipeline(m) for m in ensemble.members]
        self.weights = ensemble._weights()
        self.temperature = ensemble.temperature
        self.task = ensemble.task
        self.classes_ = ensemble.classes_ if ensemble.task == CLASSIFICATION else None

    def predict_proba(self, X) -> np.ndarray:
        total = sum(w * m.predict_proba(X) for w, m in zip(self.weights, self.members))
        return scale(total, self.temperature)

    def predict(self, X) -> np.ndarray:
        if self.task == CLASSIFICATION:
            return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
        return sum(w * np.asarray(m.predict(X), dtype=np.float64).reshape(-1)
                   for w, m in zip(self.weights, self.members))


def takes_columns(model) -> bool:
    """Whether `model` takes a mapping of column -> values (no DataFrame needed)."""
    return isinstance(model, (CompiledPipeline, CompiledEnsemble))


def column_types(model) -> dict[str, str]:
    """Input column -> its type ("numeric", ...) of a fitted pipeline, an ensemble of
    them (whose members share the input schema) or their compiled form."""
    if isinstance(model, (WeightedEnsemble, CompiledEnsemble)):
        model = model.members[0]
    if isinstance(model, CompiledPipeline):
        return dict(model.column_types)
    return dict(model.named_steps["coerce"].column_types_)


def probe_rows(pipeline) -> pd.DataFrame:
    """Rows that exercise every input column: typical values, missing ones, unseen
    categories and each category the encoders were fit on (a few per column)."""
    types = column_types(pipeline)
    known = _known_categories(pipeline)
    n = 8
    frame = {}
    rng = np.random.default_rng(0)
    for column, kind in types.items():
        if kind == "numeric":
            values = list(rng.normal(size=n - 1) * 3) + [None]
        elif kind == "boolean":
            values = [True, False, None, "yes", 0, 1, True, False]
        elif kind == "datetime":
            values = ["2024-01-05", "2023-12-31 13:30", None, "not a date"] * 2
        else:
            seen = known.get(column, [])[: n - 2]
            values = (seen + [UNSEEN, None] * n)[:n]
        frame[column] = pd.Series(values, dtype=object)
    return pd.DataFrame(frame)


def _known_categories(pipeline) -> dict[str, list]:
    members = pipeline.members if isinstance(pipeline, WeightedEnsemble) else [pipeline]
    out: dict[str, list] = {}
    for member in members:
        for _, transformer, selected in member.named_steps["preprocess"].transformers_:
            encoders = (transformer.steps if isinstance(transformer, Pipeline)
                        else [("", transformer)])
            for _, encoder in encoders:
                for column, cats in zip(selected, getattr(encoder, "categories_", [])):
                    out.setdefault(column, []).extend(c for c in cats if not pd.isna(c))
    return out


def compile_model(pipeline, task: str):
    """A faster stand-in for `pipeline` (a Pipeline or a WeightedEnsemble) with the
    same `predict_proba` / `predict` on raw frames, or None when it has a step compile
    does not know or does not reproduce the pipeline's predictions on probe rows."""
    try:
        compiled = (CompiledEnsemble(pipeline) if isinstance(pipeline, WeightedEnsemble)
                    else CompiledPipeline(pipeline))
        rows = probe_rows(pipeline)
        method = "predict_proba" if task == CLASSIFICATION else "predict"
        expected = np.asarray(getattr(pipeline, method)(rows), dtype=np.float64)
        got = np.asarray(getattr(compiled, method)(rows), dtype=np.float64)
    except Exception:  # noqa: BLE001 - Unsupported, or a compile that fails: not used
        return None
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0,
                                                       atol=CHECK_TOLERANCE):
        return None
    return compiled
