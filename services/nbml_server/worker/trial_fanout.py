"""Trials of one job fanned out over the event bus: the coordinator's side.

The worker running a job is its coordinator: `automl.run_search` asks Optuna for
configurations and hands them to a `BusTrialExecutor` (an `automl.trials`
TrialExecutor), which publishes each as an `nbml.v1.TrialRequest` on `TRIALS_TOPIC`.
Every worker process has a trial runner (`trial_runner.TrialRunner`) in consumer
group `TRIAL_RUNNERS_GROUP`; whichever gets the request runs it and publishes an
`nbml.v1.TrialOutcome` on `TRIAL_OUTCOMES_TOPIC` (key = job id), with the
out-of-fold predictions, when kept, in the blob store.

- Capacity: the coordinator keeps one trial out per trial runner, the number of
  members of the runners' group (`EventBus.group_members`, re-read every few
  seconds): a worker that joins gets work, one that dies stops getting it. A worker
  has a runner per core; when the job's models use n cores (larger data), one trial
  out per n runners.
- Lanes: each trial goes out on a lane (`EventBus.publish(lane=...)`), the least
  busy of lanes 0..capacity-1. The bus gives lanes 0..n-1 to n different members,
  so with one trial out per lane no trial waits behind another on one worker while
  another worker idles (head-of-line blocking), as it would when placed by key.
- Outcomes: the coordinator reads the outcomes topic in a consumer group of its own
  (one per job attempt, never committed) and keeps the outcomes of its own job and
  attempt whose (key, rung) it has out; duplicates (a trial run twice after a
  redelivery) and strays are dropped. The outcomes topic has a short retention, so
  a new group reads minutes of history, not all of it.
- No runner at all (the group has no members: a process without one, or the group
  still forming): the trial runs in the coordinator's thread instead, so a job
  always progresses.
- A runner killed mid-trial never answers; its request, uncommitted, goes to
  another runner (after the bus notices the death) and runs there if it is still
  in time; else the coordinator declares the trial lost ("lost: ...") after its
  max_seconds and a grace.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nbml.v1 import events_pb2 as pb
from nbml_server.domain.automl.search import LOST_TRIAL_GRACE_SECONDS, ExecutorFactory
from nbml_server.domain.automl.trials import (InlineExecutor, TrialData, TrialExecutor,
                                              TrialOutcome, TrialSpec)
from nbml_server.errors import Unavailable
from nbml_server.platform.convert import timestamp
from nbml_server.ports.blob_store import BlobNotFound, BlobStore
from nbml_server.ports.event_bus import TRIAL_OUTCOMES_TOPIC, TRIALS_TOPIC, EventBus

log = logging.getLogger("nbml.worker.fanout")

TRIAL_RUNNERS_GROUP = "trial-runners"
# How often the coordinator asks the bus how many trial runners there are.
CAPACITY_REFRESH_SECONDS = 2.0
MAX_CAPACITY = 64
OUTCOMES_PER_POLL = 100


# ----------------------------------------------------------------- messages

def job_name(job_id: str) -> str:
    return f"trainingJobs/{job_id}"


def job_id_of(name: str) -> str:
    return name.removeprefix("trainingJobs/")


def oof_folder(user_id: str, job_id: str, attempt: int) -> str:
    """Where the runners put a job attempt's out-of-fold predictions."""
    return f"users/{user_id}/jobs/{job_id}/trials/{attempt}/"


def oof_key(user_id: str, job_id: str, attempt: int, key: int) -> str:
    # A random part: a trial run twice (redelivered) writes two blobs, not one twice.
    return f"{oof_folder(user_id, job_id, attempt)}{key}-{secrets.token_hex(4)}.npy"


def encode_request(job: dict, spec: TrialSpec, cores: int = 1) -> bytes:
    return pb.TrialRequest(
        training_job=job_name(job["job_id"]), user_id=job["user_id"], attempt=job["attempt"],
        key=spec.key, family=spec.family, params_json=json.dumps(spec.params),
        rung=spec.rung, max_seconds=spec.max_seconds, must_finish=spec.must_finish,
        keep_oof=spec.keep_oof, time=timestamp(time.time()), cores=cores).SerializeToString()


def spec_of(request: pb.TrialRequest) -> TrialSpec:
    return TrialSpec(key=request.key, family=request.family,
                     params=json.loads(request.params_json or "{}"), rung=request.rung,
                     max_seconds=request.max_seconds, must_finish=request.must_finish,
                     keep_oof=request.keep_oof)


def encode_array(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# ----------------------------------------------------------------- shared trial data

class TrialDataCache:
    """The TrialData of the last few (job id, attempt)s, shared in one process by the
    coordinator (which registers its own) and the trial runner (which builds the
    others'), so a worker running trials of its own job does not prepare it twice."""

    def __init__(self, size: int = 2):
        self.size = size
        self._entries: OrderedDict[tuple[str, int], TrialData] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> TrialData | None:
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
            return data

    def put(self, key: tuple[str, int], data: TrialData) -> None:
        with self._lock:
            self._entries[key] = data
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def get_or_build(self, key: tuple[str, int], build: Callable[[], TrialData]) -> TrialData:
        data = self.get(key)
        if data is None:
            data = build()  # outside the lock: preparing takes a while
            self.put(key, data)
        return data

    def discard(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._entries.pop(key, None)


# ----------------------------------------------------------------- the executor

@dataclass
class _Out:
    spec: TrialSpec
    lane: int
    expires: float  # clock time after which the coordinator counts it lost


class BusTrialExecutor:
    """A `TrialExecutor` that runs one job attempt's trials on every worker's trial
    runner, over the bus. `job` is the job record (job_id, user_id, attempt,
    budget_seconds). With a `cache`, `data` is shared with this process's trial
    runner until `close`. `worker_name` names this process on the trials it runs
    itself (when there is no runner)."""

    def __init__(self, bus: EventBus, blobs: BlobStore, job: dict, data: TrialData,
                 should_stop: Callable[[], bool] | None = None, *,
                 cache: TrialDataCache | None = None, worker_name: str = "",
                 clock: Callable[[], float] = time.monotonic):
        self.bus = bus
        self.blobs = blobs
        self.job = {k: job[k] for k in ("job_id", "user_id", "attempt")}
        self.job_id, self.user_id, self.attempt = job["job_id"], job["user_id"], job["attempt"]
        self.budget = float(job.get("budget_seconds") or 0)
        self.data = data
        self.cache = cache
        self.worker_name = worker_name
        self.clock = clock
        self.inline = InlineExecutor(data, should_stop, clock)
        self.out: dict[tuple[int, int], _Out] = {}  # (key, rung) -> given out on the bus
        self._members = 0
        self._members_checked = -float("inf")
        self.trials_by_lane: dict[int, int] = {}  # for the log
        self.inline_trials = 0
        group = f"trial-outcomes.{self.job_id}.{self.attempt}.{uuid.uuid4().hex[:8]}"
        self.subscription = bus.subscribe(TRIAL_OUTCOMES_TOPIC, group)
        if cache is not None:
            cache.put((self.job_id, self.attempt), data)
        self._members_now()  # the first capacity, before the search reads it

    # -- capacity and lanes

    def _members_now(self) -> int:
        now = self.clock()
        if now - self._members_checked >= CAPACITY_REFRESH_SECONDS:
            self._members_checked = now
            try:
                self._members = self.bus.group_members(TRIAL_RUNNERS_GROUP, TRIALS_TOPIC)
            except Unavailable as error:
                log.warning("job %s: cannot count the trial runners (%s); keeping %d",
                            self.job_id, error.message, self._members)
        return self._members

    @property
    def capacity(self) -> int:
        # A trial whose models use n cores keeps n runners' share of cores busy (a
        # worker's runners share its cores, one per core): more out would only queue.
        runners = self._members_now() // max(1, self.data.ctx.n_jobs)
        return max(1, min(MAX_CAPACITY, runners))

    def _lane(self) -> int:
        """The least busy lane of 0..capacity-1 (trials counted lost are not busy)."""
        now = self.clock()
        busy: dict[int, int] = {}
        for out in self.out.values():
            if out.expires > now:
                busy[out.lane] = busy.get(out.lane, 0) + 1
        return min(range(self.capacity), key=lambda lane: (busy.get(lane, 0), lane))

    # -- the TrialExecutor protocol

    def submit(self, spec: TrialSpec) -> None:
        if self._members_now() == 0:
            self.inline_trials += 1
            self.inline.submit(spec)
            return
        lane = self._lane()
        now = self.clock()
        grace = LOST_TRIAL_GRACE_SECONDS + (self.budget if spec.must_finish else 0.0)
        self.out[(spec.key, spec.rung)] = _Out(spec, lane, now + spec.max_seconds + grace)
        self.trials_by_lane[lane] = self.trials_by_lane.get(lane, 0) + 1
        self.bus.publish(TRIALS_TOPIC, f"{self.job_id}:{spec.key}",
                         encode_request(self.job, spec, self.data.ctx.n_jobs), lane=lane)

    def collect(self, timeout_seconds: float) -> list[TrialOutcome]:
        outcomes = self.inline.collect(0.0) if self.inline.pending else []
        for outcome in outcomes:
            outcome.worker = self.worker_name
        if not self.out:
            return outcomes
        deadline = self.clock() + (0.0 if outcomes else max(0.0, timeout_seconds))
        while True:
            remaining = max(0.0, deadline - self.clock())
            for message in self.subscription.poll(remaining, max_messages=OUTCOMES_PER_POLL):
                outcome = self._accept(message.value)
                if outcome is not None:
                    outcomes.append(outcome)
            if outcomes or self.clock() >= deadline:
                return outcomes

    def close(self) -> None:
        log.info("job %s attempt %d: trials by lane %s, %d run here for want of runners",
                 self.job_id, self.attempt, dict(sorted(self.trials_by_lane.items())),
                 self.inline_trials)
        self.inline.close()
        if self.cache is not None:
            self.cache.discard((self.job_id, self.attempt))
        try:
            self.subscription.close()
        finally:
            self.out.clear()
            try:
                # Blobs of outcomes never read (a trial run twice, a lost trial's late
                # answer); a runner still busy with this attempt may add one later.
                self.blobs.delete_prefix(oof_folder(self.user_id, self.job_id, self.attempt))
            except Exception:  # noqa: BLE001 - litter, not a failure of the job
                log.warning("job %s: could not delete its trials' blobs", self.job_id,
                            exc_info=True)

    # -- outcomes

    def _accept(self, value: bytes) -> TrialOutcome | None:
        """The search's TrialOutcome for an outcome message of this attempt that
        answers a trial still out; None for anything else."""
        try:
            message = pb.TrialOutcome.FromString(value)
        except Exception:  # noqa: BLE001 - not ours to handle
            log.warning("job %s: an undecodable trial outcome was skipped", self.job_id)
            return None
        if (job_id_of(message.training_job) != self.job_id
                or message.attempt != self.attempt):
            return None
        out = self.out.pop((message.key, message.rung), None)
        if out is None:
            self._delete(message.oof_blob)  # answered already, or never asked
            return None
        spec = out.spec
        return TrialOutcome(key=spec.key, rung=spec.rung, family=spec.family,
                            params=dict(spec.params), scores=list(message.scores),
                            fit_seconds=message.fit_seconds, error=message.error or None,
                            oof=self._load_oof(message.oof_blob), worker=message.worker,
                            temperature=message.temperature or 1.0)

    def _load_oof(self, key: str) -> np.ndarray | None:
        if not key:
            return None
        try:
            oof = decode_array(self.blobs.get(key))
        except BlobNotFound:
            log.warning("job %s: out-of-fold predictions %s are missing", self.job_id, key)
            return None
        except ValueError:
            log.warning("job %s: out-of-fold predictions %s are unreadable", self.job_id, key)
            oof = None
        self._delete(key)
        if oof is not None and oof.shape != self.data.oof_shape():
            log.warning("job %s: out-of-fold predictions %s have shape %s, expected %s",
                        self.job_id, key, oof.shape, self.data.oof_shape())
            return None
        return oof

    def _delete(self, key: str) -> None:
        if key:
            try:
                self.blobs.delete(key)
            except Exception:  # noqa: BLE001 - the folder goes at close anyway
                log.warning("job %s: could not delete %s", self.job_id, key, exc_info=True)


def fanout_executor(bus: EventBus, blobs: BlobStore, job: dict, *,
                    cache: TrialDataCache | None = None,
                    worker_name: str = "") -> ExecutorFactory:
    """The `executor=` factory `automl.run_search` takes, for this job attempt."""
    def make(data: TrialData, should_stop: Callable[[], bool]) -> TrialExecutor:
        return BusTrialExecutor(bus, blobs, job, data, should_stop, cache=cache,
                                worker_name=worker_name)
    return make
