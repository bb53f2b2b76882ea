"""`python -m nbml_server.dataset`: the dataset service process."""

from nbml.v1 import dataset_service_pb2_grpc
from nbml_server.dataset.servicer import DatasetServicer
from nbml_server.domain.dataset_catalog import DatasetCatalog, StorageLimits
from nbml_server.platform.server import Platform, serve


def build(platform: Platform):
    settings = platform.settings
    servicer = DatasetServicer(DatasetCatalog(
        platform.store, platform.blobs,
        StorageLimits(settings.max_upload_bytes, settings.max_storage_bytes_per_user)))
    return lambda server: dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(
        servicer, server)


if __name__ == "__main__":
    serve("dataset", build)
