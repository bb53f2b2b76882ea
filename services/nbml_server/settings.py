"""Typed settings from `NBML_*` environment variables, validated at start."""

import pathlib

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> pathlib.Path:
    return pathlib.Path(platformdirs.user_data_dir("nbml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NBML_", extra="ignore")

    # Where the embedded backends and keys live.
    home: pathlib.Path = Field(default_factory=default_home)
    # Backends by URI; empty means the embedded default under `home`.
    store: str = ""
    blobs: str = ""
    bus: str = ""
    # Token signing keys (PEM, Ed25519); empty means `{home}/keys/`.
    jwt_private_key_file: str = ""
    jwt_public_key_file: str = ""
    access_token_seconds: int = Field(default=900, ge=10, le=86400)
    refresh_token_seconds: int = Field(default=30 * 86400, ge=60)
    # Largest data set file accepted, in bytes.
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    # How many loaded models a predictor keeps in memory.
    model_cache_size: int = Field(default=16, ge=1)
    log_level: str = "INFO"

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: pathlib.Path) -> pathlib.Path:
        return value.expanduser().resolve()

    @property
    def store_uri(self) -> str:
        return self.store or f"sqlite:///{self.home / 'nbml.db'}"

    @property
    def blobs_uri(self) -> str:
        return self.blobs or f"file://{self.home / 'blobs'}"

    @property
    def bus_uri(self) -> str:
        return self.bus or f"local://{self.home / 'bus.db'}"

    @property
    def private_key_path(self) -> pathlib.Path:
        return pathlib.Path(self.jwt_private_key_file or self.home / "keys" / "jwt-private.pem")

    @property
    def public_key_path(self) -> pathlib.Path:
        return pathlib.Path(self.jwt_public_key_file or self.home / "keys" / "jwt-public.pem")
