"""`python -m nbml_server.trainer`: the trainer service process."""

from nbml.v1 import trainer_service_pb2_grpc
from nbml_server.domain.dataset_catalog import DatasetCatalog
from nbml_server.domain.jobs import Jobs
from nbml_server.platform.events import JobEventPublisher
from nbml_server.platform.job_watch import JobChangeNotifier
from nbml_server.platform.server import Platform, serve
from nbml_server.trainer.servicer import TrainerServicer


def build(platform: Platform):
    servicer = TrainerServicer(Jobs(platform.store, platform.settings.max_running_jobs_per_user),
                               DatasetCatalog(platform.store, platform.blobs),
                               JobEventPublisher(platform.bus),
                               JobChangeNotifier(platform.bus).start())
    return lambda server: trainer_service_pb2_grpc.add_TrainerServiceServicer_to_server(
        servicer, server)


if __name__ == "__main__":
    serve("trainer", build)
