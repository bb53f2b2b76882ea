"""Accounts and tokens: sign-up, log-in, refresh rotation, JWT checks, API keys, history."""

import threading
import time
import types

import argon2
import pytest

from nbml_server.adapters.sqlite_table_store import SqliteTableStore
from nbml_server.domain import accounts as accounts_module
from nbml_server.domain.accounts import WRONG_CREDENTIALS, Accounts, Activity
from nbml_server.domain.tokens import (API_KEY_PREFIX, Caller, TokenIssuer, TokenVerifier,
                                       ensure_keypair, hash_secret)
from nbml_server.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from nbml_server import ids

PASSWORD = "Correct-Horse-Battery-42"
ACCESS_TTL = 300
REFRESH_TTL = 3600


def fast_hasher(**kw) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(**{"time_cost": 1, "memory_cost": 8, "parallelism": 1, **kw})


def keypair(directory):
    private, public = directory / "private.pem", directory / "public.pem"
    ensure_keypair(private, public)
    return private.read_bytes(), public.read_bytes()


class Env:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.db_path = tmp_path / "store.db"
        self.store = SqliteTableStore(self.db_path)
        self.private, self.public = keypair(tmp_path / "keys")
        self.issuer = TokenIssuer(self.private, ACCESS_TTL)
        self.verifier = TokenVerifier(self.public)
        self.accounts = Accounts(self.store, self.issuer, refresh_ttl_seconds=REFRESH_TTL,
                                 hasher=fast_hasher())

    def db_bytes(self) -> bytes:
        # WAL mode: recent writes sit in store.db-wal until a checkpoint.
        return b"".join(p.read_bytes() for p in sorted(self.tmp_path.glob("store.db*")))


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.store.close()


def caller_of(user) -> Caller:
    return Caller(user["user_id"], user["username"])


# -- sign-up ---------------------------------------------------------------------------

def test_sign_up_returns_user_and_tokens_for_that_user(env):
    user, tokens = env.accounts.sign_up("Alice", PASSWORD)
    assert user["user_id"].startswith("usr_")
    assert user["username"] == "Alice"
    assert tokens.expires_in_seconds == ACCESS_TTL
    assert tokens.refresh_token and tokens.access_token != tokens.refresh_token
    assert env.verifier.verify(tokens.access_token) == Caller(user["user_id"], "Alice")
    # Both lookup tables hold the same record.
    assert env.store.get("users_by_name", "alice", "") == user
    assert env.store.get("users_by_id", user["user_id"], "") == user
    assert env.accounts.get_user(user["user_id"]) == user


@pytest.mark.parametrize("second", ["Alice", "alice", "ALICE", "aLiCe"])
def test_duplicate_user_name_is_taken_case_insensitively(env, second):
    first, _ = env.accounts.sign_up("Alice", PASSWORD)
    with pytest.raises(AlreadyExists) as e:
        env.accounts.sign_up(second, "another-password-1")
    assert e.value.reason == "USERNAME_TAKEN"
    # Nothing was overwritten: the first account is intact and still logs in.
    assert env.store.get("users_by_name", "alice", "") == first
    assert env.store.get("users_by_id", first["user_id"], "") == first
    assert env.accounts.log_in("alice", PASSWORD)[0]["user_id"] == first["user_id"]
    with pytest.raises(Unauthenticated):
        env.accounts.log_in("alice", "another-password-1")


def test_invalid_username_and_password_are_reported_together(env):
    with pytest.raises(InvalidArgument) as e:
        env.accounts.sign_up("a/", "short")
    error = e.value
    assert [v.field for v in error.violations] == ["username", "password"]
    assert error.reason == "INVALID_USERNAME"  # the first problem's reason
    assert "username" in error.message and "password" in error.message
    assert env.store.scan("users_by_id", "", limit=10) == []


@pytest.mark.parametrize("username", ["ab", "a" * 65, "al ice", "al/ice", "ali@ce", "", "ålice"])
def test_invalid_usernames(env, username):
    with pytest.raises(InvalidArgument) as e:
        env.accounts.sign_up(username, PASSWORD)
    assert e.value.reason == "INVALID_USERNAME"
    assert [v.field for v in e.value.violations] == ["username"]


@pytest.mark.parametrize("username", ["abc", "a" * 64, "a.b_c-D9"])
def test_valid_username_edges(env, username):
    user, _ = env.accounts.sign_up(username, PASSWORD)
    assert user["username"] == username


def test_username_with_trailing_newline_is_rejected(env):
    with pytest.raises(InvalidArgument):
        env.accounts.sign_up("alice\n", PASSWORD)


@pytest.mark.parametrize("password, ok", [("wxyzwxy", False), ("wxyz" * 2, True),
                                          ("wxyz" * 256, True), ("wxyz" * 256 + "w", False)])
def test_password_length_bounds(env, password, ok):
    if ok:
        env.accounts.sign_up("bob", password)
        return
    with pytest.raises(InvalidArgument) as e:
        env.accounts.sign_up("bob", password)
    assert e.value.reason == "INVALID_PASSWORD"
    assert [v.field for v in e.value.violations] == ["password"]


@pytest.mark.parametrize("username, password, reason", [
    ("bob", "password123", "PASSWORD_TOO_COMMON"),
    ("bob", "QWERTYUIOP", "PASSWORD_TOO_COMMON"),  # case does not make it rarer
    ("bob", "abababab", "PASSWORD_TOO_REPETITIVE"),
    ("bob", "1111111111111", "PASSWORD_TOO_REPETITIVE"),
    ("margaret", "margaret2024", "PASSWORD_CONTAINS_USERNAME"),
    ("Margaret", "!!MARGARET!!", "PASSWORD_CONTAINS_USERNAME"),
    ("lee", "lee1lee2lee3", "PASSWORD_CONTAINS_USERNAME"),  # every time it appears
])
def test_easily_guessed_passwords_are_refused(env, username, password, reason):
    with pytest.raises(InvalidArgument) as e:
        env.accounts.sign_up(username, password)
    assert e.value.reason == reason
    assert [v.field for v in e.value.violations] == ["password"]
    assert password not in e.value.message
    assert env.store.scan("users_by_id", "", limit=10) == []


def test_every_broken_password_rule_is_reported(env):
    with pytest.raises(InvalidArgument) as e:
        env.accounts.sign_up("qwerty", "qwertyuiop")
    assert e.value.reason == "PASSWORD_TOO_COMMON"  # the first one's
    assert [(v.field, v.description) for v in e.value.violations] == [
        ("password", "is one of the most common passwords; choose another"),
        ("password", "must have at least 8 characters besides the user name")]


@pytest.mark.parametrize("username, password", [
    ("margaret", "margaret's long password"),  # the user name plus 8 characters and more
    ("bob", "correct horse battery staple"),
    ("bob", "Tr0ub4dor&3"),
])
def test_passwords_that_pass_every_rule(env, username, password):
    user, _ = env.accounts.sign_up(username, password)
    assert env.accounts.log_in(username, password)[0]["user_id"] == user["user_id"]


def test_password_is_stored_as_argon2id_never_in_plain_text(env):
    user, tokens = env.accounts.sign_up("Alice", PASSWORD)
    env.accounts.log_in("Alice", PASSWORD)
    key, secret = env.accounts.create_api_key(caller_of(user), "ci")
    stored = env.store.get("users_by_name", "alice", "")
    assert stored["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in stored["password_hash"]
    data = env.db_bytes()
    assert data, "the store wrote nothing to disk"
    assert stored["password_hash"].encode() in data  # we are looking at the right bytes
    for plain in (PASSWORD, tokens.refresh_token, secret):
        assert plain.encode() not in data
        assert plain.encode("utf-16-le") not in data
    # Only the SHA-256 of the opaque secrets is kept.
    assert hash_secret(tokens.refresh_token).encode() in data
    assert key["hash"] == hash_secret(secret)


# -- log-in ----------------------------------------------------------------------------

def test_log_in_is_case_insensitive_on_the_name(env):
    user, _ = env.accounts.sign_up("Alice", PASSWORD)
    logged, tokens = env.accounts.log_in("ALICE", PASSWORD)
    assert logged["user_id"] == user["user_id"]
    assert env.verifier.verify(tokens.access_token).user_id == user["user_id"]


def test_wrong_password_and_unknown_user_look_the_same(env):
    env.accounts.sign_up("Alice", PASSWORD)
    with pytest.raises(Unauthenticated) as wrong:
        env.accounts.log_in("Alice", PASSWORD + "x")
    with pytest.raises(Unauthenticated) as unknown:
        env.accounts.log_in("nobody", PASSWORD)
    for error in (wrong.value, unknown.value):
        assert error.reason == "WRONG_CREDENTIALS"
        assert error.message == WRONG_CREDENTIALS
    assert str(wrong.value) == str(unknown.value)


class _CountingHasher(argon2.PasswordHasher):
    def __init__(self):
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verified = []

    def verify(self, hash, password):
        self.verified.append(hash)
        return super().verify(hash, password)


def test_unknown_user_still_runs_a_password_check(env):
    hasher = _CountingHasher()
    accounts = Accounts(env.store, env.issuer, refresh_ttl_seconds=REFRESH_TTL, hasher=hasher)
    with pytest.raises(Unauthenticated):
        accounts.log_in("nobody", PASSWORD)
    with pytest.raises(Unauthenticated):
        accounts.log_in("nobody-else", PASSWORD)
    assert len(hasher.verified) == 2 and hasher.verified[0].startswith("$argon2id$")
    assert hasher.verified[0] == hasher.verified[1]  # one dummy hash, made once


def test_log_in_rehashes_outdated_hashes_in_both_tables(env):
    old = Accounts(env.store, env.issuer, refresh_ttl_seconds=REFRESH_TTL,
                   hasher=fast_hasher(time_cost=2))
    user, _ = old.sign_up("Alice", PASSWORD)
    logged, _ = env.accounts.log_in("alice", PASSWORD)
    new_hash = logged["password_hash"]
    assert new_hash != user["password_hash"] and "t=1" in new_hash
    assert env.store.get("users_by_name", "alice", "")["password_hash"] == new_hash
    assert env.store.get("users_by_id", user["user_id"], "")["password_hash"] == new_hash
    assert env.accounts.log_in("Alice", PASSWORD)[0]["user_id"] == user["user_id"]


# -- refresh ---------------------------------------------------------------------------

def test_refresh_rotates_the_token(env):
    user, tokens = env.accounts.sign_up("Alice", PASSWORD)
    fresh = env.accounts.refresh(tokens.refresh_token)
    assert fresh.refresh_token != tokens.refresh_token
    assert env.verifier.verify(fresh.access_token).user_id == user["user_id"]
    with pytest.raises(Unauthenticated) as e:
        env.accounts.refresh(tokens.refresh_token)  # second use of the same token
    assert e.value.reason == "REFRESH_TOKEN_INVALID"
    # The new one still works, once.
    env.accounts.refresh(fresh.refresh_token)
    with pytest.raises(Unauthenticated):
        env.accounts.refresh(fresh.refresh_token)


@pytest.mark.parametrize("token", ["", "not-a-token", "nbml_whatever"])
def test_unknown_refresh_token(env, token):
    with pytest.raises(Unauthenticated) as e:
        env.accounts.refresh(token)
    assert e.value.reason == "REFRESH_TOKEN_INVALID"


def test_expired_refresh_token_fails(env, monkeypatch):
    _, tokens = env.accounts.sign_up("Alice", PASSWORD)
    later = time.time() + REFRESH_TTL + 1
    monkeypatch.setattr(accounts_module, "time", types.SimpleNamespace(time=lambda: later))
    with pytest.raises(Unauthenticated) as e:
        env.accounts.refresh(tokens.refresh_token)
    assert e.value.reason == "REFRESH_TOKEN_INVALID"


def test_refresh_token_just_before_expiry_works(env, monkeypatch):
    _, tokens = env.accounts.sign_up("Alice", PASSWORD)
    soon = time.time() + REFRESH_TTL - 5
    monkeypatch.setattr(accounts_module, "time", types.SimpleNamespace(time=lambda: soon))
    env.accounts.refresh(tokens.refresh_token)


def test_refresh_for_a_deleted_user(env):
    user, tokens = env.accounts.sign_up("Alice", PASSWORD)
    env.store.delete("users_by_id", user["user_id"], "")
    with pytest.raises(Unauthenticated) as e:
        env.accounts.refresh(tokens.refresh_token)
    assert e.value.reason == "USER_UNKNOWN"


class _RacingStore:
    """Delegates to a store; two readers of a refresh token meet before either goes on,
    as two concurrent RefreshToken calls can."""

    def __init__(self, store):
        self._store = store
        self.barrier = threading.Barrier(2, timeout=2)

    def __getattr__(self, name):
        return getattr(self._store, name)

    def get(self, table, partition, key):
        row = self._store.get(table, partition, key)
        if table == "refresh_tokens":
            try:
                self.barrier.wait()
            except threading.BrokenBarrierError:
                pass
        return row


def test_concurrent_refreshes_of_one_token_only_one_wins(env):
    _, tokens = env.accounts.sign_up("Alice", PASSWORD)
    racing = Accounts(_RacingStore(env.store), env.issuer, refresh_ttl_seconds=REFRESH_TTL,
                      hasher=fast_hasher())
    outcomes = []

    def attempt():
        try:
            racing.refresh(tokens.refresh_token)
            outcomes.append("ok")
        except Unauthenticated:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["ok", "refused"]


# -- access tokens ---------------------------------------------------------------------

def test_expired_access_token(env):
    issuer = TokenIssuer(env.private, 60)
    token = issuer.issue(Caller("usr_1", "alice"), now=time.time() - 3600)
    with pytest.raises(Unauthenticated) as e:
        env.verifier.verify(token)
    assert e.value.reason == "TOKEN_EXPIRED"


def test_token_signed_by_another_key_is_invalid(env, tmp_path):
    other_private, _ = keypair(tmp_path / "other")
    assert other_private != env.private
    token = TokenIssuer(other_private, 60).issue(Caller("usr_1", "alice"))
    with pytest.raises(Unauthenticated) as e:
        env.verifier.verify(token)
    assert e.value.reason == "TOKEN_INVALID"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c"])
def test_malformed_access_token_is_invalid(env, token):
    with pytest.raises(Unauthenticated) as e:
        env.verifier.verify(token)
    assert e.value.reason == "TOKEN_INVALID"


def test_tampered_access_token_is_invalid(env):
    token = env.issuer.issue(Caller("usr_1", "alice"))
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(Unauthenticated) as e:
        env.verifier.verify(".".join((header, payload, flipped)))
    assert e.value.reason == "TOKEN_INVALID"


def test_unsigned_token_is_invalid(env):
    import jwt
    token = jwt.encode({"sub": "usr_1", "iss": "nbml-auth", "aud": "nbml",
                        "iat": int(time.time()), "exp": int(time.time()) + 60},
                       None, algorithm="none")
    with pytest.raises(Unauthenticated) as e:
        env.verifier.verify(token)
    assert e.value.reason == "TOKEN_INVALID"


def test_ensure_keypair_keeps_an_existing_pair(tmp_path):
    first = keypair(tmp_path)
    assert keypair(tmp_path) == first
    assert (tmp_path / "private.pem").stat().st_mode & 0o777 == 0o600


# -- API keys --------------------------------------------------------------------------

def test_api_key_create_list_delete(env):
    user, _ = env.accounts.sign_up("Alice", PASSWORD)
    caller = caller_of(user)
    key, secret = env.accounts.create_api_key(caller, "ci")
    assert secret.startswith(API_KEY_PREFIX)
    assert key["key_id"].startswith("key_") and key["display_name"] == "ci"
    assert env.accounts.caller_for_api_key(secret) == caller

    time.sleep(0.002)  # ids are ordered by millisecond
    key2, secret2 = env.accounts.create_api_key(caller, "laptop")
    page = env.accounts.list_api_keys(caller, 0, "")
    assert [k["key_id"] for k in page.rows] == [key2["key_id"], key["key_id"]]
    assert page.next_page_token == ""

    env.accounts.delete_api_key(caller, key["key_id"])
    with pytest.raises(Unauthenticated) as e:
        env.accounts.caller_for_api_key(secret)
    assert e.value.reason == "API_KEY_INVALID"
    assert env.accounts.caller_for_api_key(secret2) == caller
    assert [k["key_id"] for k in env.accounts.list_api_keys(caller, 0, "").rows] == [
        key2["key_id"]]
    with pytest.raises(NotFound) as e:
        env.accounts.delete_api_key(caller, key["key_id"])
    assert e.value.reason == "API_KEY_NOT_FOUND"


def test_api_keys_are_per_user(env):
    alice, _ = env.accounts.sign_up("Alice", PASSWORD)
    bob, _ = env.accounts.sign_up("Bob", PASSWORD)
    key, secret = env.accounts.create_api_key(caller_of(alice), "ci")
    assert env.accounts.list_api_keys(caller_of(bob), 0, "").rows == []
    with pytest.raises(NotFound):
        env.accounts.delete_api_key(caller_of(bob), key["key_id"])
    assert env.accounts.caller_for_api_key(secret) == caller_of(alice)


def test_unknown_api_key(env):
    with pytest.raises(Unauthenticated) as e:
        env.accounts.caller_for_api_key(API_KEY_PREFIX + "nope")
    assert e.value.reason == "API_KEY_INVALID"


def test_api_key_display_name_limit(env):
    user, _ = env.accounts.sign_up("Alice", PASSWORD)
    env.accounts.create_api_key(caller_of(user), "x" * 100)
    with pytest.raises(InvalidArgument) as e:
        env.accounts.create_api_key(caller_of(user), "x" * 101)
    assert e.value.reason == "DISPLAY_NAME_TOO_LONG"
    assert [v.field for v in e.value.violations] == ["api_key.display_name"]


def test_api_key_secrets_are_unique(env):
    user, _ = env.accounts.sign_up("Alice", PASSWORD)
    secrets = {env.accounts.create_api_key(caller_of(user), "k")[1] for _ in range(5)}
    assert len(secrets) == 5


# -- history ---------------------------------------------------------------------------

def activity(method, n=0):
    return Activity(method=method, resource=f"datasets/ds_{n}", status="OK", time=time.time(),
                    duration_ms=1.5, request_id=f"req-{n}")


def test_activities_are_listed_newest_first(env):
    user, _ = env.accounts.sign_up("Alice", PASSWORD)
    other, _ = env.accounts.sign_up("Bob", PASSWORD)
    for n in range(5):
        env.accounts.record_activity(user["user_id"], activity(f"/m/{n}", n))
        time.sleep(0.002)  # distinct milliseconds: ids order by millisecond only
    env.accounts.record_activity(other["user_id"], activity("/m/bob"))
    page = env.accounts.list_activities(caller_of(user), 3, "")
    assert [a["method"] for a in page.rows] == ["/m/4", "/m/3", "/m/2"]
    assert page.rows[0] == {"method": "/m/4", "resource": "datasets/ds_4", "status": "OK",
                            "time": page.rows[0]["time"], "duration_ms": 1.5,
                            "request_id": "req-4"}
    rest = env.accounts.list_activities(caller_of(user), 3, page.next_page_token)
    assert [a["method"] for a in rest.rows] == ["/m/1", "/m/0"]
    assert rest.next_page_token == ""
    assert [a["method"] for a in env.accounts.list_activities(caller_of(other), 0, "").rows] == [
        "/m/bob"]


def test_activities_in_the_same_millisecond_are_listed_newest_first(env, monkeypatch):
    user, _ = env.accounts.sign_up("Alice", PASSWORD)
    # Twelve records within one millisecond, a microsecond apart.
    start = (time.time_ns() // 1_000_000) * 1_000_000
    ticks = iter(range(start, start + 12_000, 1000))
    monkeypatch.setattr(ids, "time", types.SimpleNamespace(time_ns=lambda: next(ticks)))
    for n in range(12):
        env.accounts.record_activity(user["user_id"], activity(f"/m/{n}", n))
    rows = env.accounts.list_activities(caller_of(user), 0, "").rows
    assert [a["method"] for a in rows] == [f"/m/{n}" for n in reversed(range(12))]
