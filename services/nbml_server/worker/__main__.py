"""`python -m nbml_server.worker`: consumes job events and runs the jobs, one at a time.

The offset is committed only after the job's outcome is recorded, so a worker that dies
mid-job leaves the event to be delivered again (at least once). An event whose handling
raises is moved to the dead-letter topic with the reason, and committed.
"""

import base64
import json
import logging
import os
import socket
import threading

from nbml_server.domain.dataset_catalog import DatasetCatalog
from nbml_server.domain.jobs import Jobs
from nbml_server.errors import Unavailable
from nbml_server.domain.model_registry import ModelRegistry
from nbml_server.platform.events import JobEventPublisher, decode
from nbml_server.platform.server import configure_logging, open_platform, stop_on_signals
from nbml_server.ports.event_bus import DEAD_LETTER_TOPIC, TRAINING_JOBS_TOPIC
from nbml_server.settings import Settings
from nbml_server.worker.runner import JobRunner

log = logging.getLogger("nbml.worker")
CONSUMER_GROUP = "trainer-workers"
RETRY_SECONDS = 2.0


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    platform = open_platform(settings)
    events = JobEventPublisher(platform.bus)
    runner = JobRunner(Jobs(platform.store), DatasetCatalog(platform.store, platform.blobs),
                       ModelRegistry(platform.store, platform.blobs), events,
                       worker_name=f"{socket.gethostname()}:{os.getpid()}")
    stopping = threading.Event()
    stop_on_signals(stopping.set)
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
