"""The job state machine: every allowed transition, and every forbidden one refused."""

import pytest

from switchboard.core.jobs import ENDED, InvalidTransition, Job, JobStatus, JobType


def new_job() -> Job:
    return Job(id="AJ_1", dispatch_id="AD_1", room="r", type=JobType.ROOM, agent_name="a", created_at=10.0)


def test_happy_path_records_times_worker_and_identity() -> None:
    job = new_job()
    assert job.status is JobStatus.PENDING and job.pending_since == 10.0
    job.offer("AW_1", 11.0)
    assert job.status is JobStatus.OFFERED and job.worker_id == "AW_1" and job.tried_workers == {"AW_1"}
    job.assign("agent-AJ_1", 12.0)
    assert job.status is JobStatus.ASSIGNED and job.agent_identity == "agent-AJ_1"
    job.start(13.0)
    assert job.status is JobStatus.RUNNING and job.started_at == 13.0
    job.end(True, "", 20.0)
    assert job.status is JobStatus.SUCCEEDED and job.ended and job.ended_at == 20.0 and job.updated_at == 20.0


def test_reject_returns_to_pending_keeping_deadline_and_tried_set() -> None:
    job = new_job()
    job.offer("AW_1", 11.0)
    job.reject(12.0)
    assert job.status is JobStatus.PENDING and job.worker_id == "" and job.pending_since == 10.0
    assert job.tried_workers == {"AW_1"}


def test_requeue_starts_a_new_attempt() -> None:
    job = new_job()
    job.offer("AW_1", 11.0)
    job.assign("agent-AJ_1", 11.5)
    job.start(12.0)
    job.requeue("worker AW_1 disconnected", 30.0)
    assert job.status is JobStatus.PENDING
    assert (job.worker_id, job.agent_identity, job.started_at) == ("", "", None)
    assert job.pending_since == 30.0 and job.restarts == 1 and job.tried_workers == set()
    assert job.error == "worker AW_1 disconnected"


@pytest.mark.parametrize("status", list(JobStatus))
def test_end_is_allowed_from_every_live_state_and_never_twice(status: JobStatus) -> None:
    job = new_job()
    job.status = status
    if status in ENDED:
        with pytest.raises(InvalidTransition):
            job.end(False, "again", 50.0)
    else:
        job.end(False, "because", 50.0)
        assert job.status is JobStatus.FAILED and job.error == "because"


FORBIDDEN = [
    ("offer", JobStatus.OFFERED),
    ("offer", JobStatus.RUNNING),
    ("assign", JobStatus.PENDING),
    ("assign", JobStatus.RUNNING),
    ("start", JobStatus.PENDING),
    ("start", JobStatus.OFFERED),
    ("reject", JobStatus.ASSIGNED),
    ("requeue", JobStatus.PENDING),
    ("requeue", JobStatus.SUCCEEDED),
]


@pytest.mark.parametrize(("action", "status"), FORBIDDEN)
def test_forbidden_transitions_raise(action: str, status: JobStatus) -> None:
    job = new_job()
    job.status = status
    calls = {
        "offer": lambda: job.offer("AW_2", 1.0),
        "assign": lambda: job.assign("x", 1.0),
        "start": lambda: job.start(1.0),
        "reject": lambda: job.reject(1.0),
        "requeue": lambda: job.requeue("r", 1.0),
    }
    with pytest.raises(InvalidTransition):
        calls[action]()
    assert job.status is status
