"""Tenant isolation: every RPC that names a resource answers Bob about Alice's resource
as about one that does not exist - NOT_FOUND over gRPC, 404 over REST, word for word
the answer for an id nobody has - and changes nothing of it; lists and histories show
each user only his own.

TABLE has a row per request field that names a resource; the guard test reads the
service descriptors, so a new RPC (or a new resource field) cannot be left out.
"""

import copy
import re
import string
import dataclasses
from dataclasses import dataclass

import grpc
import numpy as np
import pandas as pd
import pytest
from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import descriptor, json_format, message_factory

from nbml.errors import NbmlError
from nbml.v1 import (auth_service_pb2, dataset_service_pb2, evaluator_service_pb2,
                     predictor_service_pb2, trainer_service_pb2)
from nbml_server.ids import new_id
from tests.e2e.test_failures import rest

pytestmark = pytest.mark.e2e

PROTO_FILES = (auth_service_pb2, dataset_service_pb2, trainer_service_pb2,
               evaluator_service_pb2, predictor_service_pb2)
ID_PREFIXES = {"dataset": "ds", "job": "job", "model": "mdl", "endpoint": "ep", "api_key": "key"}


@dataclass(frozen=True)
class Row:
    """Bob calls `rpc` with `field` naming one of Alice's resources (`names`, a template
    over her ids); the rest of the request (`others`, over Bob's own ids) is valid."""

    rpc: str
    field: str
    names: str
    reason: str
    others: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.rpc}.{self.field}"

    @property
    def kind(self) -> str:
        """The kind of resource the field names: `dataset`, `job`, ..."""
        return next(name for _, name, _, _ in string.Formatter().parse(self.names) if name)


# Rows that cannot fit any model: an endpoint is looked up before its rows are read.
SOME_ROWS = {"rows": [{"mean radius": 17.99, "mean texture": 10.38}]}

TABLE = (
    Row("AuthService/DeleteApiKey", "name", "apiKeys/{api_key}", "API_KEY_NOT_FOUND"),
    Row("DatasetService/GetDataset", "name", "datasets/{dataset}", "DATASET_NOT_FOUND"),
    Row("DatasetService/PreviewDataset", "name", "datasets/{dataset}", "DATASET_NOT_FOUND"),
    Row("DatasetService/DownloadDataset", "name", "datasets/{dataset}", "DATASET_NOT_FOUND"),
    Row("DatasetService/DeleteDataset", "name", "datasets/{dataset}", "DATASET_NOT_FOUND"),
    Row("TrainerService/CreateTrainingJob", "training_job.dataset", "datasets/{dataset}",
        "DATASET_NOT_FOUND", {"training_job": {"target_column": "target", "budget_seconds": 5}}),
    Row("TrainerService/GetTrainingJob", "name", "trainingJobs/{job}", "TRAINING_JOB_NOT_FOUND"),
    Row("TrainerService/WatchTrainingJob", "name", "trainingJobs/{job}",
        "TRAINING_JOB_NOT_FOUND"),
    Row("TrainerService/ListTrials", "parent", "trainingJobs/{job}", "TRAINING_JOB_NOT_FOUND"),
    Row("TrainerService/CancelTrainingJob", "name", "trainingJobs/{job}",
        "TRAINING_JOB_NOT_FOUND"),
    Row("EvaluatorService/GetLeaderboard", "name", "trainingJobs/{job}/leaderboard",
        "TRAINING_JOB_NOT_FOUND"),
    Row("EvaluatorService/ListModels", "training_job", "trainingJobs/{job}",
        "TRAINING_JOB_NOT_FOUND"),
    Row("EvaluatorService/GetModel", "name", "models/{model}", "MODEL_NOT_FOUND"),
    Row("EvaluatorService/GetModelEvaluation", "name", "models/{model}/evaluation",
        "MODEL_NOT_FOUND"),
    Row("EvaluatorService/DownloadModel", "name", "models/{model}", "MODEL_NOT_FOUND"),
    Row("PredictorService/CreateEndpoint", "endpoint.model", "models/{model}", "MODEL_NOT_FOUND"),
    Row("PredictorService/GetEndpoint", "name", "endpoints/{endpoint}", "ENDPOINT_NOT_FOUND"),
    Row("PredictorService/Predict", "endpoint", "endpoints/{endpoint}", "ENDPOINT_NOT_FOUND",
        SOME_ROWS),
    Row("PredictorService/StreamPredict", "endpoint", "endpoints/{endpoint}",
        "ENDPOINT_NOT_FOUND", SOME_ROWS),
    Row("PredictorService/BatchPredict", "endpoint", "endpoints/{endpoint}",
        "ENDPOINT_NOT_FOUND", {"dataset": "datasets/{dataset}"}),
    Row("PredictorService/BatchPredict", "dataset", "datasets/{dataset}", "DATASET_NOT_FOUND",
        {"endpoint": "endpoints/{endpoint}"}),
    # update_mask in FieldMask's JSON form (lowerCamelCase paths).
    Row("PredictorService/UpdateEndpoint", "endpoint.name", "endpoints/{endpoint}",
        "ENDPOINT_NOT_FOUND", {"endpoint": {"display_name": "bob's now"},
                               "update_mask": "displayName"}),
    Row("PredictorService/UpdateEndpoint", "endpoint.model", "models/{model}",
        "MODEL_NOT_FOUND", {"endpoint": {"name": "endpoints/{endpoint}"}, "update_mask": "model"}),
    Row("PredictorService/DeleteEndpoint", "name", "endpoints/{endpoint}", "ENDPOINT_NOT_FOUND"),
)

# RPCs whose request names no resource, and why they need no row.
OWN_LIST = "lists the caller's own (test_lists_show_only_ones_own)"
EXEMPT = {
    "AuthService/SignUp": "creates an account",
    "AuthService/LogIn": "a user name and password, no resource (test_failures: an unknown "
                         "user and a wrong password get one answer)",
    "AuthService/RefreshToken": "a bearer secret: whoever holds it is its owner",
    "AuthService/GetCurrentUser": "the caller himself",
    "AuthService/CreateApiKey": "creates one of the caller's own",
    "DatasetService/UploadDataset": "creates one of the caller's own",
    "AuthService/ListActivities": "the caller's own history (test_histories_stay_apart)",
    "AuthService/ListApiKeys": OWN_LIST,
    "DatasetService/ListDatasets": OWN_LIST,
    "TrainerService/ListTrainingJobs": OWN_LIST,
    "PredictorService/ListEndpoints": OWN_LIST,
}


# -- what the descriptors say ----------------------------------------------------------------

def method_of(rpc: str) -> descriptor.MethodDescriptor:
    service, name = rpc.split("/")
    return PROTO_FILES[0].DESCRIPTOR.pool.FindMethodByName(f"nbml.v1.{service}.{name}")


def http_rule(method: descriptor.MethodDescriptor) -> tuple[str, str, str]:
    """(HTTP verb, path template, body) of the method's google.api.http annotation."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    return verb.upper(), getattr(rule, verb), rule.body


PATH_VARIABLE = re.compile(r"\{([\w.]+)(?:=[^}]*)?\}")  # {endpoint.name=endpoints/*}


def resource_types() -> set[str]:
    """Snake-case names of the messages that are resources: they have a `name`."""
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", m.name).lower()
            for module in PROTO_FILES for m in module.DESCRIPTOR.message_types_by_name.values()
            if "name" in m.fields_by_name and not m.name.endswith("Request")}


def resource_fields(method: descriptor.MethodDescriptor) -> set[str]:
    """Request fields that name a resource: the ones the HTTP path binds, and every
    string field a caller sets called `name`, `parent` or after a resource type."""
    naming = {"name", "parent"} | resource_types()
    found = set(PATH_VARIABLE.findall(http_rule(method)[1]))

    def walk(message: descriptor.Descriptor, prefix: str, seen: frozenset) -> None:
        for f in message.fields:
            behaviours = f.GetOptions().Extensions[field_behavior_pb2.field_behavior]
            if field_behavior_pb2.OUTPUT_ONLY in behaviours:
                continue
            if f.type == f.TYPE_STRING and f.name in naming:
                found.add(prefix + f.name)
            elif (f.message_type and f.message_type.full_name.startswith("nbml.v1.")
                  and f.message_type not in seen):
                walk(f.message_type, f"{prefix}{f.name}.", seen | {f.message_type})
    walk(method.input_type, "", frozenset({method.input_type}))
    return found


def test_every_rpc_that_names_a_resource_is_in_the_table():
    rpcs = {f"{service.name}/{method.name}": method for module in PROTO_FILES
            for service in module.DESCRIPTOR.services_by_name.values()
            for method in service.methods}
    assert set(EXEMPT) <= set(rpcs), sorted(set(EXEMPT) - set(rpcs))
    for rpc, method in rpcs.items():
        in_table = {row.field for row in TABLE if row.rpc == rpc}
        if rpc in EXEMPT:
            assert not resource_fields(method), f"{rpc} names a resource: give it rows"
            assert not in_table, f"{rpc} is both exempt and in the table"
        else:
            assert in_table == resource_fields(method), (
                f"{rpc} names resources in {sorted(resource_fields(method))}, the table has "
                f"rows for {sorted(in_table)}: add rows (or exempt it, saying why)")


# -- one call, over gRPC or over REST --------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """What a caller sees of a refused call, and its request id (new for every call)."""

    code: str
    reason: str
    message: str
    field_violations: tuple
    request_id: str

    def learned(self, real_id: str = "", written_as: str = "") -> tuple:
        """All the caller learns, with `real_id` (if given) written as `written_as`."""
        message = self.message.replace(real_id, written_as) if real_id else self.message
        return self.code, self.reason, message, self.field_violations


def _parent_of(values: dict, path: str) -> tuple[dict, str]:
    """The dict holding the dotted `path`'s last field (created on the way), and that field."""
    *parents, last = path.split(".")
    for name in parents:
        values = values.setdefault(name, {})
    return values, last


def request_of(row: Row, target_ids: dict, own_ids: dict):
    """The row's request: its field names the target, the rest the caller's own."""
    def filled(value):
        if isinstance(value, dict):
            return {k: filled(v) for k, v in value.items()}
        return value.format(**own_ids) if isinstance(value, str) else copy.deepcopy(value)
    values = filled(row.others)
    place, name = _parent_of(values, row.field)
    place[name] = row.names.format(**target_ids)
    request_type = message_factory.GetMessageClass(method_of(row.rpc).input_type)
    return json_format.ParseDict(values, request_type())


def call_grpc(channel: grpc.Channel, rpc: str, request, token: str) -> Refusal | None:
    """The call over native gRPC; None if it succeeded."""
    method = method_of(rpc)
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    response_type = message_factory.GetMessageClass(method.output_type)
    stub = kinds[method.client_streaming, method.server_streaming](
        f"/nbml.v1.{rpc}", request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString)
    try:
        answer = stub(iter([request]) if method.client_streaming else request,
                      metadata=[("authorization", f"Bearer {token}")], timeout=60)
        if method.server_streaming:
            list(answer)
    except grpc.RpcError as error:
        refused = NbmlError.from_rpc_error(error)
        return Refusal(refused.code, refused.reason, refused.message,
                       tuple((v.field, v.description) for v in refused.field_violations),
                       refused.request_id)
    return None


def _query(values: dict, prefix: str = "") -> dict:
    """Fields as query parameters: `a.b=value`."""
    flat = {}
    for name, value in values.items():
        if isinstance(value, dict):
            flat.update(_query(value, f"{prefix}{name}."))
        else:
            flat[prefix + name] = value
    return flat


def call_rest(platform, rpc: str, request, token: str) -> Refusal | None:
    """The call as curl makes it, laid out by the RPC's google.api.http annotation;
    None if it succeeded."""
    method = method_of(rpc)
    verb, template, body = http_rule(method)
    values = json_format.MessageToDict(request, preserving_proto_field_name=True)

    def bound(variable: re.Match) -> str:
        place, name = _parent_of(values, variable[1])
        return place.pop(name)
    path = PATH_VARIABLE.sub(bound, template)
    json_body, params = None, values
    if body == "*":
        json_body, params = values, {}
    elif body:
        json_body = values.pop(body, {})
    if method.client_streaming:
        json_body = [json_body]  # a JSON array of the stream's messages
    response = rest(platform, verb, path, token, json=json_body, params=_query(params))
    if response.ok:
        return None
    status = response.json()  # google.rpc.Status, as Envoy renders it
    details = status.get("details", [])
    [info] = [d for d in details if d["@type"].endswith("ErrorInfo")]
    violations = tuple((v["field"], v["description"]) for d in details
                       if d["@type"].endswith("BadRequest") for v in d["field_violations"])
    return Refusal(str(response.status_code), info["reason"], status["message"], violations,
                   info["metadata"]["request_id"])


# -- two users, and Bob's tries at Alice's resources -----------------------------------------

def ids_of(names: dict) -> dict:
    return {kind: name.split("/")[-1] for kind, name in names.items()}


@pytest.fixture(scope="module")
def alices(alice, trained):
    key = alice.create_api_key_full("alice's script").api_key.name
    return {**{kind: trained[kind] for kind in ("dataset", "job", "model", "endpoint")},
            "api_key": key.split("/")[-1]}


@pytest.fixture(scope="module")
def bobs(bob):
    """Bob's own data set, job, model, endpoint and key (a one-trial logistic regression)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=40), "z": rng.normal(size=40)})
    frame["y"] = np.where(frame["x"] > frame["z"], "up", "down")
    dataset = bob.upload_dataset(frame, name="bob's").name
    job = bob.wait_for_job(bob.train(dataset, "y", budget_seconds=5, holdout_fraction=0,
                                     families=["logistic_regression"], max_trials=1).name)
    assert job.best_model, job.error
    return ids_of({"dataset": dataset, "job": job.name, "model": job.best_model,
                   "endpoint": bob.deploy(job.best_model).name,
                   "api_key": bob.create_api_key_full("bob's script").api_key.name})


def names_of(ids: dict) -> set[str]:
    collections = {"dataset": "datasets", "job": "trainingJobs", "model": "models",
                   "endpoint": "endpoints", "api_key": "apiKeys"}
    return {f"{collections[kind]}/{resource_id}" for kind, resource_id in ids.items()}


def listed(client) -> dict[str, set[str]]:
    """The names in each of the user's lists."""
    return {"datasets": {d.name for d in client.datasets()},
            "jobs": {j.name for j in client.jobs()},
            "models": {m.name for m in client.models()},
            "endpoints": {e.name for e in client.endpoints()},
            "api_keys": {k.name for k in client.api_keys()}}


def state_of(client, ids: dict) -> dict:
    """Everything the API shows of these resources, to compare before and after."""
    def plain(message):
        return json_format.MessageToDict(message)
    return {"dataset": plain(client.get_dataset(ids["dataset"])),
            "preview": plain(client.preview_response(ids["dataset"])),
            "job": plain(client.get_job(ids["job"])),
            "leaderboard": plain(client.leaderboard(ids["job"])),
            "model": plain(client.get_model(ids["model"])),
            "endpoint": plain(client.get_endpoint(ids["endpoint"])),
            "api_key": [plain(k) for k in client.api_keys() if k.name.endswith(ids["api_key"])]}


@dataclass(frozen=True)
class Walk:
    """Every row, tried by Bob on Alice's resources and on ids nobody has."""

    answers: dict  # str(row) -> (gRPC: on Alice's, on nobody's; REST: the same two)
    nobodys: dict
    before: dict  # Alice's and Bob's resources, and Bob's lists
    after: dict

    @property
    def request_ids(self) -> list[str]:
        return [refusal.request_id for tries in self.answers.values()
                for refusal in tries if refusal]


@pytest.fixture(scope="module")
def walk(platform, alice, bob, alices, bobs) -> Walk:
    def looks():
        return {"alice's": state_of(alice, alices), "bob's": state_of(bob, bobs),
                "bob's lists": listed(bob)}
    nobodys = {kind: new_id(ID_PREFIXES[kind]) for kind in alices}
    before, answers = looks(), {}
    with grpc.insecure_channel(platform.address) as channel:  # through Envoy
        for row in TABLE:
            requests = [request_of(row, target, bobs) for target in (alices, nobodys)]
            answers[str(row)] = (
                *(call_grpc(channel, row.rpc, request, bob.token) for request in requests),
                *(call_rest(platform, row.rpc, request, bob.token) for request in requests))
    return Walk(answers, nobodys, before, looks())


@pytest.mark.parametrize("row", TABLE, ids=str)
def test_another_users_resource_answers_as_one_nobody_has(walk, alices, row):
    grpc_alices, grpc_nobodys, rest_alices, rest_nobodys = walk.answers[str(row)]
    real, stand_in = alices[row.kind], walk.nobodys[row.kind]
    assert grpc_alices, "Bob's call on Alice's resource succeeded"
    assert (grpc_alices.code, grpc_alices.reason) == ("NOT_FOUND", row.reason), grpc_alices
    assert grpc_alices.learned(real, stand_in) == grpc_nobodys.learned()
    assert rest_alices, "Bob's REST call on Alice's resource succeeded"
    assert (rest_alices.code, rest_alices.reason) == ("404", row.reason), rest_alices
    assert rest_alices.learned(real, stand_in) == rest_nobodys.learned()
    assert rest_alices.message == grpc_alices.message


def test_alices_resources_are_unchanged(walk):
    assert walk.after["alice's"] == walk.before["alice's"]


def test_bob_got_nothing_from_his_tries(walk):
    # No job, endpoint or data set of his own came of them; his endpoint kept its model.
    assert walk.after["bob's lists"] == walk.before["bob's lists"]
    assert walk.after["bob's"] == walk.before["bob's"]


def test_lists_show_only_ones_own(platform, walk, bob, alices, bobs):
    shown = set().union(*walk.after["bob's lists"].values())
    assert names_of(bobs) <= shown and not names_of(alices) & shown
    for path, listing in (("/v1/datasets", "datasets"), ("/v1/trainingJobs", "training_jobs"),
                          ("/v1/models", "models"), ("/v1/endpoints", "endpoints"),
                          ("/v1/apiKeys", "api_keys")):
        response = rest(platform, "GET", path, bob.token, params={"page_size": 1000})
        assert response.status_code == 200, response.text
        shown = {item["name"] for item in response.json()[listing]}
        assert shown & names_of(bobs) and not shown & names_of(alices), path


def test_histories_stay_apart(walk, alice, bob):
    bobs_history = {a.request_id: a.status for a in bob.activities(limit=None)}
    alices_history = {a.request_id for a in alice.activities(limit=None)}
    statuses = {bobs_history.get(request_id) for request_id in walk.request_ids}
    assert walk.request_ids and statuses == {"NOT_FOUND"}  # each try is in his history
    assert not alices_history & bobs_history.keys()
