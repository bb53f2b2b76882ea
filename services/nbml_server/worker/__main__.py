"""`python -m nbml_server.worker`: consumes job events and runs the jobs, one at a time.

The offset is committed only after the job's outcome is recorded, so a worker that dies
mid-job leaves the event to be delivered again (at least once). An event whose handling
raises is moved to the dead-letter topic with the reason, and committed.

Beside the jobs, threads run trials for any job (`trial_runner`): the worker running
a job coordinates its search and fans its trials out to every trial runner over the
bus (`trial_fanout`), its own included. A worker has `NBML_TRIAL_RUNNERS` of them (one
per core by default), sharing the machine's cores (`core_pool`). Each runner
evaluates its trials in a child process under the trial memory share (`isolation`).
`NBML_TRIAL_FANOUT=false` keeps each job's trials in the thread that runs the job.
"""

import base64
import json
import logging
import os
import socket
import threading

from nbml_server.domain.automl import quiet_warnings
from nbml_server.domain.automl.search import LOST_TRIAL_GRACE_SECONDS
from nbml_server.domain.dataset_catalog import DatasetCatalog
from nbml_server.domain.jobs import Jobs
from nbml_server.errors import Unavailable
from nbml_server.domain.model_registry import ModelRegistry
from nbml_server.platform.events import JobEventPublisher, decode
from nbml_server.platform.server import configure_logging, open_platform, stop_on_signals
from nbml_server.ports.event_bus import DEAD_LETTER_TOPIC, TRAINING_JOBS_TOPIC
from nbml_server.settings import Settings, machine_cores
from nbml_server.worker.core_pool import CorePool
from nbml_server.worker.isolation import IsolatedEvaluator
from nbml_server.worker.runner import JobRunner
from nbml_server.worker.trial_fanout import TrialDataCache, fanout_executor
from nbml_server.worker.trial_runner import TrialRunner

log = logging.getLogger("nbml.worker")
CONSUMER_GROUP = "trainer-workers"
RETRY_SECONDS = 2.0
TRIAL_RUNNER_START_SECONDS = 30.0
TRIAL_RUNNER_STOP_SECONDS = 10.0


def main() -> None:
    settings = Settings()
    os.nice(settings.worker_nice)
    configure_logging(settings.log_level)
    platform = open_platform(settings)
    # Fitting many configurations warns by the hundred; this process does only that.
    # Set once, before any thread starts (warnings filters are process-wide).
    quiet_warnings()
    events = JobEventPublisher(platform.bus)
    worker_name = f"{socket.gethostname()}:{os.getpid()}"
    jobs, datasets = Jobs(platform.store), DatasetCatalog(platform.store, platform.blobs)
    cache = TrialDataCache()
    executor_for = None
    if settings.trial_fanout:
        def executor_for(job: dict):
            return fanout_executor(platform.bus, platform.blobs, job, cache=cache,
                                   worker_name=worker_name)
    runner = JobRunner(jobs, datasets, ModelRegistry(platform.store, platform.blobs), events,
                       worker_name=worker_name, executor_for=executor_for)
    stopping = threading.Event()
    stop_on_signals(stopping.set)
    # One trial runner per core by default, each with its own trial process, sharing
    # the machine's cores: trials on small data run side by side.
    cores = CorePool(machine_cores())
    evaluators, threads = [], []
    for index in range(settings.trial_runner_count):
        # A trial killed for overrunning answers so before its coordinator gives up on it.
        isolated = IsolatedEvaluator(settings.trial_memory_bytes,
                                     grace_seconds=LOST_TRIAL_GRACE_SECONDS / 2)
        evaluators.append(isolated)
        try:
            # The trial process loads its libraries now (seconds), not in the first trial.
            isolated.start()
        except Exception:  # noqa: BLE001 - the first trial starts it again
            log.warning("the trial process did not start", exc_info=True)
        trial_runner = TrialRunner(platform.bus, platform.blobs, jobs, datasets,
                                   worker_name=f"{worker_name}/{index + 1}", cache=cache,
                                   isolated=isolated, cores=cores,
                                   store_uris=(settings.store_uri, settings.blobs_uri))
        threads.append(trial_runner.start(stopping))
        # Ready once the trial runners subscribed (and their trial processes started),
        # so the first job's trials find them (the coordinator runs trials itself while
        # the runners' group has no member).
        if not trial_runner.subscribed.wait(TRIAL_RUNNER_START_SECONDS):
            log.warning("trial runner %d has not subscribed yet (is the bus down?)", index + 1)
    log.info("worker %s: %d trial runners on %d cores", worker_name, len(threads), cores.total)
    print("LISTENING worker bus", flush=True)
    try:
        while not stopping.is_set():
            try:
                consume(runner, platform.bus, stopping)
            except Unavailable as error:
                # Kafka or the store is down: nothing was committed, so subscribing
                # again later gets the same event back.
                log.warning("backend unavailable (%s); retrying in %s s", error.message,
                            RETRY_SECONDS)
                stopping.wait(RETRY_SECONDS)
    finally:
        for isolated in evaluators:
            isolated.close()  # a running trial stops; its request goes to another runner
        for thread in threads:
            thread.join(TRIAL_RUNNER_STOP_SECONDS)
        platform.close()


def consume(runner: JobRunner, bus, stopping: threading.Event) -> None:
    subscription = bus.subscribe(TRAINING_JOBS_TOPIC, CONSUMER_GROUP)
    try:
        while not stopping.is_set():
            for message in subscription.poll(timeout_seconds=0.5):
                handle(runner, bus, message)
                subscription.commit(message)
    finally:
        subscription.close()


def handle(runner: JobRunner, bus, message) -> None:
    event = decode(message.value)
    if event.WhichOneof("kind") != "requested":
        return  # progress and outcome events are for other consumers
    job_id = event.training_job.removeprefix("trainingJobs/")
    try:
        runner.run(job_id)
    except Unavailable:
        raise
    except Exception as error:
        log.exception("job %s: moving its event to the dead-letter topic", job_id)
        letter = {"reason": f"{type(error).__name__}: {error}", "topic": message.topic,
                  "event": base64.b64encode(message.value).decode("ascii")}
        bus.publish(DEAD_LETTER_TOPIC, message.key, json.dumps(letter).encode())


if __name__ == "__main__":
    main()
