"""Smoke run of the AutoML engine on scikit-learn toy data (not a test).

    uv run python tools/automl_smoke.py                 # breast cancer, 30 s
    uv run python tools/automl_smoke.py --all           # + diabetes, iris, mixed
    uv run python tools/automl_smoke.py --budget 10 --data iris

Prints the trials per family, the refit models and the holdout metrics of the best.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from nbml_server.domain.automl import (SearchRequest, evaluate, load_model, predict_frame,
                                       run_search, save_model)


def breast_cancer() -> tuple[pd.DataFrame, str]:
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.copy()
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    return frame, "target"


def diabetes() -> tuple[pd.DataFrame, str]:
    return load_diabetes(as_frame=True).frame, "target"


def iris() -> tuple[pd.DataFrame, str]:
    data = load_iris(as_frame=True)
    frame = data.frame.copy()
    frame["target"] = frame["target"].map(dict(enumerate(data.target_names)))
    return frame, "target"


def mixed(n: int = 1500, seed: int = 0) -> tuple[pd.DataFrame, str]:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    age[rng.random(n) < 0.1] = np.nan
    plan = rng.choice(["basic", "plus", "pro", None], n, p=[0.4, 0.3, 0.2, 0.1])
    member = rng.choice([True, False], n)
    signup = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 1500, n), unit="D")
    logit = (0.04 * np.nan_to_num(age, nan=45) - 2 + np.where(plan == "pro", 1.5, 0)
             + np.where(member, 0.8, -0.3) + (signup.month.to_numpy() >= 6) * 0.7)
    churn = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    frame = pd.DataFrame({"age": age, "plan": pd.Series(plan, dtype="str"), "member": member,
                          "signup": signup.strftime("%Y-%m-%d"), "churn": churn})
    return frame, "churn"


DATA = {"breast_cancer": breast_cancer, "diabetes": diabetes, "iris": iris, "mixed": mixed}


def run(name: str, budget: float) -> dict:
    frame, target = DATA[name]()
    started = time.monotonic()
    result = run_search(SearchRequest(frame=frame, target=target, budget_seconds=budget))
    took = time.monotonic() - started
    families = collections.Counter(t.family for t in result.trials)
    failed = [t for t in result.trials if t.error]
    print(f"\n== {name}: {len(frame)} rows, task={result.task}, metric={result.metric}, "
          f"budget={budget}s, run_search took {took:.1f}s, folds={result.cv_folds}")
    print(f"   column types: {collections.Counter(result.column_types.values())}")
    print(f"   trials: {len(result.trials)} ({dict(families)}); failed/abandoned: {len(failed)}")
    for t in failed[:5]:
        print(f"     #{t.number} {t.family}: {t.error}")
    for m in result.models:
        print(f"   model {m.family:24s} cv {result.metric}={m.cv_score:.4f} "
              f"(+-{m.cv_score_std:.4f}) trial #{m.trial_number}")
    best = result.best
    started = time.monotonic()
    ev = evaluate(best.pipeline, result.holdout_frame, target, result.task, result.metric)
    print(f"   best {best.family}: holdout ({ev.holdout_rows} rows) "
          + ", ".join(f"{k}={v:.4f}" for k, v in ev.metrics.items())
          + f"  [evaluate {time.monotonic() - started:.1f}s]")
    print("   top importances: " + ", ".join(f"{c}={m:.4f}" for c, m, _ in ev.feature_importances[:5]))
    # Artifact round trip and a JSON-style prediction.
    restored = load_model(save_model(best.pipeline))
    row = {c: (str(v) if isinstance(v, (float, np.floating)) else v)
           for c, v in result.holdout_frame.drop(columns=[target]).iloc[0].items()}
    prediction = predict_frame(restored, pd.DataFrame([row]), result.task)
    if result.task == "classification":
        shown = (f"label={prediction['labels'][0]} probabilities="
                 + str({c: round(float(p), 4) for c, p in zip(prediction["classes"], prediction["probabilities"][0])}))
    else:
        shown = f"value={prediction['values'][0]:.3f}"
    print(f"   restored model, JSON row with numbers as strings: {shown}")
    return {"took": took, **ev.metrics}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=sorted(DATA), default="breast_cancer")
    parser.add_argument("--budget", type=float, default=30.0)
    parser.add_argument("--all", action="store_true")
    args = parser.parse_args()
    names = list(DATA) if args.all else [args.data]
    ok = True
    for name in names:
        metrics = run(name, args.budget)
        if name == "breast_cancer":
            ok &= metrics["roc_auc"] >= 0.98
        elif name == "diabetes":
            ok &= metrics["r2"] > 0.4
        elif name == "iris":
            ok &= metrics["accuracy"] > 0.9
        ok &= metrics["took"] <= args.budget * 1.1 + 5
    print("\nOK" if ok else "\nQUALITY TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
