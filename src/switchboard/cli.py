"""`switchboard`: run the server, mint tokens, manage rooms and dispatches (modelled on LiveKit's `lk`)."""

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from google.protobuf.message import Message
from livekit import api
from livekit.api.twirp_client import TwirpClient

from switchboard import LIVEKIT_COMPATIBLE_VERSION, LIVEKIT_PROTOCOL, __version__
from switchboard.api import switchboard_proto as pb
from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token
from switchboard.config import DEV_KEYS, ConfigError, load_config
from switchboard.protojson import to_json

if TYPE_CHECKING:
    from switchboard.agents.config import AgentConfig

DEV_URL = "http://127.0.0.1:7880"
DEV_KEY, DEV_SECRET = next(iter(DEV_KEYS.items()))
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


class UsageError(Exception):
    """The command line asks for something that cannot be done (exit status 2)."""


class Failure(Exception):
    """The command could not do its work, for a reason its message gives in one line (exit status 1)."""


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '1h30m', '2d' → seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UsageError(f"invalid duration {text!r}: use forms like 90s, 30m, 1h30m, 2d")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def parse_agent(text: str) -> dict[str, str]:
    """'NAME' or 'NAME:METADATA' → a roomConfig agent entry (camelCase, as the SDKs write it)."""
    name, _, metadata = text.partition(":")
    if not name:
        raise UsageError(f"invalid --agent {text!r}: expected NAME or NAME:METADATA")
    entry = {"agentName": name}
    if metadata:
        entry["metadata"] = metadata
    return entry


def parse_attributes(pairs: Sequence[str]) -> dict[str, str]:
    attributes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid --attribute {pair!r}: expected KEY=VALUE")
        attributes[key] = value
    return attributes


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    key = args.api_key or os.environ.get("LIVEKIT_API_KEY") or DEV_KEY
    secret = args.api_secret or os.environ.get("LIVEKIT_API_SECRET") or DEV_SECRET
    return key, secret


def _url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get("LIVEKIT_URL") or DEV_URL)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _emit(args: argparse.Namespace, message: Message | Sequence[Message], table: Callable[[], None]) -> None:
    if args.json:
        data = to_json(message) if isinstance(message, Message) else [to_json(m) for m in message]
        print(json.dumps(data, indent=2))
    else:
        table()


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _status(job: api.Job) -> str:
    return api.JobStatus.Name(job.state.status).removeprefix("JS_").lower()


def _attempts(dispatch: api.AgentDispatch) -> list[tuple[int, api.Job]]:
    """Each entry of the dispatch's job list with its attempt number: a job run more than once is listed
    once per attempt, the earlier ones first."""
    seen: dict[str, int] = {}
    numbered = []
    for job in dispatch.state.jobs:
        seen[job.id] = seen.get(job.id, 0) + 1
        numbered.append((seen[job.id], job))
    return numbered


def _job_summary(dispatch: api.AgentDispatch) -> str:
    """The current attempt of each job, and how many there were."""
    current = {job.id: (attempt, job) for attempt, job in _attempts(dispatch)}
    if not current:
        return "-"
    return ", ".join(
        _status(job)
        + (f" (attempt {attempt})" if attempt > 1 else "")
        + (f" ({_short(job.state.error, 60)})" if job.state.error else "")
        for attempt, job in current.values()
    )


def _print_jobs(dispatch: api.AgentDispatch) -> None:
    print_table(
        ["JOB", "ATTEMPT", "STATUS", "WORKER", "AGENT", "STARTED", "ENDED", "REASON"],
        [
            (
                job.id,
                attempt,
                _status(job),
                job.state.worker_id or "-",
                job.state.participant_identity or "-",
                _when(job.state.started_at / 1e9),
                _when(job.state.ended_at / 1e9),
                job.state.error or "-",
            )
            for attempt, job in _attempts(dispatch)
        ],
    )


def _print_dispatches(dispatches: Sequence[api.AgentDispatch]) -> None:
    print_table(
        ["ID", "AGENT", "ROOM", "METADATA", "CREATED", "JOBS"],
        [
            (
                d.id,
                d.agent_name or "(automatic)",
                d.room,
                _short(d.metadata) or "-",
                _when(d.state.created_at / 1e9),
                _job_summary(d),
            )
            for d in dispatches
        ],
    )


def _print_rooms(rooms: Sequence[api.Room]) -> None:
    print_table(
        ["SID", "NAME", "PARTICIPANTS", "CREATED", "EMPTY TIMEOUT", "METADATA"],
        [
            (
                r.sid,
                r.name,
                r.num_participants,
                _when(r.creation_time),
                f"{r.empty_timeout}s",
                _short(r.metadata),
            )
            for r in rooms
        ],
    )


async def _call(args: argparse.Namespace, action: Callable[[api.LiveKitAPI], Awaitable[None]]) -> None:
    key, secret = _credentials(args)
    async with api.LiveKitAPI(_url(args), key, secret) as lkapi:
        await action(lkapi)


async def _call_switchboard(
    args: argparse.Namespace,
    service: str,
    method: str,
    request: Message,
    reply: type[Message],
    video: VideoGrant,
) -> Any:
    """Call one of Switchboard's own services (package `switchboard`) with the livekit-api Twirp client,
    under a short-lived token carrying the grants that method needs."""
    key, secret = _credentials(args)
    token = mint_token(key, secret, video=video, ttl=60)
    async with aiohttp.ClientSession() as session:
        client = TwirpClient(session, _url(args), "switchboard", failover=False)
        return await client.request(service, method, request, {"Authorization": f"Bearer {token}"}, reply)


def _explain(args: argparse.Namespace, room: str, dispatch_id: str = "") -> Any:
    request = pb.ExplainDispatchRequest(room=room, dispatch_id=dispatch_id)
    video = VideoGrant(room_admin=True, room=room)
    return _call_switchboard(
        args, "DispatchService", "ExplainDispatch", request, pb.ExplainDispatchResponse, video
    )


def _ago(nanoseconds: int) -> str:
    return f"{_when(nanoseconds / 1e9)} ({max(time.time() - nanoseconds / 1e9, 0):.0f}s ago)"


def _print_explanation(job: Any) -> None:
    """One job: where it is and since when, why, and what each worker of its agent did."""
    head = f"{job.dispatch_id}  {job.agent_name or '(automatic)'}  {job.job_id or '(no job)'}  {job.state}"
    if job.since:
        head += f"  since {_ago(job.since)}"
    if job.until:  # the state's own deadline: a wait fails, an offer moves on, a back-off ends
        head += f"; until {_when(job.until / 1e9)}"
    print(head)
    print(f"  {job.summary}")
    for verdict in job.workers:
        print(f"  - {verdict.worker_id}: {verdict.reason} (load {verdict.load:.2f})")
    for attempt in job.earlier_attempts:
        print(f"  earlier {attempt}")


# Commands


def cmd_serve(args: argparse.Namespace) -> None:
    config = load_config(
        args.config, dev=args.dev, port=args.port, bind=args.bind, keys=args.keys, agents_dir=args.agents
    )
    from switchboard.server import StartError, serve  # not needed by the client commands (aiortc)

    try:
        serve(config)
    except StartError as exc:
        raise Failure(str(exc)) from None


def cmd_token_create(args: argparse.Namespace) -> None:
    if args.join and not args.identity:
        raise UsageError("--identity is required with --join")
    if args.join and not args.room:
        raise UsageError("--room is required with --join")
    agents = [parse_agent(a) for a in args.agent]
    video = VideoGrant(
        room_join=args.join,
        room_admin=args.admin,
        room_create=args.create,
        room_list=args.list,
        room=args.room or "",
        agent=args.agent_worker,
    )
    if not any((video.room_join, video.room_admin, video.room_create, video.room_list, video.agent)):
        raise UsageError("grant something: --join, --admin, --create, --list or --agent-worker")
    key, secret = _credentials(args)
    ttl = parse_duration(args.valid_for)
    token = mint_token(
        key,
        secret,
        video=video,
        identity=args.identity or "",
        name=args.name or "",
        metadata=args.metadata or "",
        attributes=parse_attributes(args.attribute),
        room_config={"agents": agents} if agents else None,
        ttl=ttl,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "token": token,
                    "identity": args.identity or "",
                    "room": args.room or "",
                    "expires_at": int(time.time() + ttl),
                },
                indent=2,
            )
        )
    else:
        print(token)


def cmd_dispatch_create(args: argparse.Namespace) -> None:
    async def run(lkapi: api.LiveKitAPI) -> None:
        request = api.CreateAgentDispatchRequest(
            room=args.room, agent_name=args.agent_name, metadata=args.metadata or ""
        )
        dispatch = await lkapi.agent_dispatch.create_dispatch(request)
        _emit(args, dispatch, lambda: _print_dispatches([dispatch]))

    asyncio.run(_call(args, run))


def cmd_dispatch_list(args: argparse.Namespace) -> None:
    async def run(lkapi: api.LiveKitAPI) -> None:
        dispatches = await lkapi.agent_dispatch.list_dispatch(args.room)
        _emit(args, dispatches, lambda: _print_dispatches(dispatches))
        if args.json:
            return
        if dispatches and all(d.state.deleted_at for d in dispatches):
            # Only a closed room's dispatches (kept for room.history_ttl) are all deleted.
            print(f"room {args.room!r} has closed: its dispatches as they ended", file=sys.stderr)
        elif any(_status(job) == "pending" for d in dispatches for job in d.state.jobs):
            waiting = [j for j in (await _explain(args, args.room)).jobs if j.state in ("pending", "offered")]
            print()
            for job in waiting:
                print(f"{job.job_id} waits: {job.summary}")

    asyncio.run(_call(args, run))


def cmd_dispatch_get(args: argparse.Namespace) -> None:
    async def run(lkapi: api.LiveKitAPI) -> None:
        dispatch = await lkapi.agent_dispatch.get_dispatch(args.id, args.room)
        if dispatch is None:
            raise UsageError(f"no dispatch {args.id} in room {args.room!r}")

        def tables() -> None:
            _print_dispatches([dispatch])
            if dispatch.state.jobs:
                print()
                _print_jobs(dispatch)

        _emit(args, dispatch, tables)

    asyncio.run(_call(args, run))


def cmd_dispatch_delete(args: argparse.Namespace) -> None:
    async def run(lkapi: api.LiveKitAPI) -> None:
        dispatch = await lkapi.agent_dispatch.delete_dispatch(args.id, args.room)
        _emit(args, dispatch, lambda: print(f"deleted dispatch {dispatch.id} from room {dispatch.room}"))

    asyncio.run(_call(args, run))


def cmd_dispatch_explain(args: argparse.Namespace) -> None:
    async def run() -> None:
        response = await _explain(args, args.room, args.id or "")

        def explain() -> None:
            for job in response.jobs:
                _print_explanation(job)

        _emit(args, response, explain)

    asyncio.run(run())


def _worker_state(worker: Any) -> str:
    reported = api.WorkerStatus.Name(worker.status).removeprefix("WS_").lower()
    return f"draining ({reported})" if worker.draining else reported


def cmd_worker_list(args: argparse.Namespace) -> None:
    async def run() -> None:
        request = pb.ListWorkersRequest(agent_names=args.agent_name)
        response = await _call_switchboard(
            args, "WorkerService", "ListWorkers", request, pb.ListWorkersResponse, VideoGrant(room_list=True)
        )
        workers = list(response.workers)
        _emit(
            args,
            workers,
            lambda: print_table(
                ["ID", "AGENT", "TYPE", "VERSION", "STATUS", "LOAD", "JOBS", "NODE"],
                [
                    (
                        w.id,
                        w.agent_name or "(automatic)",
                        api.JobType.Name(w.job_type).removeprefix("JT_").lower(),
                        w.version or "-",
                        _worker_state(w),
                        f"{w.load:.2f}",
                        ", ".join(f"{j.id} ({j.room}, {j.state})" for j in w.jobs) or "-",
                        w.node_id,
                    )
                    for w in workers
                ],
            ),
        )

    asyncio.run(run())


def _steer(
    args: argparse.Namespace,
    service: str,
    method: str,
    request: Message,
    reply: Any,
    said: Callable[[Any], str],
) -> None:
    """Drain or undrain a worker or a node (server-wide: roomAdmin with no room), and say what it does."""

    async def run() -> None:
        video = VideoGrant(room_admin=True)
        answer = await _call_switchboard(args, service, method, request, reply, video)
        _emit(args, answer, lambda: print(said(answer)))

    asyncio.run(run())


def _steer_worker(args: argparse.Namespace, method: str, request_type: Any, done: str) -> None:
    def said(worker: Any) -> str:
        return f"worker {worker.id} {done} ({len(worker.jobs)} job(s) it holds go on)"

    _steer(args, "WorkerService", method, request_type(worker_id=args.worker_id), pb.Worker, said)


def cmd_worker_drain(args: argparse.Namespace) -> None:
    _steer_worker(args, "DrainWorker", pb.DrainWorkerRequest, "drained: it gets no new job")


def cmd_worker_undrain(args: argparse.Namespace) -> None:
    _steer_worker(args, "UndrainWorker", pb.UndrainWorkerRequest, "undrained: it gets jobs again")


def cmd_node_list(args: argparse.Namespace) -> None:
    async def run() -> None:
        response = await _call_switchboard(
            args,
            "NodeService",
            "ListNodes",
            pb.ListNodesRequest(),
            pb.ListNodesResponse,
            VideoGrant(room_list=True),
        )
        nodes = list(response.nodes)
        _emit(
            args,
            nodes,
            lambda: print_table(
                ["ID", "ADDRESS", "ROOMS", "PARTICIPANTS", "WORKERS", "CPU", "STATE"],
                [
                    (n.id, n.address, n.rooms, n.participants, n.workers, f"{n.cpu_load:.0%}", n.state)
                    for n in nodes
                ],
            ),
        )

    asyncio.run(run())


def _steer_node(args: argparse.Namespace, method: str, request_type: Any, done: str) -> None:
    def said(node: Any) -> str:
        return f"node {node.id} {done} ({node.rooms} room(s) it holds go on)"

    _steer(args, "NodeService", method, request_type(node_id=args.node_id or ""), pb.Node, said)


def cmd_node_drain(args: argparse.Namespace) -> None:
    _steer_node(args, "DrainNode", pb.DrainNodeRequest, "draining: new rooms go to the other nodes")


def cmd_node_undrain(args: argparse.Namespace) -> None:
    _steer_node(args, "UndrainNode", pb.UndrainNodeRequest, "serving: it takes new rooms again")


def cmd_room_create(args: argparse.Namespace) -> None:
    async def run(lkapi: api.LiveKitAPI) -> None:
        request = api.CreateRoomRequest(
            name=args.name,
            empty_timeout=args.empty_timeout,
            departure_timeout=args.departure_timeout,
            max_participants=args.max_participants,
            metadata=args.metadata or "",
            agents=[
                api.RoomAgentDispatch(agent_name=e["agentName"], metadata=e.get("metadata", ""))
                for e in map(parse_agent, args.agent)
            ],
        )
        room = await lkapi.room.create_room(request)
        _emit(args, room, lambda: _print_rooms([room]))

    asyncio.run(_call(args, run))


def cmd_room_list(args: argparse.Namespace) -> None:
    async def run(lkapi: api.LiveKitAPI) -> None:
        response = await lkapi.room.list_rooms(api.ListRoomsRequest(names=args.names))
        rooms = list(response.rooms)
        _emit(args, rooms, lambda: _print_rooms(rooms))

    asyncio.run(_call(args, run))


def cmd_room_delete(args: argparse.Namespace) -> None:
    async def run(lkapi: api.LiveKitAPI) -> None:
        response = await lkapi.room.delete_room(api.DeleteRoomRequest(room=args.name))
        _emit(args, response, lambda: print(f"deleted room {args.name}"))

    asyncio.run(_call(args, run))


def cmd_room_participants(args: argparse.Namespace) -> None:
    async def run(lkapi: api.LiveKitAPI) -> None:
        response = await lkapi.room.list_participants(api.ListParticipantsRequest(room=args.name))
        participants = list(response.participants)
        _emit(
            args,
            participants,
            lambda: print_table(
                ["SID", "IDENTITY", "NAME", "KIND", "JOINED"],
                [
                    (
                        p.sid,
                        p.identity,
                        p.name,
                        api.ParticipantInfo.Kind.Name(p.kind).lower(),
                        _when(p.joined_at),
                    )
                    for p in participants
                ],
            ),
        )

    asyncio.run(_call(args, run))


def _agent_config(args: argparse.Namespace, check_services: bool) -> "AgentConfig":
    """The agent config the command names (or finds), with its services checked when asked."""
    from switchboard.agents.config import AgentConfigError, find_agent_config, load_agent_config

    try:
        config = load_agent_config(args.config) if args.config else find_agent_config()
        if check_services and config.enabled:
            from switchboard.agents.services import check_services as check

            check(config)
    except AgentConfigError as exc:
        raise UsageError(str(exc)) from exc
    return config


def cmd_agent_check(args: argparse.Namespace) -> None:
    """Validate an agent config and say how its worker will be dispatched."""
    config = _agent_config(args, check_services=True)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    summary = {
        "agent_name": config.name,
        "source": config.source,
        "enabled": config.enabled,
        "dispatch": "automatic" if config.automatic else "manual",
        "singleton": config.singleton,
        "registers_as": config.registration_name,
        "load_threshold": config.load_threshold,
        "services": {
            s.name: {"processing": s.processing, "provider": s.provider} for s in config.services.values()
        },
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    mode = (
        "joins every new room (automatic dispatch)"
        if config.automatic
        else f"joins only rooms it is dispatched to as '{config.name}'"
    )
    print(f"{config.source}: agent '{config.name}' {'enabled' if config.enabled else 'disabled'}; {mode}")
    for service in config.services.values():
        print(f"  {service.name}: processing {service.processing}, provider {service.provider}")


def cmd_agent_run(args: argparse.Namespace) -> None:
    """Run the agent's built-in services as a livekit-agents worker until SIGTERM."""
    from switchboard.agents.config import AgentConfigError
    from switchboard.agents.runner import run_builtin

    config = _agent_config(args, check_services=False)
    try:
        run_builtin(config)
    except AgentConfigError as exc:
        raise UsageError(str(exc)) from exc


# Parser


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", help=f"server URL (default: $LIVEKIT_URL, then {DEV_URL})")
    connection.add_argument("--api-key", help=f"API key (default: $LIVEKIT_API_KEY, then {DEV_KEY})")
    connection.add_argument(
        "--api-secret", help="API secret (default: $LIVEKIT_API_SECRET, then the dev secret)"
    )
    connection.add_argument("--json", action="store_true", help="print JSON instead of a table")

    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__)
    parser.add_argument(
        "--version",
        action="version",
        version=f"switchboard {__version__} (LiveKit {LIVEKIT_COMPATIBLE_VERSION} compatible, protocol "
        f"{LIVEKIT_PROTOCOL})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", help="YAML config file (default: $LIVEKIT_CONFIG holds the YAML text)")
    serve.add_argument("--dev", action="store_true", help="bind 127.0.0.1, key 'devkey', secret 'secret'")
    serve.add_argument("--port", type=int, help="HTTP port (default 7880)")
    serve.add_argument("--bind", action="append", help="address to bind (repeatable)")
    serve.add_argument("--keys", help="API keys as 'key: secret' (overrides the config and $LIVEKIT_KEYS)")
    serve.add_argument(
        "--agents", metavar="DIR", help="also run every enabled agent-*.yaml in DIR, supervised (agents_dir)"
    )
    serve.set_defaults(func=cmd_serve)

    token = commands.add_parser("token", help="access tokens").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create_token = token.add_parser("create", parents=[connection], help="mint an access token")
    create_token.add_argument("--room", help="room the token is for")
    create_token.add_argument("--identity", help="participant identity")
    create_token.add_argument("--name", help="participant display name")
    create_token.add_argument("--metadata", help="participant metadata")
    create_token.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE")
    create_token.add_argument("--join", action="store_true", help="grant roomJoin")
    create_token.add_argument("--admin", action="store_true", help="grant roomAdmin on --room")
    create_token.add_argument("--create", action="store_true", help="grant roomCreate")
    create_token.add_argument("--list", action="store_true", help="grant roomList")
    create_token.add_argument("--agent-worker", action="store_true", help="grant agent (worker registration)")
    create_token.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME[:METADATA]",
        help="dispatch this agent when the participant connects (roomConfig.agents; repeatable)",
    )
    create_token.add_argument("--valid-for", default="6h", help="lifetime, e.g. 30m, 1h, 2d (default 6h)")
    create_token.set_defaults(func=cmd_token_create)

    dispatch = commands.add_parser("dispatch", help="agent dispatches").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    d_create = dispatch.add_parser("create", parents=[connection], help="dispatch an agent to a room")
    d_create.add_argument("--room", required=True)
    d_create.add_argument("--agent-name", required=True)
    d_create.add_argument("--metadata")
    d_create.set_defaults(func=cmd_dispatch_create)
    d_list = dispatch.add_parser("list", parents=[connection], help="list a room's dispatches and their jobs")
    d_list.add_argument("--room", required=True)
    d_list.set_defaults(func=cmd_dispatch_list)
    d_get = dispatch.add_parser("get", parents=[connection], help="show one dispatch")
    d_get.add_argument("--room", required=True)
    d_get.add_argument("--id", required=True)
    d_get.set_defaults(func=cmd_dispatch_get)
    d_delete = dispatch.add_parser("delete", parents=[connection], help="delete a dispatch (ends its jobs)")
    d_delete.add_argument("--room", required=True)
    d_delete.add_argument("--id", required=True)
    d_delete.set_defaults(func=cmd_dispatch_delete)
    d_explain = dispatch.add_parser(
        "explain", parents=[connection], help="say why a room's jobs are where they are (pending, failed)"
    )
    d_explain.add_argument("--room", required=True)
    d_explain.add_argument("--id", help="only this dispatch")
    d_explain.set_defaults(func=cmd_dispatch_explain)

    worker = commands.add_parser("worker", help="connected agent workers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    w_list = worker.add_parser("list", parents=[connection], help="list the connected workers and their jobs")
    w_list.add_argument("--agent-name", action="append", default=[], help="only this agent's (repeatable)")
    w_list.set_defaults(func=cmd_worker_list)
    w_drain = worker.add_parser(
        "drain", parents=[connection], help="give a worker no new job; its jobs go on"
    )
    w_drain.add_argument("worker_id", metavar="WORKER_ID")
    w_drain.set_defaults(func=cmd_worker_drain)
    w_undrain = worker.add_parser(
        "undrain", parents=[connection], help="let a drained worker take jobs again"
    )
    w_undrain.add_argument("worker_id", metavar="WORKER_ID")
    w_undrain.set_defaults(func=cmd_worker_undrain)

    node = commands.add_parser("node", help="the nodes of a deployment on Redis").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    n_list = node.add_parser("list", parents=[connection], help="list the live nodes, their load and state")
    n_list.set_defaults(func=cmd_node_list)
    n_drain = node.add_parser(
        "drain", parents=[connection], help="place no new room on a node; its rooms go on"
    )
    n_drain.add_argument("node_id", metavar="ID", nargs="?", help="the node (default: the one --url reaches)")
    n_drain.set_defaults(func=cmd_node_drain)
    n_undrain = node.add_parser("undrain", parents=[connection], help="let a drained node take new rooms")
    n_undrain.add_argument(
        "node_id", metavar="ID", nargs="?", help="the node (default: the one --url reaches)"
    )
    n_undrain.set_defaults(func=cmd_node_undrain)

    room = commands.add_parser("room", help="rooms").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    r_create = room.add_parser("create", parents=[connection], help="create a room")
    r_create.add_argument("name")
    r_create.add_argument("--empty-timeout", type=int, default=0, help="seconds (default: server's)")
    r_create.add_argument("--departure-timeout", type=int, default=0, help="seconds (default: server's)")
    r_create.add_argument("--max-participants", type=int, default=0)
    r_create.add_argument("--metadata")
    r_create.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME[:METADATA]",
        help="dispatch this agent to the room (repeatable)",
    )
    r_create.set_defaults(func=cmd_room_create)
    r_list = room.add_parser("list", parents=[connection], help="list rooms")
    r_list.add_argument("names", nargs="*", help="only these rooms")
    r_list.set_defaults(func=cmd_room_list)
    r_delete = room.add_parser("delete", parents=[connection], help="delete a room")
    r_delete.add_argument("name")
    r_delete.set_defaults(func=cmd_room_delete)
    r_participants = room.add_parser("participants", parents=[connection], help="list a room's participants")
    r_participants.add_argument("name")
    r_participants.set_defaults(func=cmd_room_participants)
    agent = commands.add_parser("agent", help="agents described by agent-AGENT_NAME.yaml").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    a_check = agent.add_parser("check", help="validate an agent config and show how it is dispatched")
    a_check.add_argument(
        "config",
        nargs="?",
        help="agent-NAME.yaml (default: $AGENT_CONFIG_BODY, $AGENT_CONFIG_FILE, ./agent-*.yaml)",
    )
    a_check.add_argument("--json", action="store_true", help="print JSON")
    a_check.set_defaults(func=cmd_agent_check)
    a_run = agent.add_parser("run", help="run an agent's built-in services as a livekit-agents worker")
    a_run.add_argument(
        "config",
        nargs="?",
        help="agent-NAME.yaml (default: $AGENT_CONFIG_BODY, $AGENT_CONFIG_FILE, ./agent-*.yaml)",
    )
    a_run.set_defaults(func=cmd_agent_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UsageError, ConfigError) as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    except api.TwirpError as exc:
        print(f"switchboard: server error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except Failure as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 1
    except aiohttp.ClientConnectorError as exc:
        error = exc.os_error
        reason = os.strerror(error.errno).lower() if error.errno else str(error)
        print(
            f"switchboard: cannot reach the server at {_url(args)} ({reason}): is it running? "
            "(`make serve` starts one; --url or LIVEKIT_URL names another)",
            file=sys.stderr,
        )
        return 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        problem = str(exc) or "no answer in time"
        print(f"switchboard: cannot reach the server at {_url(args)}: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
