"""Show that the server stays responsive while it is being abused.

A normal CreateDispatch (protobuf, a valid token, one request at a time on a keep-alive connection, as the
SDK sends it) is timed over a fixed number of calls with no abuse, then under each abuse in turn, and once
more after all of them; each p50/p99 is printed beside the no-abuse floor. The calls are paced (one every
--interval) so that a phase spans seconds of its abuse, and after each phase the script waits until the
server is idle again. The abuses, each from this process, bounded in count and lasting one phase:

  anonymous-10MB   2 clients loop 10 MB bodies with no Authorization header, as fast as they can
  stalled-uploads  authenticated requests declaring a 10 MB body, sending 1 byte of it, then nothing
  slowloris        request heads that never end: one more header byte per connection every second
  idle-keepalive   connections that made one request and then sit idle
  agent-garbage    a few /agent clients sending malformed frames, reconnecting whenever closed
  rtc-garbage      a few joined /rtc participants sending malformed signal frames as fast as they can

The server is started on a free port on 127.0.0.1, pinned to one core, with its default limits; the
load comes from the other core. Everything talks to 127.0.0.1 only.

    .venv/bin/python bench/abuse.py [--calls N] [--interval S] [--connections N] [--idle N]
                                    [--flooders N] [--frames N] [--only NAME ...] [--json]
"""

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from livekit.protocol import agent_dispatch as pb

from common import (
    TIMES,
    Call,
    CpuSample,
    Server,
    choose_cpus,
    diagnose,
    machine,
    own_server,
    percent,
    percentile,
    process_rss_kib,
    raise_fd_limit,
    send,
    twirp_call,
)
from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token

AGENT_NAME = "abuse-probe"
TEN_MB = 10 * 1024 * 1024
CHUNK = 256 * 1024
LIST_ROOMS = "/twirp/livekit.RoomService/ListRooms"
WARMUP_CALLS = 20
CALL_TIMEOUT = 30.0  # one probe call; far above any figure worth printing, far below "hung"
RAMP_DEADLINE = 60.0  # for an abuse to reach its full strength before the probe starts
CONNECT_CONCURRENCY = 50
SLOWLORIS_INTERVAL = 1.0
GARBAGE = b"\xff\xff\xff\xff\x0f"  # not a protobuf message of any type
YIELD_EVERY = 64
CLOSE_DEADLINE = 1.0
SETTLE_CPU = 0.1  # between phases, the server is idle again when it uses less than this much of its core
SETTLE_WINDOW = 0.25
SETTLE_DEADLINE = 60.0


# ---------------------------------------------------------------------------------------------- abuse


@dataclass
class AbuseTally:
    """What one abuse did, counted while it ran."""

    open: int = 0  # connections of this abuse open right now
    opened: int = 0
    closed_by_server: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # HTTP answers the abuse received
    bytes_sent: int = 0
    frames_sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        parts = [f"{self.opened} connections", f"{self.closed_by_server} closed by the server"]
        if self.statuses:
            parts.append(
                "answers " + ", ".join(f"{n}{TIMES}{code}" for code, n in sorted(self.statuses.items()))
            )
        if self.bytes_sent:
            size = self.bytes_sent
            parts.append(f"{size / 1e6:.0f} MB sent" if size >= 1e6 else f"{size / 1e3:.0f} kB sent")
        if self.frames_sent:
            parts.append(f"{self.frames_sent} frames sent")
        if self.errors:
            parts.append(
                "client errors " + ", ".join(f"{n}{TIMES}{e}" for e, n in self.errors.most_common(2))
            )
        return "; ".join(parts)


@dataclass(frozen=True)
class Target:
    server: Server
    host: str
    port: int
    session: aiohttp.ClientSession
    connecting: asyncio.Semaphore  # connections are opened a bounded number at a time (finite accept queue)
    frames: int  # malformed frames each flooding client sends in a phase, at most


def raw_head(path: str, *lines: str, method: str = "POST") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *lines, "", ""]).encode()


async def read_status(reader: asyncio.StreamReader) -> int | None:
    """The status of the next response head, or None if the server closed first."""
    try:
        line = await reader.readline()
        if not line:
            return None
        await reader.readuntil(b"\r\n\r\n")
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    return int(line.split()[1])


async def until_closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


@contextlib.asynccontextmanager
async def raw_connection(target: Target, tally: AbuseTally) -> Any:
    async with target.connecting:
        reader, writer = await asyncio.open_connection(target.host, target.port)
    tally.opened += 1
    tally.open += 1
    try:
        yield reader, writer
    finally:
        tally.open -= 1
        writer.transport.abort()  # no FIN handshake to wait for: the next one starts at once


async def anonymous_10mb(target: Target, tally: AbuseTally) -> None:
    """Loop a 10 MB body with no credentials: the server should refuse it from the head alone."""
    head = raw_head(LIST_ROOMS, "Content-Type: application/json", f"Content-Length: {TEN_MB}")
    chunk = b" " * CHUNK
    while True:
        async with raw_connection(target, tally) as (reader, writer):
            answer = asyncio.create_task(read_status(reader))
            writer.write(head)
            with contextlib.suppress(ConnectionError):  # the server closes once it has answered
                for _ in range(TEN_MB // CHUNK):
                    if answer.done():
                        break
                    writer.write(chunk)
                    await writer.drain()
                    tally.bytes_sent += CHUNK
            status = await answer
            if status is None:
                tally.errors["closed without an answer"] += 1
            else:
                tally.statuses[status] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until_closed(reader), 5)
                tally.closed_by_server += 1


async def hold(target: Target, tally: AbuseTally, opening: bytes, trickle: bytes = b"") -> None:
    """One connection at a time, until cancelled: send `opening`, then `trickle` every second (if any),
    and open the next connection as soon as the server closes this one."""
    while True:
        async with raw_connection(target, tally) as (reader, writer):
            writer.write(opening)
            tally.bytes_sent += len(opening)
            closed = asyncio.create_task(until_closed(reader))
            while not closed.done():
                if not trickle:
                    await closed
                    break
                await asyncio.wait({closed}, timeout=SLOWLORIS_INTERVAL)
                if not closed.done():
                    writer.write(trickle)
                    tally.bytes_sent += len(trickle)
            tally.closed_by_server += 1


async def stalled_upload(target: Target, tally: AbuseTally) -> None:
    token = mint_token(target.server.api_key, target.server.api_secret, video=VideoGrant(room_list=True))
    head = raw_head(
        LIST_ROOMS,
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {TEN_MB}",
    )
    await hold(target, tally, head + b"{")


async def slowloris(target: Target, tally: AbuseTally) -> None:
    await hold(
        target,
        tally,
        b"POST " + LIST_ROOMS.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ",
        b"a",
    )


async def idle_keepalive(target: Target, tally: AbuseTally) -> None:
    while True:
        async with raw_connection(target, tally) as (reader, writer):
            writer.write(raw_head("/", method="GET"))
            status = await read_status(reader)
            if status is not None:
                tally.statuses[status] += 1
                await reader.readexactly(2)  # "OK"
            await until_closed(reader)
            tally.closed_by_server += 1


WS_ENDED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


async def read_until_closed(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Read and drop frames until the server closes: reading also answers its pings."""
    while (await ws.receive()).type not in WS_ENDED:
        pass


async def flood(ws: aiohttp.ClientWebSocketResponse, tally: AbuseTally, budget: int) -> int:
    """Send up to `budget` malformed frames on `ws`, then wait for the server to close it: the frames sent."""
    reading = asyncio.create_task(read_until_closed(ws))
    sent = 0
    try:
        while not reading.done() and sent < budget:
            await ws.send_bytes(GARBAGE)
            sent += 1
            tally.frames_sent += 1
            if sent % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a send that needs no drain does not yield: let the probe run
        await reading
        tally.closed_by_server += 1
    except (ConnectionError, aiohttp.ClientError) as exc:
        tally.errors[type(exc).__name__] += 1
    finally:
        reading.cancel()
        with contextlib.suppress(TimeoutError, aiohttp.ClientError, ConnectionError):
            await asyncio.wait_for(ws.close(), CLOSE_DEADLINE)
    return sent


async def keep_flooding(target: Target, tally: AbuseTally, url: str, headers: dict[str, str]) -> None:
    """Connect to the WebSocket at `url` and flood it (`flood`), again whenever the server closes it, until
    this client's frame budget is spent."""
    budget = target.frames
    while True:
        try:
            ws = await target.session.ws_connect(url, headers=headers)
        except aiohttp.ClientError as exc:
            tally.errors[type(exc).__name__] += 1
            continue
        tally.opened += 1
        tally.open += 1
        try:
            budget -= await flood(ws, tally, budget)
        finally:
            tally.open -= 1


async def agent_garbage(target: Target, tally: AbuseTally) -> None:
    token = mint_token(target.server.api_key, target.server.api_secret, video=VideoGrant(agent=True))
    await keep_flooding(target, tally, f"{target.server.url}/agent", {"Authorization": f"Bearer {token}"})


async def rtc_garbage(target: Target, tally: AbuseTally) -> None:
    identity = f"garbage-{uuid.uuid4().hex[:8]}"
    video = VideoGrant(room_join=True, room="abuse-rtc")
    token = mint_token(target.server.api_key, target.server.api_secret, video=video, identity=identity)
    await keep_flooding(target, tally, f"{target.server.url}/rtc?access_token={token}&protocol=15", {})


@dataclass(frozen=True)
class Abuse:
    name: str
    what: str
    run: Callable[[Target, AbuseTally], Coroutine[Any, Any, None]]
    clients: int

    @property
    def full_strength(self) -> int:
        """Open connections at which the probe starts."""
        return self.clients


def abuses(args: argparse.Namespace) -> list[Abuse]:
    return [
        Abuse("anonymous-10MB", "2 clients looping anonymous 10 MB bodies", anonymous_10mb, 2),
        Abuse(
            "stalled-uploads",
            f"{args.connections} authenticated 10 MB uploads stalled after 1 byte",
            stalled_upload,
            args.connections,
        ),
        Abuse("slowloris", f"{args.connections} request heads growing 1 byte/s", slowloris, args.connections),
        Abuse("idle-keepalive", f"{args.idle} idle keep-alive connections", idle_keepalive, args.idle),
        Abuse(
            "agent-garbage",
            f"{args.flooders} /agent clients sending malformed frames",
            agent_garbage,
            args.flooders,
        ),
        Abuse(
            "rtc-garbage",
            f"{args.flooders} /rtc participants sending malformed frames",
            rtc_garbage,
            args.flooders,
        ),
    ]


# ---------------------------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class PhaseResult:
    phase: str
    what: str
    calls: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu: float | None
    client_cpu: float
    other_cpu: float | None
    server_rss_mb: float | None
    abuse: str
    settle_s: float  # after the phase, until the server was idle again
    error_samples: list[str]


def probe_calls(server: Server, phase: str) -> list[Call]:
    calls = []
    for i in range(50):
        room = f"abuse-{phase}-{i}"
        request = pb.CreateAgentDispatchRequest(agent_name=AGENT_NAME, room=room, metadata='{"bench": true}')
        calls.append(twirp_call(server, "CreateDispatch", request, room))
    return calls


async def probe(server: Server, phase: str, count: int, interval: float) -> tuple[list[float], list[str]]:
    """`count` CreateDispatch calls, one at a time on one keep-alive connection, one every `interval`
    seconds (at once when the previous one ran late), so that the phase spans the abuse's effects rather
    than a tenth of a second of them: the latencies, and the failures."""
    calls = probe_calls(server, phase)
    latencies: list[float] = []
    failures: list[str] = []
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        next_call = time.perf_counter()
        for i in range(WARMUP_CALLS + count):
            call = calls[i % len(calls)]
            if i >= WARMUP_CALLS:  # pacing, not polling: a normal client calls now and then
                await asyncio.sleep(max(0.0, next_call - time.perf_counter()))
                next_call += interval
            started = time.perf_counter()
            try:
                status, body = await send(session, call)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failures.append(repr(exc))
                continue
            elapsed = time.perf_counter() - started
            if status != 200:
                failures.append(f"HTTP {status} {body[:100]!r}")
            elif i >= WARMUP_CALLS:
                latencies.append(elapsed)
            if i == WARMUP_CALLS - 1:
                next_call = time.perf_counter()
    return latencies, failures


async def ramp(abuse: Abuse, tally: AbuseTally, tasks: Sequence[asyncio.Task[None]]) -> None:
    """Wait (with a deadline) until the abuse is at full strength: its connections open, or for the
    looping ones, a first full round done."""
    deadline = time.monotonic() + RAMP_DEADLINE
    looping = abuse.name in ("anonymous-10MB",)
    while True:
        stopped = [task for task in tasks if task.done()]
        if stopped:
            raise RuntimeError(f"{abuse.name}: a client stopped: {stopped[0].exception()!r}")
        strong = (
            (sum(tally.statuses.values()) >= abuse.clients) if looping else tally.open >= abuse.full_strength
        )
        if strong:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{abuse.name}: not at full strength within {RAMP_DEADLINE:g}s: {tally.summary()}"
            )
        await asyncio.sleep(0.05)


async def settle(server: Server) -> float:
    """Wait (with a deadline) until the server is idle again, so that what one abuse left behind (a backlog
    of frames, connections being torn down) is not counted in the next phase: the seconds it took."""
    if server.pid is None:
        return 0.0
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_DEADLINE:
        before = CpuSample.take(server.pid)
        await asyncio.sleep(SETTLE_WINDOW)
        _, server_cpu, _ = CpuSample.take(server.pid).usage_since(before, SETTLE_WINDOW)
        if server_cpu is not None and server_cpu < SETTLE_CPU:
            break
    return time.monotonic() - started


async def run_phase(
    target: Target, name: str, what: str, abuse: Abuse | None, args: argparse.Namespace
) -> PhaseResult:
    server = target.server
    tally = AbuseTally()
    tasks: list[asyncio.Task[None]] = []
    if abuse is not None:
        tasks = [asyncio.create_task(abuse.run(target, tally)) for _ in range(abuse.clients)]
    try:
        if abuse is not None:
            await ramp(abuse, tally, tasks)
        before = CpuSample.take(server.pid)
        started = time.perf_counter()
        latencies, failures = await probe(server, name, args.calls, args.interval)
        seconds = time.perf_counter() - started
        client_cpu, server_cpu, other_cpu = CpuSample.take(server.pid).usage_since(before, seconds)
        rss = process_rss_kib(server.pid) / 1024 if server.pid else None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    settled = await settle(server)
    latencies.sort()
    return PhaseResult(
        phase=name,
        what=what,
        calls=len(latencies),
        errors=len(failures),
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] if latencies else float("nan")) * 1000,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        other_cpu=other_cpu,
        server_rss_mb=rss,
        abuse=tally.summary() if abuse is not None else "",
        settle_s=settled,
        error_samples=failures[:3],
    )


async def bench(server: Server, args: argparse.Namespace) -> list[PhaseResult]:
    host, port = server.url.removeprefix("http://").split(":")
    chosen = [a for a in abuses(args) if not args.only or a.name in args.only]
    # Unlimited connections: the abuses open many at once, and the server must bear them, not the pool.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        target = Target(server, host, int(port), session, asyncio.Semaphore(CONNECT_CONCURRENCY), args.frames)
        await settle(server)
        results = [await run_phase(target, "no abuse", "the floor", None, args)]
        for abuse in chosen:
            results.append(await run_phase(target, abuse.name, abuse.what, abuse, args))
        results.append(await run_phase(target, "after", "no abuse again", None, args))
    return results


# ---------------------------------------------------------------------------------------------- report


def print_report(info: dict[str, Any], setup: dict[str, Any], results: Sequence[PhaseResult]) -> None:
    print(f"machine: nproc={info['nproc']}  cpu={info['cpu_model']}  python={info['python']}")
    print(
        f"setup:   server {setup['server']} ({setup['url']}, default limits), load {setup['client']}, "
        f"{setup['calls']} CreateDispatch calls per phase, one at a time, one every {setup['interval']:g} s"
    )
    print()
    floor = results[0]
    ratio = f"{TIMES} floor"
    header = f"{'phase':<17}{'p50 ms':>8}{ratio:>9}{'p99 ms':>8}{ratio:>9}{'max ms':>8}{'errors':>8}"
    print(header + f"{'server CPU':>12}{'client CPU':>12}{'other CPU':>11}{'server RSS':>12}")
    for r in results:
        print(
            f"{r.phase:<17}{r.p50_ms:>8.2f}{r.p50_ms / floor.p50_ms:>8.1f}{TIMES}{r.p99_ms:>8.2f}"
            f"{r.p99_ms / floor.p99_ms:>8.1f}{TIMES}{r.max_ms:>8.1f}{r.errors:>8}{percent(r.server_cpu):>12}"
            f"{percent(r.client_cpu):>12}{percent(r.other_cpu):>11}"
            f"{'-' if r.server_rss_mb is None else f'{r.server_rss_mb:.0f} MB':>12}"
        )
    print()
    for r in results:
        if r.abuse:
            print(f"{r.phase}: {r.what}: {r.abuse}; the server was idle again {r.settle_s:.1f} s after it")
    print()
    for r in results:
        note = diagnose(r.server_cpu, r.client_cpu, r.other_cpu)
        if note:
            print(f"note: {r.phase}: {note}")
        for sample in r.error_samples:
            print(f"error in {r.phase}: {sample}", file=sys.stderr)
    if any(r.errors for r in results):
        print(f"\nFAILED: {sum(r.errors for r in results)} probe calls were not answered 200")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="CreateDispatch calls per phase (default 300)")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.02,
        help="seconds from one call's start to the next (default 0.02)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=200,
        help="stalled uploads, and slowloris connections (default 200)",
    )
    parser.add_argument("--idle", type=int, default=1000, help="idle keep-alive connections (default 1000)")
    parser.add_argument(
        "--flooders", type=int, default=3, help="clients sending malformed frames (default 3)"
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=200_000,
        help="malformed frames per flooding client and phase (default 200000)",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these abuses (names as listed above)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    args = parser.parse_args(argv)
    if args.interval < 0:
        parser.error("--interval cannot be negative")
    if min(args.calls, args.connections, args.idle, args.flooders, args.frames) < 1:
        parser.error("--calls, --connections, --idle, --flooders and --frames must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()  # before pinning, so nproc counts the whole machine
    # Both sides hold every abusive connection; the server, started after this, inherits the limit.
    wanted = args.idle + 2 * args.connections + 1024
    if raise_fd_limit(wanted) < wanted:
        print(
            f"bench: the open-files limit is below {wanted}; lower --idle or --connections", file=sys.stderr
        )
        return 1
    server_cpu, client_cpu = choose_cpus()
    try:
        with own_server(server_cpu) as server:
            if client_cpu is not None:  # after the server started, so that it does not inherit this
                os.sched_setaffinity(0, {client_cpu})
            import uvloop

            results = uvloop.run(bench(server, args))
    except (RuntimeError, aiohttp.ClientError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    setup = {
        "url": server.url,
        "server": server.pinned,
        "client": f"pinned to CPU {client_cpu}" if client_cpu is not None else "sharing the CPU",
        "calls": args.calls,
        "interval": args.interval,
    }
    if args.json:
        print(json.dumps({"machine": info, "setup": setup, "phases": [asdict(r) for r in results]}, indent=2))
    else:
        print_report(info, setup, results)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
