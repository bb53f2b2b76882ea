"""AutoML v1: plain-Python domain code for the search the workers run.

    result = run_search(SearchRequest(frame, "target", budget_seconds=60))
    model = result.best.pipeline           # one sklearn Pipeline: coerce -> preprocess -> model
                                           # (or a WeightedEnsemble of such pipelines)
    evaluation = evaluate(model, result.holdout_frame, "target", result.task, result.metric)
    data = save_model(model); model = load_model(data)

No grpc, protobuf or storage here; errors are `nbml_server.errors` domain errors.
"""

from .artifacts import ALLOWED_TYPES, load_model, save_model
from .columns import (COLUMN_TYPES, infer_column_type, model_column_type,
                      resolve_column_types, to_label, value_problems)
from .compiled import column_types, compile_model, takes_columns
from .deadline import Deadline
from .ensemble import WeightedEnsemble, greedy_selection
from .evaluation import Evaluation, evaluate
from .learners import LEARNERS, Learner, LearnerContext
from .prediction import columns_to_frame, predict_frame, rows_to_columns, rows_to_frame
from .preprocessing import build_preprocessor
from .search import (FittedModel, SearchRequest, SearchResult, TrialResult, build_pipeline,
                     prepare_trials, quiet_warnings,
                     run_search, validate_budget)
from .tasks import (CLASSIFICATION, CLASSIFICATION_METRICS, REGRESSION, REGRESSION_METRICS,
                    greater_is_better, resolve_metric, resolve_task)
from .transformers import DatePartsTransformer, SchemaCoercer, TextStatsTransformer

__all__ = [
    "ALLOWED_TYPES", "CLASSIFICATION", "CLASSIFICATION_METRICS", "COLUMN_TYPES",
    "DatePartsTransformer", "Deadline", "Evaluation", "FittedModel", "LEARNERS", "Learner",
    "LearnerContext", "REGRESSION", "REGRESSION_METRICS", "SchemaCoercer", "SearchRequest",
    "SearchResult", "TextStatsTransformer", "TrialResult", "build_pipeline",
    "build_preprocessor", "column_types", "columns_to_frame", "compile_model", "evaluate",
    "greater_is_better",
    "infer_column_type", "load_model", "model_column_type", "predict_frame", "resolve_column_types",
    "prepare_trials", "quiet_warnings", "resolve_metric", "resolve_task", "rows_to_columns",
    "rows_to_frame",
    "run_search", "takes_columns", "save_model", "to_label",
    "validate_budget", "value_problems", "WeightedEnsemble", "greedy_selection",
]
