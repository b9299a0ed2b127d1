"""The dashboard's per-minute buckets, fed by a real engine's decisions under a hand-moved clock."""

from switchboard.api.activity import MINUTES, Activity, combined
from switchboard.core.dispatch import DispatchSpec
from switchboard.core.engine import Engine, EngineSettings, RoomSpec
from switchboard.core.events import DispatchCreated, JobEnded, JobStarted
from switchboard.core.jobs import JobStatus
from switchboard.runtime import Runtime

START = 60.0 * 1_000_000  # a minute's first second


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def test_dispatches_and_failures_land_in_their_minute_and_age_out_after_an_hour() -> None:
    clock = Clock()
    runtime = Runtime(Engine(EngineSettings(pending_timeout=50.0)), clock)
    activity = Activity(clock)
    runtime.effects.on(DispatchCreated, activity.dispatched)
    runtime.effects.on(JobStarted, activity.started)
    runtime.effects.on(JobEnded, activity.ended)

    runtime.call(
        lambda engine: engine.create_room(RoomSpec(name="r"), clock.now)
    )  # with its automatic dispatch
    runtime.call(lambda engine: engine.create_dispatch("r", DispatchSpec(agent_name="bot"), clock.now))
    clock.now += 45  # same minute: nothing for `bot` or automatic agents yet
    runtime.call(lambda engine: engine.tick(clock.now))
    clock.now += 30  # next minute: both jobs waited past pending_timeout
    runtime.call(lambda engine: engine.tick(clock.now))
    assert all(job.status is JobStatus.FAILED for job in runtime.engine.jobs.values())

    minutes = activity.last_hour()
    assert len(minutes) == MINUTES and minutes[-1]["start"] == START + 60
    assert [m["start"] for m in minutes] == [START + 60 * (i - MINUTES + 2) for i in range(MINUTES)]
    first, second = minutes[-2], minutes[-1]
    assert (first["dispatches"], first["failures"]) == (2, 0)
    assert (second["dispatches"], second["failures"]) == (0, 2)
    assert sum(m["dispatches"] + m["failures"] for m in minutes[:-2]) == 0

    clock.now += 60 * (MINUTES - 1)  # the first minute is now just out of the hour, the second the oldest
    minutes = activity.last_hour()
    assert len(minutes) == MINUTES
    assert (minutes[0]["start"], minutes[0]["failures"]) == (START + 60, 2)
    assert sum(m["dispatches"] for m in minutes) == 0


def test_nodes_hours_combine_minute_by_minute_with_the_wait_averaged_over_every_started_job() -> None:
    def minute(start: float, dispatches: int, started: int, wait_avg: float, wait_max: float) -> dict:
        return {
            "start": start,
            "dispatches": dispatches,
            "failures": dispatches - started,
            "started": started,
            "wait_avg": wait_avg,
            "wait_max": wait_max,
        }

    own = [minute(START, 1, 1, 2.0, 2.0), minute(START + 60, 0, 0, 0.0, 0.0)]
    other = [minute(START, 3, 3, 1.0, 1.5), minute(START + 60, 2, 0, 0.0, 0.0)]
    skewed = [minute(START + 120, 5, 5, 9.0, 9.0)]  # a clock a minute ahead: its edge minute is nobody's

    first, second = combined(own, [other, skewed])
    assert first == minute(START, 4, 4, (2.0 + 3 * 1.0) / 4, 2.0)
    assert second == minute(START + 60, 2, 0, 0.0, 0.0)
    assert own[0] == minute(START, 1, 1, 2.0, 2.0), "this node's own minutes are left as they were"
