"""Where the CLI keeps its tokens.

One JSON file, ``<config dir>/credentials.json`` (mode 0600), keyed by server address::

    {"localhost:8080": {"username": "ada", "access_token": "...", "refresh_token": "..."}}

The config dir is ``platformdirs.user_config_dir("nbml")`` unless ``NBML_CONFIG_DIR``
is set. ``NBML_TOKEN`` (an access token or an API key secret) overrides whatever is
stored.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs

CONFIG_DIR_ENV = "NBML_CONFIG_DIR"
TOKEN_ENV = "NBML_TOKEN"
FILE_NAME = "credentials.json"


@dataclass
class StoredCredentials:
    username: str = ""
    access_token: str = ""
    refresh_token: str = ""


@dataclass(frozen=True)
class ResolvedToken:
    """The token to use for a server and where it came from (``"env"``, ``"file"`` or
    ``"none"``). ``refresh_token`` is only set for stored sessions."""

    token: str | None
    refresh_token: str | None
    username: str | None
    source: str


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    override = env.get(CONFIG_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_config_dir("nbml"))


def credentials_path(environ: Mapping[str, str] | None = None) -> Path:
    return config_dir(environ) / FILE_NAME


def server_key(server: str) -> str:
    return server.strip().rstrip("/")


def _read_all(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_all(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".credentials.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.chmod(path, 0o600)


def load(server: str, environ: Mapping[str, str] | None = None) -> StoredCredentials | None:
    """The stored session for ``server``, or None."""
    entry = _read_all(credentials_path(environ)).get(server_key(server))
    if not isinstance(entry, dict):
        return None
    return StoredCredentials(
        username=str(entry.get("username") or ""),
        access_token=str(entry.get("access_token") or ""),
        refresh_token=str(entry.get("refresh_token") or ""),
    )


def save(server: str, creds: StoredCredentials,
         environ: Mapping[str, str] | None = None) -> Path:
    """Stores (replaces) the session for ``server``; the file is mode 0600."""
    path = credentials_path(environ)
    data = _read_all(path)
    data[server_key(server)] = asdict(creds)
    _write_all(path, data)
    return path


def update_tokens(server: str, access_token: str, refresh_token: str,
                  environ: Mapping[str, str] | None = None) -> None:
    """Replaces the tokens of the stored session for ``server``, keeping the user name."""
    current = load(server, environ) or StoredCredentials()
    current.access_token = access_token
    current.refresh_token = refresh_token
    save(server, current, environ)


def delete(server: str, environ: Mapping[str, str] | None = None) -> bool:
    """Forgets the session for ``server``; True if there was one."""
    path = credentials_path(environ)
    data = _read_all(path)
    if data.pop(server_key(server), None) is None:
        return False
    _write_all(path, data)
    return True


def resolve(server: str, environ: Mapping[str, str] | None = None) -> ResolvedToken:
    """The token to send to ``server``: ``NBML_TOKEN`` if set, else the stored one."""
    env = os.environ if environ is None else environ
    env_token = (env.get(TOKEN_ENV) or "").strip()
    if env_token:
        return ResolvedToken(env_token, None, None, "env")
    creds = load(server, environ)
    if creds and creds.access_token:
        return ResolvedToken(creds.access_token, creds.refresh_token or None,
                             creds.username or None, "file")
    return ResolvedToken(None, None, None, "none")
