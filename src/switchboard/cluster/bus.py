"""Messages between the nodes of a cluster: one inbox per node, and one feed that every node reads.

Both are Redis Streams (docs/cluster.md, "Dispatch across nodes"):

- `{sb}:inbox:<node id>`: the messages for one node. A node reads its own inbox from the last id it saw,
  so it gets every message in the order each sender sent it, also those added while its connection to
  Redis was down, as long as the stream (trimmed to about `MAX_LENGTH` entries) still holds them: at
  least once (a write retried after a failed round trip may have been applied the first time too). A
  node that restarts is a new node (a new id): its predecessor's inbox is never read again.
- `{sb}:feed`: what every node must hear (its workers coming and going), read the same way.

Beside the messages, a node may keep state that a node starting later reads (`put`: a field of a Redis
hash), written in the same order as the messages.

Sends never wait: they are queued and written by one task, in order, several per round trip. While Redis
cannot be reached they wait in that queue (bounded: the oldest are dropped, with a log line, past
`MAX_QUEUED`); what depends on them recovers by its own deadline (an offer that is never answered times
out and goes to the next worker).
"""

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from switchboard.cluster.redis_client import PREFIX, UNREACHABLE

log = logging.getLogger("switchboard.cluster")

Message = dict[str, Any]
"""JSON-able; `kind` says what it is."""

FEED = PREFIX + "feed"
MAX_LENGTH = 10_000
MAX_QUEUED = 10_000
READ_BLOCK = 0.25
"""How long one XREAD waits for news: short enough that stopping is prompt, and under the socket timeout."""
RETRY_DELAY = 0.2
"""After Redis failed a read or a write, how long before trying again."""


def inbox(node_id: str) -> str:
    return f"{PREFIX}inbox:{node_id}"


Write = tuple[str, ...]
"""("xadd", stream, data), ("hset", key, field, value), ("hdel", key, field) or ("del", key)."""


class RedisBus:
    """How a node talks to the others: `send` to one node, `publish` to all, `put` state beside; `start`
    makes it call `receive(message)` for each message to this node or to the feed, in order."""

    def __init__(self, redis: Any, node_id: str, timeout: float) -> None:
        """`timeout`: the client's socket timeout (`redis.timeout`), which a blocking read must not reach."""
        self.redis = redis
        self.node_id = node_id
        self._block_ms = max(1, int(min(READ_BLOCK, timeout / 2) * 1000))
        self._outbox: deque[Write] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def send(self, node_id: str, message: Message) -> None:
        self._queue(inbox(node_id), message)

    def publish(self, message: Message) -> None:
        self._queue(FEED, message)

    def put(self, key: str, field: str, value: str | None) -> None:
        """Set (or, given None, delete) a field of a hash, in order with the messages."""
        self._write(("hdel", key, field) if value is None else ("hset", key, field, value))

    def forget(self, node_id: str) -> None:
        """That node is dead: its inbox goes (nobody will read it again)."""
        self._write(("del", inbox(node_id)))

    def _queue(self, stream: str, message: Message) -> None:
        self._write(("xadd", stream, json.dumps(message, separators=(",", ":"))))

    def _write(self, write: Write) -> None:
        if len(self._outbox) >= MAX_QUEUED:
            dropped = self._outbox.popleft()
            log.warning("cluster outbox full: a write to %s dropped", dropped[1])
        self._outbox.append(write)
        self._wake.set()

    async def start(
        self, receive: Callable[[Message], None], catch_up: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Read what is sent from now on (what came before this node existed is not for it); `catch_up`
        reads the state kept so far, before the first message is received, so none is missed."""
        # Concrete ids, not "$": a "$" read again after an empty wait would skip what came in between.
        last = {stream: await self._last_id(stream) for stream in (inbox(self.node_id), FEED)}
        if catch_up is not None:
            await catch_up()
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="switchboard-bus-writer"),
            asyncio.create_task(self._read_forever(last, receive), name="switchboard-bus-reader"),
        ]

    async def stop(self) -> None:
        """Write what is queued (briefly), then stop; this node's inbox goes, nobody will read it."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*UNREACHABLE):
            await self._flush()
            await self.redis.delete(inbox(self.node_id))

    async def _last_id(self, stream: str) -> str:
        newest = await self.redis.xrevrange(stream, count=1)
        return str(newest[0][0]) if newest else "0-0"

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except UNREACHABLE as exc:
                log.warning("redis unreachable, %d cluster message(s) wait: %s", len(self._outbox), exc)
                await asyncio.sleep(RETRY_DELAY)
                self._wake.set()

    async def _flush(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, deque()
            try:
                if len(batch) == 1:  # the usual case, a round trip without a pipeline's overhead
                    await _write(self.redis, batch[0])
                else:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for write in batch:
                            _write(pipe, write)
                        await pipe.execute()
            except BaseException:
                batch.extend(self._outbox)  # not written: first in line again, in order
                self._outbox = batch
                raise

    async def _read_forever(self, last: dict[str, str], receive: Callable[[Message], None]) -> None:
        while True:
            try:
                answer = await self.redis.xread(last, block=self._block_ms)
            except UNREACHABLE as exc:
                log.warning("redis unreachable, cluster messages wait: %s", exc)
                await asyncio.sleep(RETRY_DELAY)
                continue
            for stream, entries in answer or ():
                for entry_id, fields in entries:
                    last[stream] = entry_id
                    try:
                        receive(json.loads(fields["m"]))
                    except Exception:
                        log.exception("cluster message failed stream=%s id=%s", stream, entry_id)


def _write(client: Any, write: Write) -> Any:
    """Queue the write on a pipeline, or (on a client) return the command's coroutine."""
    match write:
        case ("xadd", stream, data):
            return client.xadd(stream, {"m": data}, maxlen=MAX_LENGTH, approximate=True)
        case ("hset", key, field, value):
            return client.hset(key, field, value)
        case ("hdel", key, field):
            return client.hdel(key, field)
        case ("del", key):
            return client.delete(key)
