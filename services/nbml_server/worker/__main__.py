"""`python -m nbml_server.worker`: consumes job events and runs the jobs, one at a time.

The offset is committed only after the job's outcome is recorded, so a worker that dies
mid-job leaves the event to be delivered again (at least once). An event whose handling
raises is moved to the dead-letter topic with the reason, and committed.

Beside the jobs, a thread runs trials for any job (`trial_runner`): the worker running
a job coordinates its search and fans its trials out to every worker's trial runner
over the bus (`trial_fanout`), its own included. The runner evaluates each trial in a
child process under the trial memory share (`isolation`). `NBML_TRIAL_FANOUT=false`
keeps each job's trials in the thread that runs the job.
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
from nbml_server.settings import Settings
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
    # A trial killed for overrunning answers so before its coordinator gives up on it.
    isolated = IsolatedEvaluator(settings.trial_memory_bytes,
                                 grace_seconds=LOST_TRIAL_GRACE_SECONDS / 2)
    try:
        # The trial process loads its libraries now (seconds), not in the first trial.
        isolated.start()
    except Exception:  # noqa: BLE001 - the first trial starts it again
        log.warning("the trial process did not start", exc_info=True)
    trial_runner = TrialRunner(platform.bus, platform.blobs, jobs, datasets,
                               worker_name=worker_name, cache=cache, isolated=isolated,
                               store_uris=(settings.store_uri, settings.blobs_uri))
    trials = trial_runner.start(stopping)
    # Ready once the trial runner subscribed (and its trial process started), so the
    # first job's trials find it (the coordinator runs trials itself while the runners'
    # group has no member).
    if not trial_runner.subscribed.wait(TRIAL_RUNNER_START_SECONDS):
        log.warning("the trial runner has not subscribed yet (is the bus down?)")
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
        isolated.close()  # a running trial stops; its request goes to another runner
        trials.join(TRIAL_RUNNER_STOP_SECONDS)
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
