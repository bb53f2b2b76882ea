"""Endpoints: a deployed model, addressed by its own id, in `endpoints_by_user`.

Reads are served from `RecentReads` (every prediction reads its endpoint): a change
made by another predictor process shows here within `recent.RECENT_READ_SECONDS`."""

import time

from nbml_server.domain.paging import Page, list_page
from nbml_server.domain.recent import RecentReads
from nbml_server.errors import InvalidArgument, NotFound
from nbml_server.ids import new_id
from nbml_server.ports.table_store import TableStore


class Endpoints:
    def __init__(self, store: TableStore):
        self.store = store
        self._recent = RecentReads()

    def create(self, user_id: str, model: dict, display_name: str) -> dict:
        _check_display_name(display_name)
        now = time.time()
        record = {"endpoint_id": new_id("ep"), "user_id": user_id, "model_id": model["model_id"],
                  "display_name": display_name, "feature_columns": model["feature_columns"],
                  "create_time": now, "update_time": now}
        self.store.put("endpoints_by_user", user_id, record["endpoint_id"], record)
        return record

    def update(self, user_id: str, endpoint_id: str, *, model: dict | None = None,
               display_name: str | None = None) -> dict:
        """Points the endpoint at `model` and/or renames it (None: unchanged)."""
        record = dict(self._load(user_id, endpoint_id))
        if display_name is not None:
            _check_display_name(display_name)
            record["display_name"] = display_name
        if model is not None:
            record["model_id"] = model["model_id"]
            record["feature_columns"] = model["feature_columns"]
        record["update_time"] = time.time()
        self.store.put("endpoints_by_user", user_id, endpoint_id, record)
        self._recent.forget((user_id, endpoint_id))
        return record

    def get(self, user_id: str, endpoint_id: str) -> dict:
        return self._recent.get((user_id, endpoint_id), lambda: self._load(user_id, endpoint_id))

    def _load(self, user_id: str, endpoint_id: str) -> dict:
        record = self.store.get("endpoints_by_user", user_id, endpoint_id)
        if record is None:
            raise NotFound(f"endpoints/{endpoint_id} not found", reason="ENDPOINT_NOT_FOUND")
        return record

    def list(self, user_id: str, page_size: int, page_token: str) -> Page:
        return list_page(self.store, "endpoints_by_user", user_id, page_size=page_size,
                         page_token=page_token)

    def delete(self, user_id: str, endpoint_id: str) -> None:
        self._load(user_id, endpoint_id)
        self.store.delete("endpoints_by_user", user_id, endpoint_id)
        self._recent.forget((user_id, endpoint_id))


def _check_display_name(display_name: str) -> None:
    if len(display_name) > 200:
        raise InvalidArgument.of("endpoint.display_name", "at most 200 characters",
                                 reason="DISPLAY_NAME_TOO_LONG")
