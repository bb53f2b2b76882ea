"""The data sets of `make bench-automl`, and their one fixed train/test split.

Each `Dataset` is a name, a pandas frame (features + target), the target column and the
task: "binary", "multiclass" or "regression". The frames are built on demand (the large
generated ones take a moment); everything generated uses fixed seeds, so every run and
every system sees the same rows.

The split is 75/25, stratified on the target for classification, `random_state=0`.
Class labels are kept as the data has them (strings for most sets, integers for
digits); the harness compares labels by their text form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from sklearn import datasets as skd
from sklearn.model_selection import train_test_split

BINARY, MULTICLASS, REGRESSION = "binary", "multiclass", "regression"
TASKS = (BINARY, MULTICLASS, REGRESSION)
TEST_SIZE = 0.25
SPLIT_SEED = 0


@dataclass
class Dataset:
    name: str
    task: str
    target: str
    build: Callable[[], pd.DataFrame]
    description: str = ""

    @cached_property
    def frame(self) -> pd.DataFrame:
        frame = self.build()
        if self.target not in frame.columns:
            raise ValueError(f"{self.name}: no target column {self.target!r}")
        return frame.reset_index(drop=True)

    @property
    def classification(self) -> bool:
        return self.task in (BINARY, MULTICLASS)

    @cached_property
    def split(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(train, test): the one split every system gets."""
        frame = self.frame
        stratify = frame[self.target] if self.classification else None
        train, test = train_test_split(frame, test_size=TEST_SIZE, random_state=SPLIT_SEED,
                                       stratify=stratify)
        return train.reset_index(drop=True), test.reset_index(drop=True)

    @property
    def feature_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c != self.target]

    @property
    def categorical_columns(self) -> list[str]:
        """Feature columns holding text (or booleans): the categorical ones."""
        return [c for c in self.feature_columns
                if not pd.api.types.is_numeric_dtype(self.frame[c])
                or pd.api.types.is_bool_dtype(self.frame[c])]

    def summary(self) -> dict:
        train, test = self.split
        y = self.frame[self.target]
        info = {"name": self.name, "task": self.task, "target": self.target,
                "rows": len(self.frame), "train_rows": len(train), "test_rows": len(test),
                "features": len(self.feature_columns),
                "categorical_features": len(self.categorical_columns),
                "missing_cells": int(self.frame[self.feature_columns].isna().sum().sum()),
                "description": self.description}
        if self.classification:
            info["classes"] = int(y.nunique())
            info["minority_share"] = round(float(y.value_counts(normalize=True).min()), 4)
        return info


# ----------------------------------------------------------------- scikit-learn's own

def _sklearn(loader, names: bool = True) -> Callable[[], pd.DataFrame]:
    def build() -> pd.DataFrame:
        data = loader(as_frame=True)
        frame = data.frame.copy()
        if names and hasattr(data, "target_names") and data.target_names is not None:
            frame["target"] = frame["target"].map(dict(enumerate(data.target_names)))
        return frame
    return build


# ----------------------------------------------------------------- generated

def _with_missing(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    values = values.astype(object if values.dtype.kind in "OUS" else float)
    values[rng.random(len(values)) < share] = None if values.dtype == object else np.nan
    return values


def churn(n: int = 5000, seed: int = 1) -> pd.DataFrame:
    """Binary, ~12 % positives: text categoricals, numbers, missing values in both."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "pro", "enterprise"], n, p=[0.45, 0.3, 0.2, 0.05])
    region = rng.choice([f"region_{i:02d}" for i in range(12)], n)
    channel = rng.choice(["web", "store", "phone", "partner"], n, p=[0.5, 0.25, 0.15, 0.1])
    contract = rng.choice(["monthly", "yearly", "two_year"], n, p=[0.55, 0.3, 0.15])
    tenure = rng.gamma(2.0, 12.0, n)
    monthly = np.round(rng.normal(55, 20, n).clip(5, None), 2)
    tickets = rng.poisson(1.2, n).astype(float)
    usage = rng.lognormal(3, 0.8, n)
    age = rng.integers(18, 85, n).astype(float)
    noise = rng.normal(size=(n, 3))
    region_effect = dict(zip([f"region_{i:02d}" for i in range(12)], rng.normal(0, 0.5, 12)))
    logit = (-1.7 + np.select([plan == "basic", plan == "pro", plan == "enterprise"],
                              [0.5, -0.4, -1.0], 0.0)
             + np.select([contract == "monthly", contract == "two_year"], [0.9, -1.2], 0.0)
             + 0.45 * tickets - 0.035 * tenure + 0.012 * (monthly - 55)
             - 0.25 * np.log1p(usage) + np.vectorize(region_effect.get)(region)
             + 0.6 * (channel == "partner") + 0.3 * np.sin(age / 10))
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({
        "plan": _with_missing(rng, plan, 0.05), "region": region,
        "channel": _with_missing(rng, channel, 0.08), "contract": contract,
        "tenure_months": _with_missing(rng, np.round(tenure, 1), 0.1),
        "monthly_fee": monthly, "support_tickets": _with_missing(rng, tickets, 0.05),
        "usage_gb": _with_missing(rng, np.round(usage, 2), 0.15), "age": age,
        "x1": noise[:, 0], "x2": noise[:, 1], "x3": noise[:, 2],
        "churn": np.where(churned, "yes", "no")})


def housing(n: int = 20_000, seed: int = 2) -> pd.DataFrame:
    """Regression: numbers, categoricals (one with ~300 levels), missing values."""
    rng = np.random.default_rng(seed)
    cities = [f"city_{i:03d}" for i in range(300)]
    city_weight = rng.dirichlet(np.full(300, 0.7))
    city = rng.choice(cities, n, p=city_weight)
    city_level = dict(zip(cities, rng.normal(0, 0.35, 300)))
    kind = rng.choice(["flat", "terraced", "semi", "detached", "bungalow"], n,
                      p=[0.35, 0.25, 0.2, 0.15, 0.05])
    condition = rng.choice(["poor", "fair", "good", "excellent"], n, p=[0.1, 0.3, 0.45, 0.15])
    heating = rng.choice(["gas", "electric", "oil", "heat_pump"], n, p=[0.55, 0.25, 0.1, 0.1])
    area = rng.lognormal(4.4, 0.35, n)
    rooms = np.clip(np.round(area / 25 + rng.normal(0, 0.8, n)), 1, 12)
    age = rng.integers(0, 120, n).astype(float)
    distance = rng.exponential(8, n)
    garden = rng.random(n) < 0.5
    log_price = (11.2 + 0.9 * np.log(area) + 0.04 * rooms - 0.002 * age
                 + 0.0006 * (age - 60) ** 2 / 10 - 0.25 * np.log1p(distance)
                 + np.select([kind == "detached", kind == "flat", kind == "bungalow"],
                             [0.25, -0.15, 0.1], 0.0)
                 + np.select([condition == "poor", condition == "excellent"], [-0.2, 0.15], 0.0)
                 + 0.05 * garden + np.vectorize(city_level.get)(city)
                 + rng.normal(0, 0.15, n))
    return pd.DataFrame({
        "city": _with_missing(rng, city, 0.03), "kind": kind,
        "condition": _with_missing(rng, condition, 0.1),
        "heating": _with_missing(rng, heating, 0.05),
        "area_m2": np.round(area, 1), "rooms": _with_missing(rng, rooms, 0.05),
        "age_years": _with_missing(rng, age, 0.15), "distance_km": np.round(distance, 2),
        "garden": np.where(garden, "yes", "no"),
        "price_k": np.round(np.exp(log_price) / 1000, 1)})


def large_binary(n: int = 100_000, seed: int = 3) -> pd.DataFrame:
    """Binary, make_classification with 4 of its columns turned into text categories."""
    X, y = skd.make_classification(n_samples=n, n_features=20, n_informative=10,
                                   n_redundant=4, n_clusters_per_class=3, class_sep=0.8,
                                   flip_y=0.05, weights=[0.7, 0.3], random_state=seed)
    frame = pd.DataFrame(X, columns=[f"f{i:02d}" for i in range(X.shape[1])])
    rng = np.random.default_rng(seed)
    for i, levels in zip(range(4), (5, 12, 30, 60)):
        column = f"f{i:02d}"
        bins = pd.qcut(frame[column], levels, labels=False)
        # shuffle which bin gets which name so the text order means nothing
        names = np.array([f"c{column[1:]}_{k:02d}" for k in rng.permutation(levels)])
        frame[column] = names[bins.to_numpy()]
    frame = frame.rename(columns={f"f{i:02d}": f"cat{i}" for i in range(4)})
    frame["target"] = np.where(y == 1, "pos", "neg")
    return frame


def wide(n: int = 2000, seed: int = 4) -> pd.DataFrame:
    """Binary, 400 numeric columns of which 30 carry signal."""
    X, y = skd.make_classification(n_samples=n, n_features=400, n_informative=15,
                                   n_redundant=15, n_repeated=0, class_sep=1.0, flip_y=0.03,
                                   random_state=seed)
    frame = pd.DataFrame(np.round(X, 5), columns=[f"v{i:03d}" for i in range(X.shape[1])])
    frame["target"] = np.where(y == 1, "b", "a")
    return frame


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("breast_cancer", BINARY, "target", _sklearn(skd.load_breast_cancer),
            "scikit-learn, 569 rows, 30 numeric"),
    Dataset("wine", MULTICLASS, "target", _sklearn(skd.load_wine),
            "scikit-learn, 178 rows, 13 numeric, 3 classes"),
    Dataset("digits", MULTICLASS, "target", _sklearn(skd.load_digits, names=False),
            "scikit-learn, 1797 rows, 64 pixels, 10 classes (integer labels)"),
    Dataset("diabetes", REGRESSION, "target", _sklearn(skd.load_diabetes, names=False),
            "scikit-learn, 442 rows, 10 numeric"),
    Dataset("iris", MULTICLASS, "target", _sklearn(skd.load_iris),
            "scikit-learn, 150 rows, 4 numeric, 3 classes"),
    Dataset("churn", BINARY, "churn", churn,
            "generated, 5k rows, text categoricals, missing values, ~12 % positives"),
    Dataset("housing", REGRESSION, "price_k", housing,
            "generated, 20k rows, categoricals (one with 300 levels), numbers, missing"),
    Dataset("large_binary", BINARY, "target", large_binary,
            "make_classification, 100k rows, 16 numeric + 4 text categorical, 70/30"),
    Dataset("wide", BINARY, "target", wide,
            "make_classification, 2k rows, 400 numeric (30 informative)"),
)}


def get(names: list[str] | None = None) -> list[Dataset]:
    if not names:
        return list(DATASETS.values())
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown data set(s): {', '.join(unknown)}; "
                         f"known: {', '.join(DATASETS)}")
    return [DATASETS[n] for n in names]


if __name__ == "__main__":
    import json
    for dataset in DATASETS.values():
        print(json.dumps(dataset.summary()))
