"""Bad input through REST that once answered 5xx."""

import grpc
import pytest
import requests

from nbml.client import Client

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fuzzer(platform):
    """A user of its own."""
    with Client(platform.address) as client:
        client.sign_up("fuzzer", "correct horse battery staple")
        yield client, {}


def test_an_unparsable_message_is_invalid_argument(platform, fuzzer):
    client, _ = fuzzer
    # Envoy's transcoder turns an object where a map's string value belongs into bytes
    # no protobuf parser reads; the first fuzz run found it as a 500.
    with requests.Session() as session:
        session.trust_env = False
        answer = session.post(
            f"http://{platform.address}/v1/trainingJobs", timeout=60,
            headers={"authorization": f"Bearer {client.token}"},
            json={"dataset": "datasets/ds_1", "target_column": "target",
                  "initial_params": {"random_forest.n_estimators": {}}})
    assert answer.status_code == 400, answer.text
    assert answer.json()["details"][0]["reason"] == "MALFORMED_REQUEST"

    with grpc.insecure_channel(platform.address) as channel:
        create = channel.unary_unary("/nbml.v1.TrainerService/CreateTrainingJob")
        with pytest.raises(grpc.RpcError) as caught:
            # Field 1 announces 5 bytes and brings 1.
            create(b"\x0a\x05\x12", timeout=30,
                   metadata=(("authorization", f"Bearer {client.token}"),))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
