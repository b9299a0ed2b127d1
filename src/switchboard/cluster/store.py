"""The store: each room's dispatches and job states in Redis, so that nothing acknowledged is lost.

The node that holds a room writes its record as an effect of the engine's decisions (`effects.py`); the
node that next creates the room (its node was killed, or restarted) reads it back first and the engine
restores the room with its dispatches (`Engine.restore_room`). docs/cluster.md "Persistence and recovery".

`{sb}:store:<room>` is a hash: `room` (its settings and the node that writes it), `dispatch:<id>` (what
the dispatch asked for, when), `references:<id>` (a singleton's count), `job:<id>` (status, attempt,
worker, error, timestamps, earlier attempts), each a JSON value. A closed room's record is deleted.

Writes are asynchronous: one writer task per node, changes coalesced per room (a later value of a field
replaces an earlier one not yet written), all dirty rooms written in one pipeline, each room by one Lua
script that writes only while no other live node holds the room (a node cut off from Redis past its lease
must not overwrite its successor). CreateDispatch waits for its room's record (`acknowledged`): the
dispatch it acknowledges is in Redis (and on `redis.wait_replicas` replicas); every other change reaches
Redis when the writer gets to it.
While Redis is unreachable the changes wait, coalesced, and are written when it is back.
"""

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, astuple, dataclass, field
from typing import Any, assert_never

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from redis.exceptions import NoScriptError

from switchboard.api.twirp import Method
from switchboard.auth.grants import Claims, InvalidToken, require_room_admin
from switchboard.auth.tokens import TokenVerifier
from switchboard.cluster.nodes import NodeInfo, node_key
from switchboard.cluster.placement import NoNodeAvailable, room_key
from switchboard.cluster.redis_client import FAILURES, PREFIX, UNREACHABLE
from switchboard.core.dispatch import Dispatch, DispatchSpec, RestartPolicy
from switchboard.core.errors import NotFound, Unavailable
from switchboard.core.events import (
    AssignJob,
    DispatchCreated,
    DispatchDeleted,
    DispatchReferenced,
    JobChanged,
    JobEnded,
    JobQueued,
    JobStarted,
    RoomClosed,
    RoomStarted,
)
from switchboard.core.jobs import Attempt, Job, JobStatus, JobType
from switchboard.core.rooms import Room
from switchboard.runtime import Runtime

log = logging.getLogger("switchboard.cluster")


RETRY_INTERVAL = 0.25
"""While Redis is unreachable, how often the writer tries it again."""

ROOM = "room"
JOIN_PATH = "/rtc"

# KEYS: the room's record, the room's placement key. ARGV: this node, the node-key prefix, "1" to delete
# the record first, the number of fields to set, those field/value pairs, then the fields to delete.
# Returns 0 (nothing written) when another live node holds the room, else 1.
_WRITE = """
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then return 0 end
if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) end
local n = tonumber(ARGV[4])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 5, 4 + 2 * n)) end
if #ARGV > 4 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 5 + 2 * n)) end
return 1
"""


def store_key(room: str) -> str:
    return f"{PREFIX}store:{room}"


# The records, without I/O: what the engine's decisions become, and the core objects they restore.


ROOM_FIELDS = ("sid", "created_at", "empty_timeout", "departure_timeout", "max_participants", "metadata")
JOB_FIELDS = (
    "dispatch_id",
    "agent_name",
    "target_identity",
    "deployment",
    "created_at",
    "error",
    "worker_id",
    "agent_identity",
    "started_at",
    "ended_at",
    "updated_at",
    "attempt",
    "reported",
)
"""The job's plain fields; its type, status and earlier attempts are written apart."""


def room_record(started: RoomStarted, node_id: str) -> str:
    return _dump(node=node_id, **{name: getattr(started, name) for name in ROOM_FIELDS})


def dispatch_record(created: DispatchCreated) -> str:
    return _dump(created_at=created.created_at, **asdict(created.spec))


def job_record(job: Job) -> str:
    return _dump(
        type=int(job.type),
        status=job.status.value,
        attempts=[astuple(attempt) for attempt in job.attempts],
        **{name: getattr(job, name) for name in JOB_FIELDS},
    )


@dataclass
class StoredRoom:
    room: Room
    dispatches: list[Dispatch]
    node_id: str
    """The node that wrote it last: the one that was lost."""


def stored_room(name: str, fields: Mapping[str, str]) -> StoredRoom | None:
    """The room a record describes, with its dispatches and their jobs; None without a room entry."""
    if ROOM not in fields:
        return None
    r = json.loads(fields[ROOM])
    room = Room(name=name, **{key: r[key] for key in ROOM_FIELDS})
    dispatches: dict[str, Dispatch] = {}
    for key, value in fields.items():
        kind, _, ident = key.partition(":")
        if kind == "dispatch":
            d = json.loads(value)
            created_at = d.pop("created_at")
            spec = DispatchSpec(**(d | {"restart_policy": RestartPolicy(d["restart_policy"])}))
            dispatches[ident] = Dispatch(id=ident, room=name, spec=spec, created_at=created_at)
    for key, value in fields.items():
        kind, _, ident = key.partition(":")
        if kind == "references" and ident in dispatches:
            dispatches[ident].references = int(value)
        elif kind == "job":
            job = _job(ident, name, json.loads(value))
            if job.dispatch_id in dispatches:
                dispatches[job.dispatch_id].jobs.append(job)
    for dispatch in dispatches.values():
        dispatch.jobs.sort(key=lambda job: (job.created_at, job.id))
    # Creation order; dispatches made at the same instant (a room's first ones) in no particular order.
    ordered = sorted(dispatches.values(), key=lambda d: (d.created_at, d.id))
    return StoredRoom(room, ordered, r["node"])


def _job(job_id: str, room: str, j: dict[str, Any]) -> Job:
    job = Job(job_id, j["dispatch_id"], room, JobType(j["type"]), j["agent_name"], j["created_at"])
    for name in JOB_FIELDS:
        if name in j:  # a record written by an earlier version lacks the fields added since
            setattr(job, name, j[name])
    job.status = JobStatus(j["status"])
    job.attempts = [Attempt(*attempt) for attempt in j["attempts"]]
    return job


def _dump(**record: Any) -> str:
    return json.dumps(record, separators=(",", ":"))


Kept = (
    RoomStarted
    | RoomClosed
    | DispatchCreated
    | DispatchReferenced
    | DispatchDeleted
    | JobQueued
    | AssignJob
    | JobStarted
    | JobChanged
    | JobEnded
)
"""The decisions that change what the store keeps."""


@dataclass
class Changes:
    """What a room's record must become, coalesced: a later value of a field replaces an earlier one."""

    reset: bool = False
    """Delete the record before writing `fields` (the room closed, or started anew)."""
    dropped: bool = False
    """Write nothing of what came before (the room was handed over); later changes are written."""
    fields: dict[str, str | None] = field(default_factory=dict)
    """Field -> value to write, or None to delete."""

    def then(self, newer: "Changes") -> None:
        """Apply `newer`, made after these, on top of them."""
        if newer.reset or newer.dropped:
            self.reset, self.dropped, self.fields = newer.reset, newer.dropped, dict(newer.fields)
        else:
            self.fields.update(newer.fields)

    def script_args(self, node_id: str) -> list[str]:
        written = [(k, v) for k, v in self.fields.items() if v is not None]
        deleted = [k for k, v in self.fields.items() if v is None]
        pairs = [part for pair in written for part in pair]
        return [node_id, node_key(""), "1" if self.reset else "0", str(len(written)), *pairs, *deleted]


def changes_for(decision: Kept, node_id: str) -> tuple[str, "Changes"]:
    """The room whose record the decision changes, and how."""
    match decision:
        case RoomStarted():
            # A room started anew replaces any record of an earlier one; a restored room keeps its record.
            record = room_record(decision, node_id)
            return decision.room, Changes(reset=not decision.restored, fields={ROOM: record})
        case RoomClosed(handed_over=False):
            return decision.room, Changes(reset=True)
        case RoomClosed():
            # The record stays as it was: what this node changed since it last wrote (the jobs it just
            # stopped among it) is dropped, for the node that takes the room over.
            return decision.room, Changes(dropped=True)
        case DispatchCreated():
            return decision.room, Changes(
                fields={f"dispatch:{decision.dispatch_id}": dispatch_record(decision)}
            )
        case DispatchReferenced():
            references = str(decision.references)
            return decision.room, Changes(fields={f"references:{decision.dispatch_id}": references})
        case DispatchDeleted():
            gone = [f"dispatch:{decision.dispatch_id}", f"references:{decision.dispatch_id}"]
            gone += [f"job:{job_id}" for job_id in decision.job_ids]
            return decision.room, Changes(fields=dict.fromkeys(gone))
        case JobQueued() | AssignJob() | JobStarted() | JobChanged() | JobEnded():
            job = decision.job
            return job.room, Changes(fields={f"job:{job.id}": job_record(job)})
    assert_never(decision)


class DispatchStore:
    def __init__(
        self,
        redis: Any,
        node_id: str,
        runtime: Runtime,
        claim: Callable[[str], Awaitable[NodeInfo | None]],
        retry_interval: float = RETRY_INTERVAL,
        wait_replicas: int = 0,
        wait_timeout: float = 0.0,
    ):
        self._redis = redis
        self._wait_replicas = wait_replicas
        """RedisSettings.wait_replicas: each batch ends with a WAIT for that many replicas, up to
        `wait_timeout`; the rooms of a batch that did not reach them are not acknowledged."""
        self._wait_ms = max(1, int(wait_timeout * 1000))
        self._claim = claim
        """RoomOwnership.claim: None when the room is (now) this node's, else the node that holds it."""
        self._node_id = node_id
        self._runtime = runtime
        self._retry_interval = retry_interval
        self._write_script = redis.register_script(_WRITE)
        self._changes: dict[str, Changes] = {}
        """Not yet sent, by room, in the order the rooms first changed."""
        self._queued: dict[str, int] = {}
        """By room with changes not yet in Redis: the number of its latest change."""
        self._count = 0
        self._waiters: dict[str, list[tuple[int, bool, asyncio.Future[None]]]] = {}
        """By room: the change each waits for, whether it also waits for `wait_replicas` replicas, and its
        future."""
        self._replicated = True
        """Whether the last batch reached `wait_replicas` replicas (logged when it changes)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reachable = True
        """False from a failed write until Redis answers again: CreateDispatch is refused at once."""

    def keep(self, decision: Kept) -> None:
        """The effect of every decision the store follows (effects.py): its room's record changes."""
        room, changes = changes_for(decision, self._node_id)
        self._count += 1
        self._queued[room] = self._count
        self._changes.setdefault(room, Changes()).then(changes)
        self._wake.set()

    # Waiting for the record, and reading it back.

    async def has_record(self, room: str) -> bool:
        """Whether Redis keeps a record of `room` (its node was lost or restarted: the room may come back)."""
        return bool(await self._redis.exists(store_key(room)))

    def check_reachable(self) -> None:
        if not self.reachable:
            raise Unavailable("redis is unreachable: dispatches cannot be stored now; try again shortly")

    async def written(self, room: str, replicated: bool = False) -> None:
        """Return once every change made so far to `room`'s record is in Redis (and, if `replicated`, on
        `wait_replicas` replicas: CreateDispatch's acknowledgement); Unavailable if not."""
        target = self._queued.get(room)
        if target is None:
            return
        self.check_reachable()
        done = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(room, []).append((target, replicated, done))
        await done

    async def restore(self, room: str) -> None:
        """Before a call reaches a room this node does not hold: bring it back if the store has it (its
        node was lost or restarted), with its dispatches; nothing happens for a room it holds already."""
        if not room or room in self._runtime.engine.rooms:
            return
        await self.written(room)  # a closure of ours still queued must not be read back as a live room
        try:
            fields = await self._redis.hgetall(store_key(room))
        except UNREACHABLE as exc:
            raise Unavailable(
                f"redis is unreachable: cannot tell whether room {room!r} exists ({exc})"
            ) from None
        stored = stored_room(room, fields)
        if stored is None or room in self._runtime.engine.rooms:  # or a concurrent call restored it
            return
        # Only the room's owner restores it: the claim makes this node the owner, unless another live node
        # already is (a race with a claim elsewhere; the caller's retry is relayed there).
        try:
            holder = await self._claim(room)
        except NoNodeAvailable as exc:
            raise Unavailable(str(exc)) from None
        if holder is not None:
            raise Unavailable(f"room {room!r} is now held by node {holder.id}: try again")
        if room in self._runtime.engine.rooms:
            return
        lost = f"node lost: node {stored.node_id}, where the room was, stopped"
        now = self._runtime.now()
        self._runtime.call(
            lambda engine: engine.restore_room(stored.room, stored.dispatches, lost, now, stored.node_id)
        )
        log.info(
            "room restored room=%s dispatches=%d from_node=%s", room, len(stored.dispatches), stored.node_id
        )

    # Twirp methods wrapped in a node with `redis:` (server.py).

    def acknowledged(self, create_dispatch: Method) -> Method:
        """CreateDispatch answers once its dispatch is in Redis; if it cannot be stored, `unavailable`,
        and the dispatch is withdrawn (a caller that retries must not get two)."""

        async def handler(claims: Claims, request: Any) -> Any:
            require_room_admin(claims, request.room)
            self.check_reachable()
            await self.restore(request.room)
            reply = await _answer(create_dispatch, claims, request)
            try:
                await self.written(request.room, replicated=True)
            except Unavailable:
                self._withdraw(request.room, reply.id)
                raise
            return reply

        return Method(create_dispatch.request_type, handler)

    def restoring(self, method: Method, room_of: Callable[[Any], str]) -> Method:
        """The method acts on its room restored first, if this node does not hold it. The caller's token
        is one of ours (Twirp checked it); its grants are checked by the method: restoring is what the
        first authorised call would do anyway, and shows the caller nothing."""

        async def handler(claims: Claims, request: Any) -> Any:
            await self.restore(room_of(request))
            return await _answer(method, claims, request)

        return Method(method.request_type, handler)

    def wrap_services(self, dispatch_methods: dict[str, Method], room_methods: dict[str, Method]) -> None:
        """Every call on one room restores it first; CreateDispatch is acknowledged once stored."""
        dispatch_methods["CreateDispatch"] = self.acknowledged(dispatch_methods["CreateDispatch"])
        for methods in (dispatch_methods, room_methods):
            for name, method in methods.items():
                if name != "CreateDispatch" and "room" in method.request_type.DESCRIPTOR.fields_by_name:
                    methods[name] = self.restoring(method, _room_field)
        room_methods["CreateRoom"] = self.restoring(room_methods["CreateRoom"], lambda request: request.name)

    def restoring_joins(self, verifier: TokenVerifier) -> Middleware:
        """A participant joining a room this node does not hold finds it restored (it reconnects after the
        room's node died). Its token is checked again by the rtc service. A resume (`reconnect=1`) restores
        nothing: its session was on the lost node, so it is told to rejoin, and that join restores."""

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path == JOIN_PATH and request.query.get("reconnect") not in ("1", "true"):
                with contextlib.suppress(InvalidToken):
                    claims = verifier.verify_request(request.headers, request.query)
                    if claims.video.room_join:
                        room = claims.video.room or request.query.get("room", "")
                        try:
                            await self.restore(room)
                        except Unavailable as exc:
                            raise web.HTTPServiceUnavailable(text=f"{exc}\n") from None
            return await handler(request)

        return middleware

    def _withdraw(self, room: str, dispatch_id: str) -> None:
        with contextlib.suppress(NotFound):
            self._runtime.call(lambda engine: engine.delete_dispatch(room, dispatch_id, self._runtime.now()))

    # The writer.

    async def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever(), name="switchboard-store-writer")

    async def stop(self) -> None:
        """Stop the writer, then write what is still queued if Redis answers (a clean stop loses nothing
        written so far; the rooms close next, and their records go)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(*FAILURES):
            await self._write_pending()

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._write_pending()
            except FAILURES:
                await self._wait_for_redis()

    async def _write_pending(self) -> None:
        while self._changes:
            batch, self._changes = self._changes, {}
            sent = {room: self._queued[room] for room in batch}
            try:
                results, replicated = await self._write_batch(batch)
            except FAILURES as exc:
                if not isinstance(exc, UNREACHABLE):
                    log.exception("dispatch store write failed")
                self._requeue(batch, exc)
                raise
            except asyncio.CancelledError:
                self._requeue(batch)  # stopping: `stop` writes it
                raise
            self._note_replicas(replicated)
            for (room, number), stored in zip(sent.items(), results, strict=True):
                if stored:
                    self._written(room, number, replicated)
                else:
                    # Dropped for good (its successor's record wins): nobody must wait for it.
                    log.warning("store write refused room=%s: another live node holds the room", room)
                    self._settled(room, number)
                    self._fail(room, Unavailable(f"room {room!r} is held by another node now"))

    def _not_replicated(self) -> str:
        return (
            f"the dispatch reached the Redis master but not {self._wait_replicas} replica(s) within"
            f" {self._wait_ms} ms (redis.wait_replicas): a failover could lose it; try again"
        )

    async def _write_batch(self, batch: dict[str, Changes]) -> tuple[list[Any], bool]:
        """Each room's changes by the write script, in one pipeline: its results, in the batch's order, and
        whether the batch reached `wait_replicas` replicas."""
        try:
            return await self._pipelined(batch)
        except NoScriptError:
            # The script is sent by its digest alone: redis-py would otherwise ask SCRIPT EXISTS before
            # every pipeline, one more round trip per batch. A server (or a Redis Cluster shard) that
            # restarted or failed over does not have it: load it and write the batch again. A room the
            # script did write (on a shard that had it) is written again with the same changes, which the
            # script applies idempotently, and no other write came in between.
            await self._redis.script_load(_WRITE)
            return await self._pipelined(batch)

    async def _pipelined(self, batch: dict[str, Changes]) -> tuple[list[Any], bool]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for room, changes in batch.items():
                pipe.evalsha(
                    self._write_script.sha,
                    2,
                    store_key(room),
                    room_key(room),
                    *changes.script_args(self._node_id),
                )
            if self._wait_replicas:
                pipe.wait(self._wait_replicas, self._wait_ms)
            results = list(await pipe.execute())
        if not self._wait_replicas:
            return results, True
        return results[:-1], results[-1] >= self._wait_replicas

    def _requeue(self, batch: dict[str, Changes], exc: BaseException | None = None) -> None:
        """The batch was not written: it goes back before the changes made since; on a failure (`exc`),
        whoever waits is told at once."""
        newer, self._changes = self._changes, batch
        for room, changes in newer.items():
            self._changes.setdefault(room, Changes()).then(changes)
        if exc is None:
            return
        if self.reachable:
            log.error("redis unreachable, dispatch store writes wait: %s", exc)
        self.reachable = False
        for room in list(self._waiters):
            self._fail(room, Unavailable(f"redis is unreachable: the dispatch could not be stored ({exc})"))

    async def _wait_for_redis(self) -> None:
        while True:
            await asyncio.sleep(self._retry_interval)
            with contextlib.suppress(*UNREACHABLE):
                await self._redis.ping()
                break
        log.info("redis reachable again, dispatch store writes resume")
        self.reachable = True
        self._wake.set()

    def _settled(self, room: str, number: int) -> None:
        """The room's changes up to `number` are done with: none newer means none to wait for."""
        if self._queued.get(room) == number:
            del self._queued[room]

    def _note_replicas(self, replicated: bool) -> None:
        if replicated == self._replicated:
            return
        self._replicated = replicated
        if replicated:
            log.info("redis replicas caught up: CreateDispatch is acknowledged again")
        else:
            log.warning("redis: %s", self._not_replicated())

    def _written(self, room: str, number: int, replicated: bool = True) -> None:
        """The room's changes up to `number` are on the master; on `wait_replicas` replicas too unless
        not `replicated`: then a CreateDispatch waiting for them is refused (a failover now would lose its
        dispatch), and anything else that waits goes on."""
        self._settled(room, number)
        waiting = self._waiters.pop(room, [])
        for target, needs_replicas, done in waiting:
            if target > number or done.done():
                continue
            if replicated or not needs_replicas:
                done.set_result(None)
            else:
                done.set_exception(Unavailable(self._not_replicated()))
        still = [waiter for waiter in waiting if waiter[0] > number]
        if still:
            self._waiters[room] = still

    def _fail(self, room: str, error: Exception) -> None:
        for _, _, done in self._waiters.pop(room, []):
            if not done.done():
                done.set_exception(error)


def _room_field(request: Any) -> str:
    return str(request.room)


async def _answer(method: Method, claims: Claims, request: Any) -> Any:
    reply = method.handler(claims, request)
    return await reply if inspect.isawaitable(reply) else reply
