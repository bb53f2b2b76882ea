"""Every worker's trial runner: runs the trials any job's coordinator fans out.

A thread in each worker process consumes `TRIALS_TOPIC` in consumer group
`TRIAL_RUNNERS_GROUP` (`trial_fanout` is the coordinator's side). For each
`nbml.v1.TrialRequest` it

1. reads the job record (a fresh read per request) and skips the request, committing
   it, when nobody waits for its outcome any more: the job is gone, ended, cancelled,
   past its search (refitting), or runs another attempt now;
2. takes the time the request waited for a runner off its `max_seconds` (the
   coordinator counts from when it asked); a request that waited past that gets an
   error outcome at once, so its coordinator does not wait for it;
3. evaluates the spec on the job attempt's TrialData (`prepare_trials` of the same
   `runner.search_request` the coordinator built, so the same rows and folds), built
   once per (job, attempt) and kept in a small LRU shared with this process's
   coordinator; the evaluation stops between folds when the job is cancelled or
   stale (checked at most once a second);
4. writes the out-of-fold predictions, when kept, to the blob store as a .npy array,
   publishes an `nbml.v1.TrialOutcome` (key = job id), and only then commits.

A runner that dies mid-trial has committed nothing: the bus gives the request to
another runner (at least once); its coordinator keeps whichever outcome comes first.

`evaluate` is the one place a trial runs. With an `isolated` evaluator
(`worker.isolation.IsolatedEvaluator`: `evaluate(source_key, source, spec,
should_stop)`), the trial runs in a child process under a memory and time share; the
child builds the TrialData itself from a `DataSource` (the stores' URIs, the job and
attempt), once per job attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from threadpoolctl import threadpool_limits

from nbml.v1 import events_pb2 as pb
from nbml_server.domain.automl import prepare_trials
from nbml_server.domain.automl.search import STAGE_DONE, STAGE_REFITTING
from nbml_server.domain.automl.trials import TrialData, TrialOutcome, TrialSpec, error_text
from nbml_server.domain.dataset_catalog import DatasetCatalog
from nbml_server.domain.jobs import TERMINAL, Jobs
from nbml_server.errors import NotFound, Unavailable
from nbml_server.ports.blob_store import BlobStore
from nbml_server.ports.event_bus import TRIAL_OUTCOMES_TOPIC, TRIALS_TOPIC, EventBus, Message
from nbml_server.worker.core_pool import CorePool, PoolStopping
from nbml_server.worker.isolation import SHUTTING_DOWN
from nbml_server.worker.runner import CANCEL_CHECK_SECONDS, search_request
from nbml_server.worker.trial_fanout import (TRIAL_RUNNERS_GROUP, TrialDataCache, encode_array,
                                             job_id_of, job_name, oof_key, spec_of)

log = logging.getLogger("nbml.worker.trials")
RETRY_SECONDS = 2.0
POLL_SECONDS = 0.5
JOB_CACHE_SIZE = 256


class Isolation(Protocol):
    """What `worker.isolation` provides: a trial run in a child process."""

    def evaluate(self, source_key: object, source: Callable[[], TrialData], spec: TrialSpec,
                 should_stop: Callable[[], bool]) -> TrialOutcome: ...


class _Interrupted(Exception):
    """The runner is stopping and cut its trial short: not answered, not committed,
    so the request goes to another runner."""


@dataclass(frozen=True)
class DataSource:
    """Builds a job attempt's TrialData from the table and blob stores' URIs: the
    `source` of an isolated trial, called in its child process (so it pickles)."""

    store_uri: str
    blobs_uri: str
    job_id: str
    attempt: int

    def __call__(self) -> TrialData:
        from nbml_server.adapters.registry import open_blob_store, open_table_store

        store, blobs = open_table_store(self.store_uri), open_blob_store(self.blobs_uri)
        try:
            job = Jobs(store).get_by_id(self.job_id)
            why = skip_reason(job, self.attempt)
            if why is not None:
                raise NotFound(why)
            return prepare_trials(search_request(job, DatasetCatalog(store, blobs)))
        finally:
            blobs.close()
            store.close()


def skip_reason(job: dict | None, attempt: int) -> str | None:
    """Why nobody waits for an outcome of this job attempt any more (None: someone does)."""
    if job is None:
        return "the job is gone"
    if job["state"] in TERMINAL:
        return f"the job has ended ({job['state']})"
    if job["attempt"] != attempt:
        return f"attempt {attempt} is not the job's current one ({job['attempt']})"
    if job.get("cancel_requested"):
        return "the job was cancelled"
    if job.get("progress", {}).get("stage") in (STAGE_REFITTING, STAGE_DONE):
        return "the job's search has ended"
    return None


class _JobRecords:
    """Job records, read again when older than `max_age` seconds."""

    def __init__(self, jobs: Jobs, clock: Callable[[], float]):
        self.jobs = jobs
        self.clock = clock
        self._seen: dict[str, tuple[float, dict | None]] = {}
        self._lock = threading.Lock()

    def get(self, job_id: str, max_age: float = 0.0) -> dict | None:
        now = self.clock()
        with self._lock:
            seen = self._seen.get(job_id)
        if seen is not None and now - seen[0] < max_age:
            return seen[1]
        job = self.jobs.get_by_id(job_id)
        with self._lock:
            if len(self._seen) >= JOB_CACHE_SIZE:
                self._seen.clear()
            self._seen[job_id] = (now, job)
        return job


class TrialRunner:
    """Consumes trial requests and publishes their outcomes; `start` runs it in a
    thread until `stopping` is set. `isolated` (with `store_uris`, the table and blob
    stores' URIs for its child) runs the trials in a child process; without it, they
    run in the runner's thread. With `cores` (the pool its worker's runners share), a
    trial starts once the cores it asks for are free."""

    def __init__(self, bus: EventBus, blobs: BlobStore, jobs: Jobs, datasets: DatasetCatalog,
                 *, worker_name: str, cache: TrialDataCache | None = None,
                 isolated: Isolation | None = None,
                 store_uris: tuple[str, str] | None = None,
                 cores: CorePool | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        if isolated is not None and store_uris is None:
            raise ValueError("an isolated evaluator needs the stores' URIs for its child")
        self.bus = bus
        self.blobs = blobs
        self.datasets = datasets
        self.worker_name = worker_name
        self.cache = cache if cache is not None else TrialDataCache()
        self.isolated = isolated
        self.store_uris = store_uris
        self.cores = cores
        self.clock = clock
        self.wall_clock = wall_clock
        self.records = _JobRecords(jobs, clock)
        self.trials_run = 0
        self.stopping = threading.Event()  # the one `run` watches
        self.subscribed = threading.Event()  # set once it first subscribed

    # -- the loop

    def start(self, stopping: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stopping,), name="trial-runner",
                                  daemon=True)
        thread.start()
        return thread

    def run(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        while not stopping.is_set():
            try:
                self.consume(stopping)
            except Unavailable as error:
                # Nothing uncommitted is lost: subscribing again gets it back.
                log.warning("trial runner: backend unavailable (%s); retrying in %s s",
                            error.message, RETRY_SECONDS)
                stopping.wait(RETRY_SECONDS)
            except Exception:
                log.exception("trial runner failed; starting again in %s s", RETRY_SECONDS)
                stopping.wait(RETRY_SECONDS)

    def consume(self, stopping: threading.Event) -> None:
        subscription = self.bus.subscribe(TRIALS_TOPIC, TRIAL_RUNNERS_GROUP)
        self.subscribed.set()
        try:
            while not stopping.is_set():
                for message in subscription.poll(POLL_SECONDS):
                    self.handle(message)
                    subscription.commit(message)
        except _Interrupted:
            log.info("trial runner stopped mid-trial; the trial goes to another runner")
        finally:
            subscription.close()

    # -- one request

    def handle(self, message: Message) -> bool:
        """Runs the request if someone waits for it; True when an outcome went out.
        Raises Unavailable (the request is then delivered again); anything else
        wrong with the request is logged and the request is done with."""
        try:
            request = pb.TrialRequest.FromString(message.value)
        except Exception:  # noqa: BLE001 - a poison message must not block the topic
            log.error("undecodable trial request at %s[%d]@%d skipped", message.topic,
                      message.partition, message.offset)
            return False
        job_id, attempt = job_id_of(request.training_job), request.attempt
        try:
            why = skip_reason(self.records.get(job_id), attempt)
            if why is not None:
                log.debug("trial %d of job %s skipped: %s", request.key, job_id, why)
                return False
            outcome, queued = self._run(request, job_id, attempt)
            if self.stopping.is_set() and outcome.error == SHUTTING_DOWN:
                raise _Interrupted()
            self._publish(request, outcome, queued)
        except (Unavailable, _Interrupted):
            raise
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("trial %d of job %s: request skipped", request.key, job_id)
            return False
        return True

    def _run(self, request: pb.TrialRequest, job_id: str,
             attempt: int) -> tuple[TrialOutcome, float]:
        """Runs the request once its cores are free; (outcome, seconds it waited since
        the coordinator sent it, for a runner and for cores)."""
        hold = (self.cores.hold(request.cores, self.stopping) if self.cores is not None
                else contextlib.nullcontext(0.0))
        try:
            with hold:
                return self._run_now(request, job_id, attempt)
        except PoolStopping:
            raise _Interrupted() from None

    def _run_now(self, request: pb.TrialRequest, job_id: str,
                 attempt: int) -> tuple[TrialOutcome, float]:
        spec = spec_of(request)
        queued = 0.0
        if request.HasField("time"):
            sent = request.time.seconds + request.time.nanos / 1e9
            queued = min(max(0.0, self.wall_clock() - sent), 1e9)
        if not spec.must_finish:
            left = spec.max_seconds - queued
            if left <= 0:
                return (_failed(spec, f"stopped: it waited {queued:.1f} s for a worker, past "
                                      f"its {spec.max_seconds:.1f} s"), queued)
            spec = dataclasses.replace(spec, max_seconds=left)

        def should_stop() -> bool:
            job = self.records.get(job_id, max_age=CANCEL_CHECK_SECONDS)
            return skip_reason(job, attempt) is not None

        started = self.clock()
        outcome = self.evaluate(job_id, attempt, spec, should_stop)
        self.trials_run += 1
        log.debug("trial %d/%d of job %s (%s): queued %.2f s, ran %.2f s (fit %.2f s) of %.2f "
                  "s: %s", spec.key, spec.rung, job_id, spec.family, queued,
                  self.clock() - started, outcome.fit_seconds, spec.max_seconds,
                  outcome.error or "ok")
        return outcome, queued

    def evaluate(self, job_id: str, attempt: int, spec: TrialSpec,
                 should_stop: Callable[[], bool]) -> TrialOutcome:
        """The one place a trial runs: in a child process when isolated, else here."""
        if self.isolated is not None:
            source = DataSource(*self.store_uris, job_id, attempt)
            return self.isolated.evaluate((job_id, attempt), source, spec, should_stop)
        try:
            data = self.cache.get_or_build((job_id, attempt),
                                           functools.partial(self._prepare, job_id, attempt))
        except Unavailable:
            raise
        except Exception as error:  # noqa: BLE001 - the data set is gone, or unreadable
            return _failed(spec, f"the worker could not prepare the data: {error_text(error)}")
        # BLAS / OpenMP pools as the coordinator sizes them (process-wide, as there).
        with threadpool_limits(limits=data.ctx.n_jobs):
            return data.evaluate(spec, should_stop)

    def _prepare(self, job_id: str, attempt: int) -> TrialData:
        job = self.records.get(job_id)
        why = skip_reason(job, attempt)
        if why is not None:
            raise NotFound(why)
        return prepare_trials(search_request(job, self.datasets))

    def _publish(self, request: pb.TrialRequest, outcome: TrialOutcome, queued: float) -> None:
        job_id = job_id_of(request.training_job)
        oof_blob = ""
        if outcome.oof is not None:
            oof_blob = oof_key(request.user_id, job_id, request.attempt, request.key)
            self.blobs.put(oof_blob, encode_array(outcome.oof))
        message = pb.TrialOutcome(
            training_job=job_name(job_id), user_id=request.user_id, attempt=request.attempt,
            key=request.key, rung=request.rung, scores=outcome.scores,
            fit_seconds=outcome.fit_seconds, error=outcome.error or "",
            worker=self.worker_name, oof_blob=oof_blob, queued_seconds=queued,
            temperature=outcome.temperature)
        self.bus.publish(TRIAL_OUTCOMES_TOPIC, job_id, message.SerializeToString())


def _failed(spec: TrialSpec, error: str) -> TrialOutcome:
    return TrialOutcome(spec.key, spec.rung, spec.family, dict(spec.params), [], 0.0,
                        error=error)
