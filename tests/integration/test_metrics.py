"""Prometheus metrics of a real server, scraped and parsed with prometheus-client's parser before, during and
after a scenario driven by the Python server SDK, an rtc participant publishing a tone and a protocol-level
worker: the counters move by exactly what happened, the gauges say what is there now."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from livekit import api, rtc
from livekit.protocol import agent
from prometheus_client.parser import text_string_to_metric_families

from tests.agent_workers import eventually
from tests.conftest import Server, free_port, start_server, stop_server
from tests.protocol_worker import answer, job_update, worker_running_a_new_rooms_job
from tests.tone import publish_tone

Sample = tuple[str, tuple[tuple[str, str], ...]]


@pytest.fixture
def metrics_server(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    port = free_port()
    config = {"prometheus_port": port, "agents": {"pending_timeout": 1.0, "restart_backoff": 0.1}}
    instance = start_server(tmp_path / "server", config)
    yield instance, f"http://127.0.0.1:{port}/metrics"
    stop_server(instance)


async def scrape(url: str) -> dict[Sample, float]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("switchboard_") or family.name.startswith(("python_", "process_")), (
            family
        )
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: dict[Sample, float], after: dict[Sample, float]) -> dict[Sample, float]:
    """The counters (and histogram counts) that changed, by how much."""
    changed = {}
    for key, new in after.items():
        name = key[0]
        if name.endswith(("_total", "_count")) and new != before.get(key, 0.0):
            changed[key] = new - before.get(key, 0.0)
    return changed


async def test_counters_move_by_exactly_what_happened(metrics_server: tuple[Server, str]) -> None:
    server, url = metrics_server
    room = f"metrics-{uuid.uuid4().hex[:8]}"
    before = await scrape(url)
    assert value(before, "switchboard_rooms") == 0 and value(before, "switchboard_jobs_pending") == 0

    async with (
        aiohttp.ClientSession() as session,
        api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lk,
    ):
        worker, job_id = await worker_running_a_new_rooms_job(session, server, lk, room, "runner")
        await eventually(
            lambda: scrape_value(url, "switchboard_jobs", status="running"), "the job running", 10.0
        )

        # Its worker reports its load; a participant publishes a track.
        status = agent.UpdateWorkerStatus(status=agent.WS_AVAILABLE, load=0.25, job_count=1)
        await worker.send(agent.WorkerMessage(update_worker=status))
        alice = rtc.Room()
        await alice.connect(server.ws_url, server.join_token(room, "alice"))
        _, tone = await publish_tone(alice)
        await eventually(lambda: scrape_value(url, "switchboard_tracks"), "alice's track counted", 10.0)

        # A dispatch nobody serves waits (pending), then fails for want of a worker.
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="nobody", room=room)
        )
        during = await scrape(url)
        assert value(during, "switchboard_rooms") == 1
        assert value(during, "switchboard_participants", kind="standard") == 1
        assert value(during, "switchboard_workers", agent_name="runner", status="available") == 1
        assert value(during, "switchboard_jobs_pending") == 1
        assert value(during, "switchboard_jobs", status="running") == 1
        assert value(during, "switchboard_tracks") == 1
        assert value(during, "switchboard_worker_load", agent_name="runner") == 0.25

        async def nobody_failed() -> bool:
            return (await scrape_value(url, "switchboard_jobs_pending")) == 0

        await eventually(nobody_failed, "the unserved job to fail", 10.0)

        # The running job fails on its worker: it is dispatched again (restart policy), then succeeds.
        await worker.send(job_update(job_id, agent.JS_FAILED, "boom"))
        again = await worker.expect("availability")
        assert again.job.id == job_id and again.resuming
        await worker.send(answer(job_id, identity="runner-agent"))
        await worker.expect("assignment")
        await worker.send(job_update(job_id, agent.JS_RUNNING))
        await worker.send(job_update(job_id, agent.JS_SUCCESS))

        async def succeeded() -> bool:
            samples = await scrape(url)
            return value(samples, "switchboard_jobs_ended_total", status="succeeded", reason="completed") == 1

        await eventually(succeeded, "the job to succeed", 10.0)
        tone.cancel()
        await alice.disconnect()
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        with pytest.raises(api.TwirpError):
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        await worker.ws.close()

        async def settled() -> bool:
            samples = await scrape(url)
            return value(samples, "switchboard_rooms") == 0 and not [
                k for k in samples if k[0] == "switchboard_workers"
            ]

        await eventually(settled, "the room closed and the worker gone", 10.0)

    after = await scrape(url)
    changes = moved(before, after)
    twirp = {key: n for key, n in changes.items() if key[0].startswith("switchboard_twirp")}
    jobs = {key: n for key, n in changes.items() if not key[0].startswith("switchboard_twirp")}
    assert jobs == {
        ("switchboard_dispatches_created_total", ()): 2,
        ("switchboard_jobs_ended_total", (("reason", "no_worker"), ("status", "failed"))): 1,
        ("switchboard_jobs_ended_total", (("reason", "completed"), ("status", "succeeded"))): 1,
        ("switchboard_job_redispatches_total", ()): 1,
        ("switchboard_job_assignment_seconds_count", ()): 1,
        ("switchboard_job_running_seconds_count", ()): 1,
    }
    requests = {key: n for key, n in twirp.items() if key[0] == "switchboard_twirp_requests_total"}
    assert requests == {
        ("switchboard_twirp_requests_total", (("code", "ok"), ("method", "RoomService.CreateRoom"))): 1,
        (
            "switchboard_twirp_requests_total",
            (("code", "ok"), ("method", "AgentDispatchService.CreateDispatch")),
        ): 1,
        ("switchboard_twirp_requests_total", (("code", "ok"), ("method", "RoomService.DeleteRoom"))): 1,
        (
            "switchboard_twirp_requests_total",
            (("code", "not_found"), ("method", "RoomService.DeleteRoom")),
        ): 1,
    }
    latency = value(after, "switchboard_twirp_request_seconds_count", method="RoomService.DeleteRoom")
    assert latency == 2
    assert value(after, "switchboard_jobs_pending") == 0 and value(after, "switchboard_tracks") == 0


async def scrape_value(url: str, name: str, **labels: str) -> float:
    return value(await scrape(url), name, **labels)
