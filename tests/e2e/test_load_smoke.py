"""A short headless run of the Locust scenario (loadtest/locustfile.py): users signing
up, uploading, training and predicting at once through Envoy, and not one failure."""

import pytest

from loadtest.run import run_locust

pytestmark = pytest.mark.e2e


def test_mixed_load_has_no_failures(platform, tmp_path):
    run = run_locust(f"http://{platform.address}", users=7, seconds=20, work_dir=tmp_path)
    assert run.ok, "\n".join(run.failures + run.exceptions) + "\n" + run.log[-3000:]
    served = {s.name: s.requests for s in run.stats}
    for name in ("/v1/auth:signUp", "/v1/datasets:upload", "/v1/trainingJobs",
                 "/v1/trainingJobs/{id}:watch", "/v1/endpoints/{id}:predict (1 row)"):
        assert served.get(name, 0) > 0, (name, served)
