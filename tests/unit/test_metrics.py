"""The reason classes of ended jobs, as the metrics label them (a label's values must stay few)."""

import pytest

from switchboard.core.jobs import Job, JobStatus, JobType
from switchboard.core.workers import Worker, WorkerSpec, WorkerStatus
from switchboard.metrics import reason_class, worker_state


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (JobStatus.SUCCEEDED, "", "completed"),
        (JobStatus.SUCCEEDED, "terminated: dispatch deleted", "dispatch_deleted"),
        (JobStatus.SUCCEEDED, "terminated: room closed (deleted by API request)", "room_closed"),
        (JobStatus.FAILED, "terminated: server shut down", "server_shutdown"),
        (JobStatus.FAILED, "no worker registered for agent 'a' within 60s", "no_worker"),
        (
            JobStatus.FAILED,
            "no worker took the job for agent 'a' within 60s: AW_1 declined it",
            "no_capacity",
        ),
        (JobStatus.FAILED, "not offered within 60s: the server is draining", "server_draining"),
        (
            JobStatus.FAILED,
            "job failed on worker AW_1: boom (failed 4 times, gave up after 3 restarts)",
            "worker_failed",
        ),
        (JobStatus.SUCCEEDED, "worker AW_1 declined the job and asked to end it", "worker_declined"),
        (JobStatus.FAILED, "worker AW_1 did not start the job within 30s", "start_timeout"),
        (JobStatus.FAILED, "worker AW_1 disconnected", "worker_lost"),
        (JobStatus.FAILED, "agent participant 'x' lost its connection", "agent_lost"),
        (JobStatus.SUCCEEDED, "agent participant 'x' left the room", "agent_left"),
        (JobStatus.SUCCEEDED, "the worker's own words", "other"),
    ],
)
def test_reason_classes(status: JobStatus, error: str, expected: str) -> None:
    job = Job(id="AJ_1", dispatch_id="AD_1", room="r", type=JobType.ROOM, agent_name="a", created_at=0.0)
    job.status, job.error = status, error
    assert reason_class(job) == expected


@pytest.mark.parametrize(
    ("status", "drained", "expected"),
    [
        (WorkerStatus.AVAILABLE, False, "available"),
        (WorkerStatus.FULL, False, "full"),
        (WorkerStatus.AVAILABLE, True, "draining"),
        (WorkerStatus.FULL, True, "draining"),
    ],
)
def test_worker_states(status: WorkerStatus, drained: bool, expected: str) -> None:
    worker = Worker(
        id="AW_1", spec=WorkerSpec(agent_name="a"), registered_at=0.0, status=status, drained=drained
    )
    assert worker_state(worker) == expected
