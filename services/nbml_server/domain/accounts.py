"""Accounts: sign-up, log-in, refresh, API keys, and the callers' request history."""

import re
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from nbml_server.domain.batching import MicroBatcher
from nbml_server.domain.paging import Page, list_page
from nbml_server.domain.recent import RecentReads
from nbml_server.domain.tokens import (API_KEY_PREFIX, Caller, TokenIssuer, hash_secret,
                                       new_secret)
from nbml_server.domain.passwords import password_violations
from nbml_server.errors import (AlreadyExists, FieldViolation, InvalidArgument, NotFound,
                                Unauthenticated)
from nbml_server.ids import new_id
from nbml_server.ports.table_store import TableStore

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{3,64}$")
WRONG_CREDENTIALS = "wrong user name or password"


@dataclass(frozen=True)
class Tokens:
    access_token: str
    expires_in_seconds: int
    refresh_token: str


@dataclass(frozen=True)
class Activity:
    method: str
    resource: str
    status: str
    time: float
    duration_ms: float
    request_id: str


class Accounts:
    def __init__(self, store: TableStore, issuer: TokenIssuer | None, *,
                 refresh_ttl_seconds: int, hasher: PasswordHasher | None = None):
        self.store = store
        self.issuer = issuer
        self.refresh_ttl_seconds = refresh_ttl_seconds
        self.hasher = hasher or PasswordHasher()  # argon2id with the library's defaults
        self._dummy_hash: str | None = None
        self._api_key_callers = RecentReads()
        # Concurrent requests' history records are written together, in one commit.
        self._activity_writes = MicroBatcher()

    # -- sign-up and log-in ------------------------------------------------------------

    def sign_up(self, username: str, password: str) -> tuple[dict, Tokens]:
        """A new account; its password must pass `passwords.password_violations`."""
        violations = []
        if not USERNAME_PATTERN.fullmatch(username):
            violations.append((FieldViolation(
                "username", "3 to 64 letters, digits, '.', '_' or '-'"), "INVALID_USERNAME"))
        violations += password_violations(username, password)
        if violations:
            # The reason is the first problem's; each problem is a field violation.
            raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v, _ in violations),
                                  [v for v, _ in violations], reason=violations[0][1])
        user = {"user_id": new_id("usr"), "username": username,
                "password_hash": self.hasher.hash(password), "create_time": time.time()}
        if not self.store.put_if_absent("users_by_name", username.lower(), "", user):
            raise AlreadyExists(f"user name {username!r} is taken", reason="USERNAME_TAKEN")
        self.store.put("users_by_id", user["user_id"], "", user)
        return user, self._tokens_for(user)

    def log_in(self, username: str, password: str) -> tuple[dict, Tokens]:
        user = self.store.get("users_by_name", username.lower(), "")
        if user is None:
            # Spend the same time as a real check, so timing does not reveal names.
            self._verify_password(self._unknown_user_hash(), password)
            raise Unauthenticated(WRONG_CREDENTIALS, reason="WRONG_CREDENTIALS")
        if not self._verify_password(user["password_hash"], password):
            raise Unauthenticated(WRONG_CREDENTIALS, reason="WRONG_CREDENTIALS")
        if self.hasher.check_needs_rehash(user["password_hash"]):
            user = {**user, "password_hash": self.hasher.hash(password)}
            self.store.put("users_by_name", username.lower(), "", user)
            self.store.put("users_by_id", user["user_id"], "", user)
        return user, self._tokens_for(user)

    def refresh(self, refresh_token: str) -> Tokens:
        digest = hash_secret(refresh_token)
        record = self.store.get("refresh_tokens", digest, "")
        if record is None or record["expires"] < time.time():
            raise Unauthenticated("the refresh token is not valid or has expired; log in again",
                                  reason="REFRESH_TOKEN_INVALID")
        # Rotation: a refresh token works once. Claiming it is atomic (a lightweight
        # transaction on Cassandra), so of two concurrent uses only one wins.
        if not self.store.put_if_absent("spent_refresh_tokens", digest, "",
                                        {"time": time.time()}):
            raise Unauthenticated("the refresh token is not valid or has expired; log in again",
                                  reason="REFRESH_TOKEN_INVALID")
        self.store.delete("refresh_tokens", digest, "")
        user = self.get_user(record["user_id"])
        return self._tokens_for(user)

    def get_user(self, user_id: str) -> dict:
        user = self.store.get("users_by_id", user_id, "")
        if user is None:
            raise Unauthenticated("the account no longer exists", reason="USER_UNKNOWN")
        return user

    # -- API keys ---------------------------------------------------------------------

    def create_api_key(self, caller: Caller, display_name: str) -> tuple[dict, str]:
        if len(display_name) > 100:
            raise InvalidArgument.of("api_key.display_name", "at most 100 characters",
                                     reason="DISPLAY_NAME_TOO_LONG")
        secret = new_secret(API_KEY_PREFIX)
        key = {"key_id": new_id("key"), "user_id": caller.user_id,
               "username": caller.username, "display_name": display_name,
               "create_time": time.time(), "hash": hash_secret(secret)}
        self.store.put("api_keys_by_hash", key["hash"], "", key)
        self.store.put("api_keys_by_user", caller.user_id, key["key_id"], key)
        return key, secret

    def list_api_keys(self, caller: Caller, page_size: int, page_token: str) -> Page:
        return list_page(self.store, "api_keys_by_user", caller.user_id,
                         page_size=page_size, page_token=page_token)

    def delete_api_key(self, caller: Caller, key_id: str) -> None:
        key = self.store.get("api_keys_by_user", caller.user_id, key_id)
        if key is None:
            raise NotFound(f"apiKeys/{key_id} not found", reason="API_KEY_NOT_FOUND")
        self.store.delete("api_keys_by_hash", key["hash"], "")
        self.store.delete("api_keys_by_user", caller.user_id, key_id)
        self._api_key_callers.forget(key["hash"])

    def caller_for_api_key(self, secret: str) -> Caller:
        """The key's owner. A key revoked by another process still works here for up
        to `recent.RECENT_READ_SECONDS`."""
        digest = hash_secret(secret)
        return self._api_key_callers.get(digest, lambda: self._load_api_key_caller(digest))

    def _load_api_key_caller(self, digest: str) -> Caller:
        key = self.store.get("api_keys_by_hash", digest, "")
        if key is None:
            raise Unauthenticated("the API key is not valid or was revoked",
                                  reason="API_KEY_INVALID")
        return Caller(key["user_id"], key["username"])

    # -- history ----------------------------------------------------------------------

    def record_activity(self, user_id: str, activity: Activity) -> None:
        """Returns once the record is stored (with those of concurrent callers)."""
        self._activity_writes.run("activity", [(user_id, new_id("act"), activity.__dict__)],
                                  self._write_activities)

    def _write_activities(self, records: list[tuple[str, str, dict]]) -> list[None]:
        self.store.put_many("activity_by_user", records)
        return [None] * len(records)

    def list_activities(self, caller: Caller, page_size: int, page_token: str) -> Page:
        return list_page(self.store, "activity_by_user", caller.user_id,
                         page_size=page_size, page_token=page_token)

    # -- helpers ----------------------------------------------------------------------

    def _verify_password(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _unknown_user_hash(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(new_secret())
        return self._dummy_hash

    def _tokens_for(self, user: dict) -> Tokens:
        if self.issuer is None:
            raise RuntimeError("only the auth service signs tokens")
        caller = Caller(user["user_id"], user["username"])
        refresh = new_secret()
        self.store.put("refresh_tokens", hash_secret(refresh), "",
                       {"user_id": user["user_id"],
                        "expires": time.time() + self.refresh_ttl_seconds})
        return Tokens(self.issuer.issue(caller), self.issuer.ttl_seconds, refresh)
