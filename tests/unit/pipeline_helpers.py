"""Helpers shared by the AutoML unit tests."""

from threadpoolctl import threadpool_limits

from nbml_server.domain.automl import LEARNERS, build_pipeline


def default_pipelines(ctx, X, y, types):
    """(family, pipeline) of each family that handles ctx.task: its first default
    configuration (forests and boosting cut to 5 trees), fit on X, y."""
    for learner in LEARNERS.values():
        if ctx.task not in learner.tasks:
            continue
        params = learner.defaults(ctx)[0]
        if "n_estimators" in params:
            params = {**params, "n_estimators": 5}
        with threadpool_limits(1):  # as run_search does on small data
            yield learner.name, build_pipeline(learner, params, ctx, types, types).fit(X, y)
