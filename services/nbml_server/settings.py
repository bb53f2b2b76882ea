"""Typed settings from `NBML_*` environment variables, validated at start."""

import os
import pathlib

import platformdirs
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> pathlib.Path:
    return pathlib.Path(platformdirs.user_data_dir("nbml"))


# A trial process's libraries alone (numpy, scikit-learn, LightGBM, XGBoost) take
# about 300 MiB of its memory share.
MIN_TRIAL_MEMORY_MB = 512


def machine_memory_bytes() -> int | None:
    """Physical memory, or the container's (cgroup v2 or v1) limit when lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = pathlib.Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_trial_memory_mb(runners: int) -> int:
    """Half the machine's memory, shared by the worker's trial processes: the worker
    keeps its own copy of the job's data (and refits the best models on it) beside
    them."""
    total = machine_memory_bytes()
    return max(MIN_TRIAL_MEMORY_MB, total // 2 // runners // 2**20) if total else 0


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
    # Largest data set file accepted, in bytes: an upload is refused (INVALID_ARGUMENT,
    # FILE_TOO_LARGE) as soon as it streams past it.
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    # Storage of one user's data sets (uploaded files plus batch prediction outputs), in
    # bytes: an upload or batch prediction that would pass it is refused
    # (RESOURCE_EXHAUSTED, STORAGE_QUOTA_EXCEEDED); deleting data sets makes room.
    max_storage_bytes_per_user: int = Field(default=5 * 1024**3, ge=1024)
    # Training jobs one user may have queued or running at once (a job being cancelled
    # no longer counts); one more is refused (RESOURCE_EXHAUSTED, TOO_MANY_RUNNING_JOBS).
    max_running_jobs_per_user: int = Field(default=4, ge=1)
    # Rows in one Predict request or StreamPredict message, as rows or as columns
    # (INVALID_ARGUMENT, TOO_MANY_ROWS); BatchPredict predicts a stored data set in
    # slices of this many rows.
    max_prediction_rows: int = Field(default=100_000, ge=1)
    # How many loaded models a predictor keeps in memory.
    model_cache_size: int = Field(default=16, ge=1)
    # Log-in and sign-up attempts one client address may make per minute, each (Envoy
    # answers more with 429 / RESOURCE_EXHAUSTED); as `generate_config`'s default.
    login_attempts_per_minute: int = Field(default=10, ge=1)
    # Predictor processes `nbml up` starts behind Envoy (each loads the models it serves).
    predictor_replicas: int = Field(default=1, ge=1, le=64)
    # Workers fan each job's trials out to every worker over the bus (false: a job's
    # trials run in the thread of the worker that runs the job).
    trial_fanout: bool = True
    # Trial runners in each worker process, each with its own trial process; 0: one
    # per core (trials on small data use one core each and run side by side; a trial
    # whose models use more cores waits until they are free).
    trial_runners: int = Field(default=0, ge=0, le=256)
    # Scheduling niceness a worker adds to itself (and its trial processes): on a
    # machine that also serves predictions, training takes the cores serving leaves.
    worker_nice: int = Field(default=10, ge=0, le=19)
    # Memory share of a trial, in MiB (the limit on each child process a worker runs
    # trials in: RLIMIT_DATA); a trial that needs more fails, the job goes on.
    # Default: half the machine's memory (or of its container's limit) divided among
    # the worker's trial runners; 0: unlimited.
    trial_memory_mb: int | None = Field(default=None, ge=0)
    log_level: str = "INFO"

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: pathlib.Path) -> pathlib.Path:
        return value.expanduser().resolve()

    @field_validator("trial_memory_mb")
    @classmethod
    def _enough_trial_memory(cls, value: int | None) -> int | None:
        if value is not None and 0 < value < MIN_TRIAL_MEMORY_MB:
            raise ValueError(f"must be 0 (unlimited) or at least {MIN_TRIAL_MEMORY_MB} MiB: "
                             "the libraries of a trial process take about 300 MiB")
        return value

    @model_validator(mode="after")
    def _default_trial_memory(self) -> "Settings":
        if self.trial_memory_mb is None:
            self.trial_memory_mb = default_trial_memory_mb(self.trial_runner_count)
        return self

    @property
    def trial_runner_count(self) -> int:
        return self.trial_runners or machine_cores()

    @property
    def trial_memory_bytes(self) -> int | None:
        """The trial memory share in bytes; None: unlimited."""
        return self.trial_memory_mb * 2**20 or None

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
