"""Trials in a child process, so that one trial cannot take the worker down (issue 4):
a trial that exceeds its memory or time share, or crashes, is stopped and recorded
as failed, and the job goes on; a cancelled search stops its running trial within
POLL_SECONDS.

`IsolatedEvaluator` keeps one child process and runs `TrialData.evaluate(spec)`
there, one trial at a time. The child builds the TrialData itself, by calling
`source()`, and keeps the last two (by `source_key`): a job's data is prepared once
per child, not once per trial. It runs under RLIMIT_DATA = the memory share (see
`trial_child.limit_memory` for why not RLIMIT_AS); the parent kills it when the
trial runs past its time share or the search is cancelled, and a fresh child runs
the next trial.

Children come from multiprocessing's forkserver, not from a fork of the worker
(whose gRPC, Kafka and OpenMP threads a forked copy would inherit in a broken
state): a clean single-threaded process that loaded the trial libraries once
(`trial_preload`), so a fresh child costs a fork (tens of milliseconds), not the
seconds the imports take. There is one forkserver per process; when something else
started it first, without our preload, children load the libraries themselves
(slower, still correct).

`ProcessExecutor` is the `trials.TrialExecutor` for one worker running a search's
trials one after the other through an IsolatedEvaluator.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable, Hashable
from multiprocessing.connection import wait

from nbml_server.domain.automl.trials import TrialData, TrialOutcome, TrialSpec, error_text
from nbml_server.worker import trial_child

log = logging.getLogger("nbml.worker")

MIB = 2**20
PRELOAD = "nbml_server.worker.trial_preload"
POLL_SECONDS = 0.1  # how often a running trial's cancellation and time are checked
CANCELLED = "stopped: the search was cancelled"
SHUTTING_DOWN = "stopped: the trial process is shutting down"
# A child that dies of these while a memory limit is set was, most likely, refused
# an allocation inside native code (abort, or a library that exits, e.g. libgomp
# failing to start a thread) or killed by the kernel's out-of-memory killer.
MEMORY_SIGNALS = frozenset({signal.SIGKILL, signal.SIGABRT, signal.SIGBUS})

Source = Callable[[], TrialData]


def memory_message(memory_bytes: int) -> str:
    return f"exceeded its memory share ({memory_bytes // MIB} MiB)"


def time_message(seconds: float) -> str:
    return f"exceeded its time share ({round(seconds, 1):g} s)"


def exit_description(exitcode: int | None) -> str:
    """How a child ended, from its exit code (negative: the signal)."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def death_message(exitcode: int | None, memory_bytes: int | None) -> str:
    """Why the child died under a trial."""
    how = exit_description(exitcode)
    memory_like = exitcode is not None and (exitcode > 0 or -exitcode in MEMORY_SIGNALS)
    if memory_bytes and memory_like:
        return f"{memory_message(memory_bytes)}: its process {how}"
    return f"the trial's process {how}"


def failed(spec: TrialSpec, error: str, seconds: float = 0.0) -> TrialOutcome:
    return TrialOutcome(spec.key, spec.rung, spec.family, dict(spec.params), [], seconds,
                        error=error)


class IsolatedEvaluator:
    """Runs trial specs in a persistent child process, one at a time.

    memory_bytes: the child's memory share (RLIMIT_DATA; it includes the ~300 MiB
    the libraries take); None or 0: unlimited. grace_seconds: how long past
    `spec.max_seconds` a trial may run before it is killed (the trial itself stops
    between folds at max_seconds; the grace covers a fold that overruns).

    `evaluate` never raises for what a trial does: running out of memory, time or
    crashing give an outcome whose error says so. It raises for the caller's own
    mistakes (an unpicklable source) and what `should_stop` raises; the child is
    then stopped. `close` may be called from another thread: a running trial ends
    within POLL_SECONDS.
    """

    def __init__(self, memory_bytes: int | None, grace_seconds: float = 2.0):
        self.memory_bytes = memory_bytes or None
        self.grace_seconds = grace_seconds
        self._context = multiprocessing.get_context("forkserver")
        self._process = None
        self._conn = None
        self._keys: list = []  # source keys the child has cached, as it last said
        self._ready = False  # the child said it started
        self._lock = threading.Lock()  # one trial at a time
        self._closing = threading.Event()
        self.starts = 0  # child processes started, for tests and reports

    # -- the child

    def start(self) -> None:
        """Starts the child now rather than with the first trial. The first start
        in a process waits for the forkserver to load the libraries (seconds): call
        it when the worker starts, so the first trial's cancellation is not held up
        by it. Idempotent."""
        with self._lock:
            self._ensure_child()

    def _ensure_child(self) -> None:
        if self._closing.is_set():
            raise RuntimeError("the evaluator is closed")
        if self._process is not None and self._process.is_alive():
            return
        self._discard_child()
        # Ignored when the forkserver already runs.
        self._context.set_forkserver_preload([PRELOAD])
        parent, child = self._context.Pipe()
        process = self._context.Process(target=trial_child.main, name="nbml-trial",
                                        args=(child, self.memory_bytes), daemon=True)
        process.start()
        child.close()  # the child holds its end: EOF here when it dies
        self._process, self._conn, self._keys, self._ready = process, parent, [], False
        self.starts += 1

    def _discard_child(self) -> None:
        """Kills the child, if any, and forgets it."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        self._keys = []
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join()
            process.close()
        if conn is not None:
            conn.close()

    def _replace_child(self) -> None:
        """A fresh child, started now so it is ready for the next trial."""
        self._discard_child()
        if not self._closing.is_set():
            self._ensure_child()

    # -- trials

    def evaluate(self, source_key: Hashable, source: Source, spec: TrialSpec,
                 should_stop: Callable[[], bool] | None = None) -> TrialOutcome:
        """Runs `spec` on the TrialData that `source()` builds in the child (once
        per child and `source_key`; source must pickle, and small: it goes to the
        child with the first trial of each key). `should_stop()` is polled every
        POLL_SECONDS; when it turns true the trial is killed."""
        with self._lock:
            if should_stop is not None and should_stop():
                return failed(spec, CANCELLED)
            self._ensure_child()
            request = pickle.dumps((source_key, None if source_key in self._keys else source,
                                    spec), protocol=pickle.HIGHEST_PROTOCOL)
            started = time.monotonic()
            try:
                return self._run(request, spec, should_stop, started)
            except BaseException:
                self._discard_child()  # it may still be running this spec
                raise

    def _run(self, request: bytes, spec: TrialSpec, should_stop, started: float) -> TrialOutcome:
        try:
            self._conn.send_bytes(request)
        except OSError:  # the child died between trials
            return self._died(spec, started)
        limit = None if spec.must_finish else spec.max_seconds + self.grace_seconds
        while True:
            ready = wait([self._conn, self._process.sentinel], POLL_SECONDS)
            if self._conn in ready:
                try:
                    reply = self._conn.recv_bytes()
                except (EOFError, OSError):
                    return self._died(spec, started)
                if reply == trial_child.READY:
                    self._ready = True
                    continue
                return self._answer(reply, spec, started)
            if ready:
                return self._died(spec, started)
            if self._closing.is_set():
                return self._kill(spec, started, SHUTTING_DOWN)
            if should_stop is not None and should_stop():
                return self._kill(spec, started, CANCELLED)
            if limit is not None and time.monotonic() - started > limit:
                self._replace_child()
                return failed(spec, time_message(spec.max_seconds), time.monotonic() - started)

    def _answer(self, reply: bytes, spec: TrialSpec, started: float) -> TrialOutcome:
        outcome, error, memory, self._keys = pickle.loads(reply)
        if outcome is None:
            outcome = failed(spec, error, time.monotonic() - started)
        if memory:
            log.info("trial %s (%s) ran out of memory: %s", spec.key, spec.family, error)
            # A native library that was refused an allocation may be left broken.
            self._replace_child()
            if self.memory_bytes:
                outcome.error = memory_message(self.memory_bytes)
        return outcome

    def _kill(self, spec: TrialSpec, started: float, why: str) -> TrialOutcome:
        # Not restarted now: after a cancellation the next trial may be far off.
        self._discard_child()
        return failed(spec, why, time.monotonic() - started)

    def _died(self, spec: TrialSpec, started: float) -> TrialOutcome:
        self._process.join(timeout=5)
        exitcode = self._process.exitcode
        if self._ready:
            message = death_message(exitcode, self.memory_bytes)
        else:  # e.g. the parent's __main__ failed to import in the child
            message = f"the trial process could not start: it {exit_description(exitcode)}"
        log.warning("trial %s (%s): %s", spec.key, spec.family, message)
        self._replace_child()
        return failed(spec, message, time.monotonic() - started)

    def close(self) -> None:
        """Stops the child (a running trial ends with an error within
        POLL_SECONDS). The evaluator cannot be used afterwards."""
        self._closing.set()
        with self._lock:
            conn = self._conn
            if conn is not None and self._process.is_alive():
                try:
                    conn.send_bytes(b"")  # idle: it exits on its own
                except OSError:
                    pass
                self._process.join(timeout=1)
            self._discard_child()


class ProcessExecutor:
    """`trials.TrialExecutor` that runs the specs one after the other through an
    IsolatedEvaluator, on a background thread.

        evaluator = IsolatedEvaluator(settings.trial_memory_bytes)   # one per worker
        run_search(request, executor=lambda data, should_stop:
                   ProcessExecutor(evaluator, job_id, partial(prepare_trials, request)))

    `source` must build in the child the same TrialData the search has (the same
    request: preparation is deterministic). `close()` kills a running trial: the
    search closes its executor when it ends or is cancelled. The evaluator belongs
    to the caller and stays open, with the job's data cached in its child.
    """

    capacity = 1

    def __init__(self, evaluator: IsolatedEvaluator, source_key: Hashable, source: Source):
        self.evaluator = evaluator
        self.source_key = source_key
        self.source = source
        self._specs: queue.SimpleQueue[TrialSpec | None] = queue.SimpleQueue()
        self._done: list[TrialOutcome] = []
        self._finished = threading.Condition()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, spec: TrialSpec) -> None:
        if self._closed.is_set():
            raise RuntimeError("the executor is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="nbml-trials", daemon=True)
            self._thread.start()
        self._specs.put(spec)

    def collect(self, timeout_seconds: float) -> list[TrialOutcome]:
        with self._finished:
            if not self._done:
                self._finished.wait(timeout_seconds)
            done, self._done = self._done, []
        return done

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._specs.put(None)
            self._thread.join()

    def _work(self) -> None:
        while (spec := self._specs.get()) is not None:
            try:
                outcome = self.evaluator.evaluate(self.source_key, self.source, spec,
                                                  self._closed.is_set)
            except Exception as exc:  # noqa: BLE001 - the search must hear of every spec
                log.exception("trial %s (%s) could not run", spec.key, spec.family)
                outcome = failed(spec, error_text(exc))
            with self._finished:
                self._done.append(outcome)
                self._finished.notify_all()
