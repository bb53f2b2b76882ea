"""The user's data sets: records in `datasets_by_user`, files in the blob store.

A data set is stored once, in the canonical form (Parquet of the frame as read), under
`users/{user}/datasets/{id}/data.parquet`. The blob is written before the record and
removed if the record cannot be written, so a failed upload leaves nothing behind.

A user's storage is the sum of their data sets' `size_bytes` (the uploaded file; for a
batch prediction's output, its Parquet file), counted from their records whenever a data
set is added, so it cannot drift from what they see and holds across processes.
"""

import time
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from nbml_server.domain.datasets import (ValidationRules, check_rules, profile, read_canonical,
                                         read_table, write_canonical)
from nbml_server.domain.paging import Page, all_rows, list_page
from nbml_server.errors import InvalidArgument, NotFound, ResourceExhausted
from nbml_server.ids import new_id
from nbml_server.ports.blob_store import BlobStore
from nbml_server.ports.table_store import TableStore


def data_key(user_id: str, dataset_id: str) -> str:
    return f"users/{user_id}/datasets/{dataset_id}/data.parquet"


@dataclass(frozen=True)
class StorageLimits:
    file_bytes: int  # one uploaded file
    user_bytes: int  # all of one user's data sets


class DatasetCatalog:
    def __init__(self, store: TableStore, blobs: BlobStore, limits: StorageLimits | None = None):
        """`limits`: None only in processes that read data sets and never add one."""
        self.store = store
        self.blobs = blobs
        self.limits = limits

    def receive(self, user_id: str, chunks: Iterable[bytes]) -> bytes:
        """The file an upload streams in, refused as soon as it passes the file size
        limit or the storage the user has left; nothing of a refused file is kept."""
        left = self.limits.user_bytes - self.storage_used(user_id)
        received, size = [], 0
        for chunk in chunks:
            size += len(chunk)
            if size > self.limits.file_bytes:
                raise InvalidArgument.of(
                    "chunk", f"the file is larger than the limit of {self.limits.file_bytes} "
                    "bytes", reason="FILE_TOO_LARGE")
            if size > left:
                raise self._storage_exhausted(
                    self.limits.user_bytes - left,
                    f"this upload is larger than the {max(left, 0)} bytes left")
            received.append(chunk)
        return b"".join(received)

    def storage_used(self, user_id: str, *, excluding: str = "") -> int:
        """Bytes the user's data sets (all but `excluding`) take."""
        return sum(record["size_bytes"] for key, record
                   in all_rows(self.store, "datasets_by_user", user_id) if key != excluding)

    def upload(self, user_id: str, data: bytes, *, display_name: str, format: str | None,
               rules: ValidationRules | None) -> dict:
        frame = read_table(data, format)
        dataset_profile = profile(frame)
        if rules is not None:
            check_rules(frame, rules, {c.name: c.type for c in dataset_profile.columns})
        fmt = format or ("parquet" if data[:4] == b"PAR1" else "csv")
        return self.add(user_id, frame, display_name=display_name, format=fmt,
                        size_bytes=len(data), dataset_profile=dataset_profile)

    def add(self, user_id: str, frame: pd.DataFrame, *, display_name: str, format: str,
            size_bytes: int | None = None, dataset_profile=None,
            source_endpoint: str = "") -> dict:
        """Stores a data set; `size_bytes` None: the size of its stored Parquet file."""
        dataset_profile = dataset_profile or profile(frame)
        dataset_id = new_id("ds")
        key = data_key(user_id, dataset_id)
        canonical = write_canonical(frame)
        size_bytes = len(canonical) if size_bytes is None else size_bytes
        self._refuse_if_no_room(user_id, dataset_id, size_bytes)
        self.blobs.put(key, canonical)
        record = {"dataset_id": dataset_id, "user_id": user_id, "display_name": display_name,
                  "format": format, "size_bytes": size_bytes, "row_count": len(frame),
                  "column_count": len(frame.columns), "profile": dataset_profile.to_dict(),
                  "blob_key": key, "source_endpoint": source_endpoint,
                  "create_time": time.time()}
        try:
            self.store.put("datasets_by_user", user_id, dataset_id, record)
        except Exception:
            self.blobs.delete(key)
            raise
        try:
            # Again with the record written: of two data sets added at once (threads or
            # processes) that together pass the limit, neither is kept.
            self._refuse_if_no_room(user_id, dataset_id, size_bytes)
        except ResourceExhausted:
            self.store.delete("datasets_by_user", user_id, dataset_id)
            self.blobs.delete(key)
            raise
        return record

    def _refuse_if_no_room(self, user_id: str, dataset_id: str, size_bytes: int) -> None:
        if self.limits is None:
            return
        used = self.storage_used(user_id, excluding=dataset_id)
        if used + size_bytes > self.limits.user_bytes:
            raise self._storage_exhausted(used, f"this data set needs {size_bytes} more")

    def _storage_exhausted(self, used: int, problem: str) -> ResourceExhausted:
        return ResourceExhausted(
            f"not enough storage: your data sets take {used} of your {self.limits.user_bytes} "
            f"bytes and {problem}; delete data sets to make room",
            reason="STORAGE_QUOTA_EXCEEDED")

    def get(self, user_id: str, dataset_id: str) -> dict:
        record = self.store.get("datasets_by_user", user_id, dataset_id)
        if record is None:
            raise NotFound(f"datasets/{dataset_id} not found", reason="DATASET_NOT_FOUND")
        return record

    def list(self, user_id: str, page_size: int, page_token: str) -> Page:
        return list_page(self.store, "datasets_by_user", user_id, page_size=page_size,
                         page_token=page_token)

    def delete(self, user_id: str, dataset_id: str) -> None:
        self.get(user_id, dataset_id)
        # Record first: once it is gone nobody can reach the blob, even if removal fails.
        self.store.delete("datasets_by_user", user_id, dataset_id)
        self.blobs.delete_prefix(f"users/{user_id}/datasets/{dataset_id}/")

    def load_frame(self, record: dict) -> pd.DataFrame:
        return read_canonical(self.blobs.get(record["blob_key"]))

    @staticmethod
    def column_profiles(record: dict) -> dict[str, dict]:
        return {c["name"]: c for c in record["profile"]["columns"]}
