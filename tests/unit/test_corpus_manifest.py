"""The malformed-input corpus (tests/corpus) cannot shrink or rot silently: enough cases,
every file and generator they name exists, every file is used, and every request is
one the API can carry."""

import inspect
import re

import pytest
from google.protobuf import descriptor_pool, json_format, message_factory

import nbml.v1.auth_service_pb2  # noqa: F401 - registers the services in the pool
import nbml.v1.dataset_service_pb2  # noqa: F401
import nbml.v1.evaluator_service_pb2  # noqa: F401
import nbml.v1.predictor_service_pb2  # noqa: F401
import nbml.v1.trainer_service_pb2  # noqa: F401
from tests.corpus.generators import GENERATORS
from tests.corpus.manifest import CORPUS, request_cases, resolved, upload_cases

UPLOADS = upload_cases()
REQUESTS = request_cases()
PLACEHOLDERS = {"$dataset": "datasets/ds_x", "$job": "trainingJobs/job_x",
                "$model": "models/mdl_x", "$endpoint": "endpoints/ep_x"}


def test_the_corpus_has_at_least_50_cases_35_files_and_20_requests():
    assert len(UPLOADS) + len(REQUESTS) >= 50
    assert len(UPLOADS) >= 35
    assert len(REQUESTS) >= 20
    assert sum(1 for case in REQUESTS if case.rest) >= 10  # REST through Envoy


def test_case_names_are_unique():
    names = [case.name for case in UPLOADS + REQUESTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", UPLOADS, ids=lambda case: case.name)
def test_an_upload_names_one_input_and_one_outcome(case):
    assert (case.file is None) != (case.generate is None)
    assert (case.refused is None) != (case.accepted is None)
    assert case.train is None or case.accepted is not None
    assert case.format in ("csv", "parquet", "unspecified")
    if case.file is not None:
        assert (CORPUS / case.file).is_file(), case.file
    else:
        arguments = dict(case.generate)
        function = GENERATORS[arguments.pop("function")]
        inspect.signature(function).bind(**arguments)
    for expected in (case.refused, case.train):
        if expected is not None:
            assert re.fullmatch(r"[A-Z_]+", expected["reason"])
    if case.accepted is not None:
        assert case.accepted["columns"] and case.accepted["rows"] > 0


def test_every_corpus_file_is_used():
    used = {case.file for case in UPLOADS}
    files = {str(path.relative_to(CORPUS)) for path in (CORPUS / "csv").iterdir()}
    assert files - used == set()


@pytest.mark.parametrize("case", REQUESTS, ids=lambda case: case.name)
def test_a_request_is_one_the_api_carries(case):
    assert (case.grpc is None) != (case.rest is None)
    assert (case.refused is None) != (case.accepted is None)
    if case.rest is not None:
        assert re.fullmatch(r"(GET|POST|PATCH|DELETE) /v1/\S+", case.rest)
        assert case.body is None or case.json is None
        assert case.refused is None or 400 <= case.refused["status"] < 500
        return
    service, name = case.grpc.rsplit("/", 1)
    method = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
    request_type = message_factory.GetMessageClass(method.input_type)
    request = resolved(case.request, PLACEHOLDERS)
    messages = request if method.client_streaming else [request]
    for message in messages:  # a misspelt field fails here, not as a puzzling refusal
        json_format.ParseDict(message, request_type())
    if case.refused is not None:
        assert case.refused["code"] not in ("INTERNAL", "UNKNOWN")
        assert re.fullmatch(r"[A-Z_]+", case.refused["reason"])
