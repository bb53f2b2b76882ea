"""Per column type and per model family preprocessing (a ColumnTransformer).

Two flavours, named by `Learner.preprocessing`:

* ``"scaled"`` (linear models, k-NN, SVM, MLP): numeric -> median imputation with
  missing indicators + standard scaling; categorical -> most-frequent imputation +
  one-hot (unknown categories ignored, rare ones pooled, width bounded); boolean ->
  most-frequent imputation (already 0/1); datetime -> date parts + median imputation
  + scaling; text -> length/word count + imputation + scaling.
* ``"tree"`` (forests, gradient boosting): the same without scaling, and categorical
  -> ordinal codes with -1 for missing and unseen categories, plus, when the task is
  given, target encoding (scikit-learn's TargetEncoder: the shrunk mean of the target
  per category, cross-fitted on the training rows so a row never sees its own
  target). Ordinal codes of a many-level column (300 cities) put unrelated levels
  side by side; the target mean orders them by what matters. Measured on the
  benchmark's housing set (15k rows, 10 s): LightGBM default CV RMSE 1027 -> 767, test
  RMSE 1068 -> 734 (FLAML 837).

The input is the output of `SchemaCoercer` (a DataFrame in the training schema).
"""

from __future__ import annotations

from collections.abc import Mapping

from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder

from nbml_server.domain.datasets.profiling import BOOLEAN, CATEGORICAL, DATETIME, NUMERIC, TEXT
from .tasks import REGRESSION
from .transformers import DatePartsTransformer, TextStatsTransformer

SCALED = "scaled"
TREE = "tree"
PREPROCESSING_KINDS = (SCALED, TREE)

ONE_HOT_MAX_CATEGORIES = 32
ONE_HOT_MIN_FREQUENCY = 3


def _numeric(scale: bool) -> Pipeline:
    steps = [("impute", SimpleImputer(strategy="median", add_indicator=True))]
    if scale:
        steps.append(("scale", StandardScaler()))
    return Pipeline(steps)


def build_preprocessor(column_types: Mapping[str, str], kind: str,
                       task: str | None = None) -> ColumnTransformer:
    """A ColumnTransformer for the columns in `column_types` (columns to ignore must
    be left out) with the preprocessing flavour `kind`; with `task` (classification
    or regression), tree preprocessing also target-encodes the categorical columns
    (it must then be fit with the target)."""
    if kind not in PREPROCESSING_KINDS:
        raise ValueError(f"unknown preprocessing kind {kind!r}")
    scale = kind == SCALED
    by_type: dict[str, list[str]] = {}
    for name, column_type in column_types.items():
        by_type.setdefault(column_type, []).append(name)

    transformers = []
    if by_type.get(NUMERIC):
        transformers.append(("numeric", _numeric(scale), by_type[NUMERIC]))
    if by_type.get(BOOLEAN):
        transformers.append(("boolean", SimpleImputer(strategy="most_frequent"), by_type[BOOLEAN]))
    if by_type.get(CATEGORICAL):
        if scale:
            categorical = Pipeline([
                ("impute", SimpleImputer(strategy="most_frequent")),
                ("encode", OneHotEncoder(handle_unknown="infrequent_if_exist", sparse_output=False,
                                         min_frequency=ONE_HOT_MIN_FREQUENCY,
                                         max_categories=ONE_HOT_MAX_CATEGORIES)),
            ])
        else:
            categorical = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                         encoded_missing_value=-1)
        transformers.append(("categorical", categorical, by_type[CATEGORICAL]))
        if not scale and task is not None:
            regression = task == REGRESSION
            split = (KFold if regression else StratifiedKFold)(5, shuffle=True, random_state=0)
            encoder = TargetEncoder(target_type="continuous" if regression else "auto", cv=split)
            transformers.append(("categorical_target", encoder, by_type[CATEGORICAL]))
    if by_type.get(DATETIME):
        steps = [("parts", DatePartsTransformer()),
                 ("impute", SimpleImputer(strategy="median", add_indicator=True))]
        if scale:
            steps.append(("scale", StandardScaler()))
        transformers.append(("datetime", Pipeline(steps), by_type[DATETIME]))
    if by_type.get(TEXT):
        steps = [("stats", TextStatsTransformer()),
                 ("impute", SimpleImputer(strategy="median", add_indicator=True))]
        if scale:
            steps.append(("scale", StandardScaler()))
        transformers.append(("text", Pipeline(steps), by_type[TEXT]))
    if not transformers:
        raise ValueError("no columns to preprocess")
    return ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)
