"""The reason classes of ended jobs, as the metrics label them (a label's values must stay few), and the
counters and histograms kept as plain numbers, as prometheus-client's parser reads them."""

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from switchboard.api.activity import MINUTES, Activity
from switchboard.core.dispatch import DispatchSpec
from switchboard.core.engine import Engine, EngineSettings, RoomSpec
from switchboard.core.events import JobEnded
from switchboard.core.jobs import Job, JobStatus, JobType
from switchboard.core.workers import Worker, WorkerSpec, WorkerStatus
from switchboard.metrics import LATENCY_BUCKETS, Metrics, NodeIdentity, reason_class, worker_state
from switchboard.runtime import Runtime


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
        (
            JobStatus.FAILED,
            "worker AW_1's node ND_2 was lost (failed 2 times, gave up after 1 restarts)",
            "node_lost",
        ),
        (JobStatus.FAILED, "node lost: node ND_2, where the room was, stopped", "node_lost"),
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


def test_requests_are_exposed_as_prometheus_counters_and_histograms() -> None:
    metrics = Metrics(Runtime(Engine(EngineSettings())), NodeIdentity("ND_1", "http://127.0.0.1:7880", "0"))
    for seconds in (0.001, 0.0011, 0.004, 7.0):  # on a bound, between bounds, above them all
        metrics.twirp_request("RoomService.CreateRoom", "ok", seconds)
    metrics.twirp_request("RoomService.CreateRoom", "not_found", 0.002)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
        if family.name.startswith("switchboard_twirp")
    }
    method = (("method", "RoomService.CreateRoom"),)
    assert samples[("switchboard_twirp_requests_total", (("code", "ok"), *method))] == 4
    assert samples[("switchboard_twirp_requests_total", (("code", "not_found"), *method))] == 1
    buckets = {
        labels[0][1]: value
        for (name, labels), value in samples.items()
        if name == "switchboard_twirp_request_seconds_bucket"
    }
    assert list(buckets) == [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
    assert (buckets["0.001"], buckets["0.0025"], buckets["0.005"], buckets["5.0"], buckets["+Inf"]) == (
        1,
        3,
        4,
        4,
        5,
    )
    assert samples[("switchboard_twirp_request_seconds_count", method)] == 5
    assert samples[("switchboard_twirp_request_seconds_sum", method)] == pytest.approx(7.0081)


def test_jobs_a_handed_over_room_stopped_are_not_counted_as_ended() -> None:
    """Its node lost its lease: the room and its jobs go on elsewhere (docs/cluster.md, Observability)."""
    runtime = Runtime(Engine(EngineSettings()), lambda: 5.0)
    metrics = Metrics(runtime, NodeIdentity("ND_1", "http://127.0.0.1:7880", "0"))
    activity = Activity(lambda: 5.0)
    runtime.effects.on(JobEnded, metrics.ended)
    runtime.effects.on(JobEnded, activity.ended)
    runtime.call(lambda engine: engine.create_room(RoomSpec(name="r", agents=(DispatchSpec("a"),)), 1.0))
    runtime.call(lambda engine: engine.hand_over_rooms("node lease lost", 2.0))
    assert dict(metrics.jobs_ended) == {}
    assert [minute["failures"] for minute in activity.last_hour()] == [0] * MINUTES
    runtime.call(lambda engine: engine.create_room(RoomSpec(name="s", agents=(DispatchSpec("a"),)), 3.0))
    runtime.call(lambda engine: engine.delete_room("s", 4.0))  # a room that really closes: counted
    assert dict(metrics.jobs_ended) == {("failed", "room_closed"): 1}
    assert sum(minute["failures"] for minute in activity.last_hour()) == 1
