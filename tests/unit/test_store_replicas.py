"""`redis.wait_replicas`: which of a room's waiters a batch that reached the master but too few replicas
refuses (CreateDispatch's acknowledgement), and which it lets go on. Redis is modelled: the write script
succeeds, WAIT answers how many replicas acknowledged."""

import asyncio
from types import SimpleNamespace
from typing import Any, get_args

import pytest

from switchboard.cluster.store import DispatchStore, Kept
from switchboard.core.dispatch import DispatchSpec
from switchboard.core.engine import Engine, EngineSettings
from switchboard.core.errors import Unavailable
from switchboard.runtime import Runtime


class Pipeline:
    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.commands: list[str] = []

    async def __aenter__(self) -> "Pipeline":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append("script")

    def wait(self, replicas: int, timeout_ms: int) -> None:
        self.commands.append("WAIT")

    async def execute(self) -> list[int]:
        return [self.replicas if command == "WAIT" else 1 for command in self.commands]


class Redis:
    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.pipelines: list[Pipeline] = []

    def register_script(self, text: str) -> Any:
        return SimpleNamespace(sha="digest")

    def pipeline(self, transaction: bool) -> Pipeline:
        self.pipelines.append(Pipeline(self.replicas))
        return self.pipelines[-1]


async def unclaimed(room: str) -> None:
    return None


@pytest.mark.parametrize("replicas", [0, 1])
async def test_only_the_acknowledgement_waits_for_the_replicas(replicas: int) -> None:
    redis = Redis(replicas)
    runtime = Runtime(Engine(EngineSettings()), lambda: 100.0)
    store = DispatchStore(redis, "ND_here", runtime, unclaimed, wait_replicas=1, wait_timeout=0.25)
    for kind in get_args(Kept):
        runtime.effects.on(kind, store.keep)
    runtime.call(lambda engine: engine.create_dispatch("room", DispatchSpec("agent"), 100.0))
    # Both wait for the same batch: CreateDispatch's acknowledgement, and (say) a restore.
    acknowledged = asyncio.ensure_future(store.written("room", replicated=True))
    on_the_master = asyncio.ensure_future(store.written("room"))
    await asyncio.sleep(0)
    await store.start()
    try:
        if replicas:
            await acknowledged
        else:
            with pytest.raises(Unavailable, match=r"not 1 replica\(s\) within 250 ms"):
                await acknowledged
        await on_the_master  # the master's copy is enough for it
    finally:
        await store.stop()
    assert redis.pipelines[0].commands[-1] == "WAIT"
