"""Resource names: `collection/{id}` or a bare id, with errors that name the field."""

import pytest

from nbml_server.domain.names import COLLECTIONS, parse_name, resource_name
from nbml_server.errors import InvalidArgument
from nbml_server.ids import new_id


def invalid(name, collection, field, **kw) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as e:
        parse_name(name, collection, field, **kw)
    return e.value


@pytest.mark.parametrize("collection, prefix", sorted(COLLECTIONS.items()))
def test_full_name_and_bare_id_give_the_same_id(collection, prefix):
    rid = new_id(prefix)
    assert parse_name(resource_name(collection, rid), collection, "name") == rid
    assert parse_name(rid, collection, "name") == rid


def test_resource_name():
    assert resource_name("datasets", "ds_1") == "datasets/ds_1"


def test_surrounding_whitespace_is_ignored():
    assert parse_name("  datasets/ds_abc \n", "datasets", "name") == "ds_abc"


def test_suffix_is_stripped_from_full_names_and_bare_ids():
    kw = {"suffix": "/leaderboard"}
    assert parse_name("trainingJobs/job_x/leaderboard", "trainingJobs", "name", **kw) == "job_x"
    assert parse_name("job_x/leaderboard", "trainingJobs", "name", **kw) == "job_x"
    # The suffix is optional.
    assert parse_name("trainingJobs/job_x", "trainingJobs", "name", **kw) == "job_x"


def test_suffix_that_is_not_the_expected_one_is_rejected():
    error = invalid("trainingJobs/job_x/trials", "trainingJobs", "name", suffix="/leaderboard")
    assert error.reason == "INVALID_RESOURCE_NAME"
    assert "/leaderboard" in error.violations[0].description


def test_suffix_is_not_accepted_when_none_is_expected():
    error = invalid("trainingJobs/job_x/leaderboard", "trainingJobs", "name")
    assert error.reason == "INVALID_RESOURCE_NAME"


@pytest.mark.parametrize("name, collection", [
    ("models/mdl_1", "datasets"),            # another collection's full name
    ("mdl_1", "datasets"),                   # another collection's bare id
    ("datasets/mdl_1", "datasets"),          # right collection, wrong id prefix
    ("Datasets/ds_1", "datasets"),           # collection is case-sensitive
    ("DS_1", "datasets"),                    # so is the prefix
    ("ds1", "datasets"),                     # prefix without its underscore
    ("", "datasets"),                        # empty
    ("   ", "datasets"),                     # blank
    ("datasets/", "datasets"),               # collection only
    ("ds_", "datasets"),                     # prefix only
    ("datasets/ds_", "datasets"),
    ("datasets/ds_1/extra", "datasets"),     # slashes in the id
    ("ds_1/", "datasets"),
    ("datasets/datasets/ds_1", "datasets"),  # doubled collection
    ("/datasets/ds_1", "datasets"),          # leading slash
    ("datasets//ds_1", "datasets"),
    ("ds_" + "a" * 62, "datasets"),          # 65 characters: too long
    ("endpoints/ep_1", "apiKeys"),
])
def test_bad_names_are_rejected_with_the_field(name, collection):
    error = invalid(name, collection, "training_job.dataset")
    assert error.reason == "INVALID_RESOURCE_NAME"
    assert len(error.violations) == 1
    violation = error.violations[0]
    assert violation.field == "training_job.dataset"
    assert error.message.startswith("training_job.dataset: ")
    prefix = COLLECTIONS[collection] + "_"
    assert f"'{collection}/{prefix}" in violation.description
    assert repr(name) in violation.description  # the offending input is quoted back


def test_longest_allowed_id():
    rid = "ds_" + "a" * 61  # 64 characters
    assert parse_name(f"datasets/{rid}", "datasets", "name") == rid


def test_the_field_name_is_whatever_the_caller_says():
    assert invalid("nope", "endpoints", "endpoint.model").violations[0].field == "endpoint.model"
    assert invalid("nope", "apiKeys", "name").violations[0].field == "name"
