"""The malformed-input corpus: `cases.yaml` read into typed cases (a misspelt key fails
loudly), and the bytes of each upload case (a committed file or a generator's output)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

import yaml

from tests.corpus.generators import GENERATORS

CORPUS = pathlib.Path(__file__).parent
MANIFEST = CORPUS / "cases.yaml"


@dataclass(frozen=True)
class UploadCase:
    """A file uploaded as is. Exactly one of `file` (relative to tests/corpus) and
    `generate` (`{function: NAME, ...arguments}`); exactly one of `refused` (`reason`,
    `says`: text of the violation naming `field`, default `file`) and `accepted`
    (`columns`, `rows`, `types`); with `accepted`, `train` names a target whose training
    must be refused (`target`, `reason`, `says`, optional `field`)."""

    name: str
    why: str
    file: str | None = None
    generate: dict[str, Any] | None = None
    format: str = "csv"  # csv | parquet | unspecified
    refused: dict[str, Any] | None = None
    accepted: dict[str, Any] | None = None
    train: dict[str, Any] | None = None

    def data(self) -> bytes:
        if self.file is not None:
            return (CORPUS / self.file).read_bytes()
        arguments = dict(self.generate)
        return GENERATORS[arguments.pop("function")](**arguments)


@dataclass(frozen=True)
class RequestCase:
    """A bad request. Either `grpc` (`nbml.v1.XService/Method`) with `request` (proto
    JSON; a list of messages for a client stream), or `rest` (`METHOD /path`) with
    `body` (text or bytes) or `json`. `$dataset`, `$job`, `$model` and `$endpoint` in
    strings stand for the caller's trained resources. `refused`: gRPC `code`, `reason`,
    `field`, `says`; REST `status`, `reason`, `says`. `accepted`: what must still work."""

    name: str
    why: str
    grpc: str | None = None
    request: Any = None
    rest: str | None = None
    body: str | bytes | None = None
    json: Any = None
    refused: dict[str, Any] | None = None
    accepted: dict[str, Any] | None = None


def resolved(value: Any, names: dict[str, str]) -> Any:
    """`value` (a request in proto JSON) with each placeholder string replaced by its name."""
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, list):
        return [resolved(v, names) for v in value]
    if isinstance(value, dict):
        return {k: resolved(v, names) for k, v in value.items()}
    return value


def _cases(section: str, kind: type) -> list:
    entries = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))[section]
    return [kind(**entry) for entry in entries]


def upload_cases() -> list[UploadCase]:
    return _cases("uploads", UploadCase)


def request_cases() -> list[RequestCase]:
    return _cases("requests", RequestCase)
