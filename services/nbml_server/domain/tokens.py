"""Access tokens (EdDSA-signed JWTs), refresh tokens and API key secrets.

Access tokens are verified with the public key alone, so every service (and Envoy)
checks them without calling auth. Refresh tokens and API keys are opaque random
secrets; only their SHA-256 is stored.
"""

import hashlib
import pathlib
import secrets
import time
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nbml_server.errors import Unauthenticated

ISSUER = "nbml-auth"
AUDIENCE = "nbml"
API_KEY_PREFIX = "nbml_"


@dataclass(frozen=True)
class Caller:
    user_id: str
    username: str


def ensure_keypair(private_path: pathlib.Path, public_path: pathlib.Path) -> None:
    """Creates an Ed25519 key pair if none exists (the embedded default)."""
    if private_path.exists() and public_path.exists():
        return
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    # Written aside and renamed, so a process starting beside us never reads half a key.
    for path, pem, mode in ((private_path, private_pem, 0o600), (public_path, public_pem, 0o644)):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_bytes(pem)
        tmp.chmod(mode)
        tmp.replace(path)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


class TokenIssuer:
    def __init__(self, private_key_pem: bytes, ttl_seconds: int):
        self.private_key_pem = private_key_pem
        self.ttl_seconds = ttl_seconds

    def issue(self, caller: Caller, *, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        claims = {"sub": caller.user_id, "name": caller.username, "iss": ISSUER,
                  "aud": AUDIENCE, "iat": issued, "exp": issued + self.ttl_seconds,
                  "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self.private_key_pem, algorithm="EdDSA")


class TokenVerifier:
    def __init__(self, public_key_pem: bytes):
        self.public_key_pem = public_key_pem

    def verify(self, token: str) -> Caller:
        try:
            claims = jwt.decode(token, self.public_key_pem, algorithms=["EdDSA"],
                                audience=AUDIENCE, issuer=ISSUER,
                                options={"require": ["exp", "sub", "iat"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the access token has expired; log in again or refresh it",
                                  reason="TOKEN_EXPIRED") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("the access token is not valid", reason="TOKEN_INVALID") from None
        return Caller(user_id=claims["sub"], username=claims.get("name", ""))
