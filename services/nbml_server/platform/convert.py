"""Small conversions shared by the servicers."""

from google.protobuf import json_format, struct_pb2, timestamp_pb2


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    if seconds:
        stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def struct_to_dict(struct: struct_pb2.Struct) -> dict:
    return json_format.MessageToDict(struct)


def text_params(params: dict) -> dict[str, str]:
    """Hyperparameters as the proto's map<string, string>."""
    return {str(k): v if isinstance(v, str) else json_dumps(v) for k, v in params.items()}


def json_dumps(value) -> str:
    import json
    return json.dumps(value, default=str)
