"""Resource names (`datasets/{id}`) and their parsing, with errors that name the field."""

from nbml_server.errors import InvalidArgument

COLLECTIONS = {
    "datasets": "ds",
    "trainingJobs": "job",
    "models": "mdl",
    "endpoints": "ep",
    "apiKeys": "key",
}


def resource_name(collection: str, resource_id: str) -> str:
    return f"{collection}/{resource_id}"


def parse_name(name: str, collection: str, field: str, *, suffix: str = "") -> str:
    """The id in `collection/{id}{suffix}`; a bare id is accepted too."""
    value = name.strip()
    if suffix and value.endswith(suffix):
        value = value[: -len(suffix)]
    if value.startswith(collection + "/"):
        value = value[len(collection) + 1:]
    prefix = COLLECTIONS[collection] + "_"
    if not value.startswith(prefix) or "/" in value or len(value) > 64 or len(value) <= len(prefix):
        raise InvalidArgument.of(
            field, f"expected a resource name like '{collection}/{prefix}…{suffix}', got {name!r}",
            reason="INVALID_RESOURCE_NAME")
    return value
