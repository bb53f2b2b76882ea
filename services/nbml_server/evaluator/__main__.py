"""`python -m nbml_server.evaluator`: the evaluator service process.

Besides serving, it listens for completed jobs and evaluates their models ahead of the
first leaderboard request (requests compute any evaluation still missing themselves).
"""

import logging
import threading

from nbml.v1 import evaluator_service_pb2_grpc
from nbml_server.domain.evaluations import Evaluations
from nbml_server.domain.jobs import Jobs
from nbml_server.domain.model_registry import ModelRegistry
from nbml_server.evaluator.servicer import EvaluatorServicer
from nbml_server.platform.events import decode
from nbml_server.platform.server import Platform, serve
from nbml_server.ports.event_bus import TRAINING_JOBS_TOPIC

log = logging.getLogger("nbml.evaluator")
CONSUMER_GROUP = "evaluators"
RETRY_SECONDS = 2.0


def evaluate_completed_jobs(platform: Platform, models: ModelRegistry,
                            evaluations: Evaluations) -> None:
    while True:
        try:
            subscription = platform.bus.subscribe(TRAINING_JOBS_TOPIC, CONSUMER_GROUP)
            try:
                while True:
                    for message in subscription.poll(timeout_seconds=1.0):
                        evaluate_models_of(decode(message.value), models, evaluations)
                        subscription.commit(message)
            finally:
                subscription.close()
        except Exception:
            # The bus is down: leaderboard requests still evaluate on demand.
            log.warning("job events unavailable; retrying", exc_info=True)
            threading.Event().wait(RETRY_SECONDS)


def evaluate_models_of(event, models: ModelRegistry, evaluations: Evaluations) -> None:
    if event.WhichOneof("kind") != "completed":
        return
    for name in event.completed.models:
        try:
            evaluations.of(models.get(event.user_id, name.removeprefix("models/")))
        except Exception:
            log.exception("could not evaluate %s ahead of time", name)


def build(platform: Platform):
    models = ModelRegistry(platform.store, platform.blobs)
    evaluations = Evaluations(models)
    servicer = EvaluatorServicer(Jobs(platform.store), models, evaluations)
    threading.Thread(target=evaluate_completed_jobs, args=(platform, models, evaluations),
                     name="evaluate-completed-jobs", daemon=True).start()
    return lambda server: evaluator_service_pb2_grpc.add_EvaluatorServiceServicer_to_server(
        servicer, server)


if __name__ == "__main__":
    serve("evaluator", build)
