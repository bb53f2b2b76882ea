"""The child process of `isolation.IsolatedEvaluator`: runs trials one at a time, under
a memory limit, and answers each with its `TrialOutcome`.

Only the standard library is imported at the top of this module: the thread-pool
sizes must be in the environment before numpy, OpenBLAS and OpenMP load (which
`trial_preload` does in the forkserver the children are forked from, or `main`
in a child forked from a server that did not preload it).

Messages on the connection (`send_bytes`; requests and replies are pickles):
    READY (child -> parent): sent once, when the child has started.
    request (parent -> child): (source_key, source or None, TrialSpec); b"": exit.
    reply (child -> parent): (TrialOutcome or None, error text or None, whether the
        error is an allocation the memory limit refused, the cached source keys).
        No outcome (only an error) when the trial could not start: the child failed
        to start, the request did not unpickle or the source failed.
"""

from __future__ import annotations

import collections
import os
import pickle
import resource
import signal
import sys
import warnings

CACHED_SOURCES = 2  # TrialData kept: the current job's, and the one before
# At most this many threads per trial, as learners.N_JOBS (numpy is not loaded
# here to read it; a test checks they agree).
THREADS = 2
READY = b"ready"  # sent once, when the child has started (the libraries loaded or not)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# How an allocation refused by the limit surfaces in a trial's error text, besides
# MemoryError and its subclasses (numpy's _ArrayMemoryError).
MEMORY_MARKERS = ("bad_alloc", "Cannot allocate memory", "Unable to allocate",
                  "can't start new thread")


def set_environment() -> None:
    """Before numpy loads: thread pools no larger than a trial may use (threadpoolctl
    lowers them per trial), and pyarrow on malloc: its default mimalloc pool reserves
    1 GiB of writable address space up front, all of which RLIMIT_DATA would count.
    Settings the operator made in the environment stand."""
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(THREADS))
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def limit_memory(memory_bytes: int) -> None:
    """RLIMIT_DATA, not RLIMIT_AS: since Linux 4.7 it counts the private writable
    mappings (the heap, numpy's buffers, thread stacks), which is what a trial
    allocates. RLIMIT_AS also counts the shared libraries (~500 MiB with scikit-learn,
    LightGBM and XGBoost loaded) and the 64 MiB of address space glibc reserves for
    each thread's malloc arena (so ~1 GiB more for a 16-thread OpenMP fit) that never
    becomes memory; a limit that fits every machine would be no limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        memory_bytes = min(memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, hard))


def is_memory_error(error: str | None) -> bool:
    if not error:
        return False
    name = error.split(":", 1)[0]
    return name in _memory_error_names() or any(m in error for m in MEMORY_MARKERS)


def _memory_error_names() -> set[str]:
    names, todo = set(), [MemoryError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


class _Trials:
    """The child's state: the TrialData of the last CACHED_SOURCES source keys."""

    def __init__(self, startup_error: str | None):
        self.startup_error = startup_error
        self.cache: collections.OrderedDict = collections.OrderedDict()

    def data(self, key, source):
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        if source is None:
            raise RuntimeError(f"no source for the trial data {key!r}")
        while len(self.cache) >= CACHED_SOURCES:  # before building: no three at once
            self.cache.popitem(last=False)
        data = self.cache[key] = source()
        return data

    def run(self, message: bytes) -> bytes:
        outcome = None
        if self.startup_error is not None:
            return pickle.dumps((None, f"the trial process could not start: {self.startup_error}",
                                 is_memory_error(self.startup_error), []))
        try:
            from threadpoolctl import threadpool_limits

            key, source, spec = pickle.loads(message)
            data = self.data(key, source)
            # BLAS and OpenMP pools follow n_jobs, as in run_search.
            with threadpool_limits(limits=data.ctx.n_jobs):
                outcome = data.evaluate(spec)
            error = outcome.error
        except Exception as exc:  # noqa: BLE001 - e.g. the source failed: a failed trial
            error = _error_text(exc)
        memory = is_memory_error(error)
        try:
            return pickle.dumps((outcome, error, memory, list(self.cache)),
                                protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            return pickle.dumps((None, "MemoryError: while sending the outcome", True,
                                 list(self.cache)))


def _error_text(exc: BaseException) -> str:
    # As trials.error_text, which may be what failed to import.
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:497] + "..."


def load_libraries() -> None:
    import threadpoolctl  # noqa: F401

    from nbml_server.domain.automl import trials  # noqa: F401


def main(conn, memory_bytes: int | None) -> None:
    # The parent decides when the child stops; Ctrl-C in a terminal reaches the
    # whole process group and must not kill a trial halfway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_environment()
    if memory_bytes:
        try:
            limit_memory(memory_bytes)
        except (ValueError, OSError) as exc:  # not Linux: trials run unlimited
            print(f"nbml trial process: no memory limit: {exc}", file=sys.stderr, flush=True)
    # Convergence and other warnings come by the hundred and nobody reads the
    # child's stderr; the outcome carries what matters.
    warnings.simplefilter("ignore")
    startup_error = None
    try:
        load_libraries()  # now, while idle, not in the first trial (no-op when preloaded)
    except BaseException as exc:  # noqa: BLE001 - answered to every request instead
        startup_error = _error_text(exc)
    state = _Trials(startup_error)
    conn.send_bytes(READY)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        if message == b"":
            return
        conn.send_bytes(state.run(message))
