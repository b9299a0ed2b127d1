"""The gateway to the engine: a call's decisions reach their effects, in order, whatever happens."""

import logging
from typing import get_args

import pytest
import yaml

from switchboard.cluster.workers import ClusterWorkers
from switchboard.config import load_config
from switchboard.core.dispatch import DispatchSpec
from switchboard.core.engine import Engine, RoomSpec
from switchboard.core.errors import NotFound
from switchboard.core.events import Decision, DispatchCreated, OfferJob, RoomClosed, RoomStarted
from switchboard.runtime import Runtime
from switchboard.server import HUB, METRICS, RUNTIME, build_app


def recording_runtime() -> tuple[Runtime, list[tuple[str, Decision]]]:
    runtime = Runtime(Engine(), clock=lambda: 100.0)
    seen: list[tuple[str, Decision]] = []
    runtime.effects.on(RoomStarted, lambda d: seen.append(("first", d)), lambda d: seen.append(("second", d)))
    runtime.effects.on(DispatchCreated, lambda d: seen.append(("first", d)))
    runtime.effects.on(RoomClosed, lambda d: seen.append(("first", d)))
    return runtime, seen


def test_a_calls_decisions_reach_their_effects_in_the_engines_order_before_it_returns() -> None:
    runtime, seen = recording_runtime()
    room = runtime.call(lambda engine: engine.create_room(RoomSpec("r", agents=(DispatchSpec("a"),)), 100.0))
    [dispatch] = room.dispatches.values()
    assert seen == [
        ("first", RoomStarted("r", room.sid)),
        ("second", RoomStarted("r", room.sid)),
        ("first", DispatchCreated("r", dispatch.id, "a")),
    ]
    assert runtime.engine.take_decisions() == []


def test_a_call_that_raises_still_carries_out_what_it_decided_first() -> None:
    runtime, seen = recording_runtime()

    def create_then_fail(engine: Engine) -> None:
        engine.create_room(RoomSpec("r"), 100.0)
        engine.delete_dispatch("r", "AD_missing", 100.0)

    with pytest.raises(NotFound):
        runtime.call(create_then_fail)
    assert [type(d) for _, d in seen] == [RoomStarted, RoomStarted, DispatchCreated]
    assert runtime.engine.take_decisions() == []


def test_an_effect_that_raises_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    runtime = Runtime(Engine(), clock=lambda: 100.0)
    seen: list[str] = []

    def broken(_: RoomStarted) -> None:
        raise RuntimeError("boom")

    runtime.effects.on(RoomStarted, broken, lambda d: seen.append(d.room))
    runtime.effects.on(RoomClosed, lambda d: seen.append(f"closed {d.room}"))
    with caplog.at_level(logging.ERROR, "switchboard.core"):
        runtime.call(lambda engine: engine.create_room(RoomSpec("r"), 100.0))
        runtime.call(lambda engine: engine.delete_room("r", 100.0))
    assert seen == ["r", "closed r"]
    assert "effect failed decision=RoomStarted" in caplog.text and "boom" in caplog.text


def test_decisions_made_around_the_gateway_are_carried_out_by_the_next_call_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime, seen = recording_runtime()
    runtime.engine.create_room(RoomSpec("r"), 100.0)  # wrong: not through runtime.call
    assert seen == []
    with caplog.at_level(logging.ERROR, "switchboard.core"):
        runtime.call(lambda engine: engine.delete_room("r", 100.0))
    assert [type(d) for _, d in seen] == [RoomStarted, RoomStarted, DispatchCreated, RoomClosed]
    assert "decisions made outside Runtime.call" in caplog.text


def test_effects_that_call_the_engine_again_see_their_own_decisions_carried_out() -> None:
    runtime, seen = recording_runtime()
    # An effect acting on a room's start adds a dispatch: re-entrant calls are carried out at once.
    runtime.effects.on(
        RoomStarted,
        lambda d: runtime.call(lambda engine: engine.create_dispatch(d.room, DispatchSpec("b"), 100.0)),
    )
    runtime.call(lambda engine: engine.create_room(RoomSpec("r", agents=(DispatchSpec("a"),)), 100.0))
    assert [(who, type(d).__name__, getattr(d, "agent_name", "")) for who, d in seen] == [
        ("first", "RoomStarted", ""),
        ("second", "RoomStarted", ""),
        ("first", "DispatchCreated", "b"),
        ("first", "DispatchCreated", "a"),
    ]


def test_with_webhooks_metrics_and_redis_every_decision_type_has_an_effect_and_actors_come_first() -> None:
    document = {
        "keys": {"key": "a-secret-long-enough-for-hmac-sha256!"},
        "webhook": {"api_key": "key", "urls": ["http://127.0.0.1:9/hook"]},
        "prometheus_port": 9,
        "redis": {"address": "127.0.0.1:9"},  # the store carries out the decisions that exist for it
    }
    app = build_app(load_config(env={"LIVEKIT_CONFIG": yaml.safe_dump(document)}))
    effects = app[RUNTIME].effects
    for decision_type in get_args(Decision):
        assert effects.of(decision_type), f"{decision_type.__name__} is carried out by nobody"
    # With redis:, the hub is reached through ClusterWorkers (a worker may be on another node).
    [actor, observer] = effects.of(OfferJob)[:2]
    assert isinstance(actor.__self__, ClusterWorkers) and actor.__self__.hub is app[HUB]
    assert observer == app[METRICS].offered
