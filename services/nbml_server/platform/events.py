"""Job events on the bus, as nbml.v1.JobEvent protobuf messages keyed by job id."""

import time

from nbml.v1 import events_pb2 as pb
from nbml_server.platform.convert import timestamp
from nbml_server.ports.event_bus import TRAINING_JOBS_TOPIC, EventBus


class JobEventPublisher:
    def __init__(self, bus: EventBus):
        self.bus = bus

    def _publish(self, job: dict, **kind) -> None:
        event = pb.JobEvent(training_job=f"trainingJobs/{job['job_id']}", user_id=job["user_id"],
                            attempt=job.get("attempt", 0), time=timestamp(time.time()), **kind)
        self.bus.publish(TRAINING_JOBS_TOPIC, job["job_id"], event.SerializeToString())

    def requested(self, job: dict) -> None:
        self._publish(job, requested=pb.JobRequested())

    def cancelled(self, job: dict) -> None:
        self._publish(job, cancelled=pb.JobCancelled())

    def progressed(self, job: dict) -> None:
        progress = job["progress"]
        self._publish(job, progressed=pb.JobProgressed(
            trials_completed=progress["trials_completed"], best_score=progress["best_score"],
            stage=progress["stage"]))

    def trial_completed(self, job: dict, trial: dict) -> None:
        self._publish(job, trial_completed=pb.TrialCompleted(
            number=trial["number"], family=trial["family"], cv_score=trial["cv_score"] or 0.0))

    def completed(self, job: dict, model_ids: list[str]) -> None:
        self._publish(job, completed=pb.JobCompleted(models=[f"models/{m}" for m in model_ids]))

    def failed(self, job: dict) -> None:
        self._publish(job, failed=pb.JobFailed(error=job["error"]))


def decode(value: bytes) -> pb.JobEvent:
    return pb.JobEvent.FromString(value)
