"""AIP-158 pagination over the table store: page_size 0 means the default, negative is
an error, and the page token is an opaque encoding of the last key returned."""

import base64
import binascii
from dataclasses import dataclass

from nbml_server.errors import InvalidArgument
from nbml_server.ports.table_store import TableStore

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Page:
    rows: list[dict]
    next_page_token: str


def _decode_token(token: str) -> str:
    try:
        key = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidArgument.of("page_token", "not a token this service returned",
                                 reason="INVALID_PAGE_TOKEN") from None
    if not key.startswith("k:"):
        raise InvalidArgument.of("page_token", "not a token this service returned",
                                 reason="INVALID_PAGE_TOKEN")
    return key[2:]


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(f"k:{key}".encode()).decode("ascii")


def resolve_page_size(page_size: int, default: int = DEFAULT_PAGE_SIZE) -> int:
    if page_size < 0:
        raise InvalidArgument.of("page_size", f"must not be negative, got {page_size}",
                                 reason="INVALID_PAGE_SIZE")
    return min(page_size or default, MAX_PAGE_SIZE)


def list_page(store: TableStore, table: str, partition: str, *, page_size: int,
              page_token: str, descending: bool = True,
              default_page_size: int = DEFAULT_PAGE_SIZE) -> Page:
    """One page of a partition, newest first by default (ids are time-ordered)."""
    size = resolve_page_size(page_size, default_page_size)
    after = _decode_token(page_token) if page_token else None
    # One row more than asked tells whether another page follows.
    batch = store.scan(table, partition, limit=size + 1, after=after, descending=descending)
    page = batch[:size]
    token = _encode_token(page[-1][0]) if len(batch) > size else ""
    return Page([row for _, row in page], token)


def all_rows(store: TableStore, table: str, partition: str, *, batch_size: int = 500):
    """Every row of a partition, in key order, read `batch_size` at a time (key, row)."""
    after = None
    while True:
        batch = store.scan(table, partition, limit=batch_size, after=after)
        yield from batch
        if len(batch) < batch_size:
            return
        after = batch[-1][0]
