"""The user's data sets: records in `datasets_by_user`, files in the blob store.

A data set is stored once, in the canonical form (Parquet of the frame as read), under
`users/{user}/datasets/{id}/data.parquet`. The blob is written before the record and
removed if the record cannot be written, so a failed upload leaves nothing behind.
"""

import time

import pandas as pd

from nbml_server.domain.datasets import (ValidationRules, check_rules, profile, read_canonical,
                                         read_table, write_canonical)
from nbml_server.domain.paging import Page, list_page
from nbml_server.errors import NotFound
from nbml_server.ids import new_id
from nbml_server.ports.blob_store import BlobStore
from nbml_server.ports.table_store import TableStore


def data_key(user_id: str, dataset_id: str) -> str:
    return f"users/{user_id}/datasets/{dataset_id}/data.parquet"


class DatasetCatalog:
    def __init__(self, store: TableStore, blobs: BlobStore):
        self.store = store
        self.blobs = blobs

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
            size_bytes: int, dataset_profile=None, source_endpoint: str = "") -> dict:
        dataset_profile = dataset_profile or profile(frame)
        dataset_id = new_id("ds")
        key = data_key(user_id, dataset_id)
        self.blobs.put(key, write_canonical(frame))
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
        return record

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
