"""`python -m nbml_server.predictor`: the predictor service process."""

from nbml.v1 import predictor_service_pb2_grpc
from nbml_server.domain.dataset_catalog import DatasetCatalog, StorageLimits
from nbml_server.domain.endpoints import Endpoints
from nbml_server.domain.model_registry import ModelRegistry
from nbml_server.domain.serving import ModelCache, Predictor
from nbml_server.platform.server import Platform, serve
from nbml_server.predictor.servicer import PredictorServicer


def build(platform: Platform):
    models = ModelRegistry(platform.store, platform.blobs)
    endpoints = Endpoints(platform.store)
    settings = platform.settings
    # Batch predictions add data sets: the same storage limits as uploads.
    datasets = DatasetCatalog(platform.store, platform.blobs, StorageLimits(
        settings.max_upload_bytes, settings.max_storage_bytes_per_user))
    predictor = Predictor(endpoints, models, datasets,
                          ModelCache(models, settings.model_cache_size),
                          max_rows=settings.max_prediction_rows)
    servicer = PredictorServicer(endpoints, models, predictor)
    return lambda server: predictor_service_pb2_grpc.add_PredictorServiceServicer_to_server(
        servicer, server)


if __name__ == "__main__":
    serve("predictor", build)
