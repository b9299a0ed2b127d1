"""The job state machine: every allowed transition, and every forbidden one refused."""

import pytest

from switchboard.core.jobs import ENDED, Attempt, InvalidTransition, Job, JobStatus, JobType


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
    job.requeue("worker AW_1 disconnected", 30.0, 32.0, copy_may_live=True)
    assert job.status is JobStatus.PENDING
    assert (job.worker_id, job.agent_identity, job.started_at) == ("", "", None)
    assert job.retry_at == job.pending_since == 32.0  # its deadline counts once it may be offered
    assert job.restarts == 1 and job.attempt == 2 and job.tried_workers == set()
    assert job.error == ""  # the new attempt has none; the first one's reason is kept with it
    assert job.attempts == [
        Attempt(1, "AW_1", "agent-AJ_1", 12.0, 30.0, "worker AW_1 disconnected", copy_may_live=True)
    ]
    assert job.revivable


def test_revive_takes_the_previous_attempt_back() -> None:
    job = new_job()
    job.offer("AW_1", 11.0)
    job.assign("agent-AJ_1", 11.5)
    job.requeue("worker AW_1 did not start the job within 10s", 21.5, 22.5, copy_may_live=True)
    job.offer("AW_2", 22.5)
    job.revive("AW_1", 23.0)
    assert (job.status, job.worker_id, job.attempt, job.attempts) == (JobStatus.RUNNING, "AW_1", 1, [])
    assert (job.agent_identity, job.started_at, job.retry_at) == ("agent-AJ_1", 23.0, None)


def test_a_copy_known_to_have_ended_cannot_be_revived() -> None:
    job = new_job()
    job.offer("AW_1", 11.0)
    job.assign("agent-AJ_1", 11.5)
    job.requeue("job failed on worker AW_1", 12.0, None, copy_may_live=False)
    assert not job.revivable
    with pytest.raises(InvalidTransition):
        job.revive("AW_1", 13.0)


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
        "requeue": lambda: job.requeue("r", 1.0, None, copy_may_live=False),
    }
    with pytest.raises(InvalidTransition):
        calls[action]()
    assert job.status is status
