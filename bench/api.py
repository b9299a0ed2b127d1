"""Benchmark the Twirp API as the Python livekit-api SDK calls it, against the `GET /` floor.

Prints a table (phase, requests, req/s, p50, p99, CPU use of both sides) and checks two targets:
CreateDispatch p50 within 3x the floor's, and at least 1500 CreateDispatch/s on one server core.

By default it starts its own server pinned to one CPU and drives it from another; with --url it benches
a running server instead (which then keeps the rooms and dispatches this script creates).

    .venv/bin/python bench/api.py [--duration S | --requests N] [--concurrency C] [--json]
"""

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
    send,
    twirp_call,
    verdict,
)

AGENT_NAME = "bench-agent"
TARGET_P50_RATIO = 3.0
TARGET_CREATE_RPS = 1500.0


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)  # the first few failures, to say what went wrong

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 3 and what not in self.samples:
            self.samples.append(what)


@dataclass(frozen=True)
class PhaseResult:
    phase: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    client_cpu: float  # fraction of one core used by this process while the phase ran
    server_cpu: float | None  # likewise for the server, when this script started it
    other_cpu: float | None  # likewise for everything else on the machine: other load makes figures noisy


@dataclass(frozen=True)
class Budget:
    """Each phase runs for a fixed number of requests, or else for a fixed duration."""

    requests: int | None
    duration: float

    def stop_rule(self, start: float) -> Callable[[int], bool]:
        if self.requests is not None:
            limit = self.requests
            return lambda index: index >= limit
        deadline = start + self.duration
        return lambda _: time.perf_counter() >= deadline


# ---------------------------------------------------------------------------------------------- requests


def create_call(server: Server, room: str) -> Call:
    request = pb.CreateAgentDispatchRequest(agent_name=AGENT_NAME, room=room, metadata='{"bench": true}')
    return twirp_call(server, "CreateDispatch", request, room)


def list_call(server: Server, room: str) -> Call:
    return twirp_call(server, "ListDispatch", pb.ListAgentDispatchRequest(room=room), room)


# ---------------------------------------------------------------------------------------------- load


async def worker(
    session: aiohttp.ClientSession,
    calls: Sequence[Call],
    counter: Iterator[int],
    should_stop: Callable[[int], bool],
    tally: Tally,
) -> None:
    clock = time.perf_counter
    while not should_stop(index := next(counter)):
        call = calls[index % len(calls)]
        started = clock()
        try:
            status, body = await send(session, call)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            tally.fail(f"{call.url}: {exc!r}")
            continue
        tally.latencies.append(clock() - started)
        if status != 200:
            tally.fail(f"{call.url}: HTTP {status} {body[:200]!r}")


async def drive(
    session: aiohttp.ClientSession, calls: Sequence[Call], budget: Budget, concurrency: int
) -> tuple[Tally, float]:
    """Run `concurrency` workers over `calls` (round robin) until the budget is spent; returns wall time."""
    tally = Tally()
    counter = itertools.count()
    started = time.perf_counter()
    should_stop = budget.stop_rule(started)
    await asyncio.gather(*(worker(session, calls, counter, should_stop, tally) for _ in range(concurrency)))
    return tally, time.perf_counter() - started


async def run_phase(
    name: str,
    session: aiohttp.ClientSession,
    server: Server,
    calls: Sequence[Call],
    budget: Budget,
    warmup: float,
    concurrency: int,
) -> tuple[PhaseResult, Tally]:
    # Warm-up opens the keep-alive connections and warms the server (rooms exist, allocator and caches
    # are warm); its timings are discarded, but its failures count with the phase's.
    warm, _ = await drive(session, calls, Budget(None, warmup), concurrency)
    before = CpuSample.take(server.pid)
    tally, seconds = await drive(session, calls, budget, concurrency)
    client_cpu, server_cpu, other_cpu = CpuSample.take(server.pid).usage_since(before, seconds)
    tally.errors += warm.errors
    tally.samples = (warm.samples + tally.samples)[:3]
    latencies = sorted(tally.latencies)
    result = PhaseResult(
        phase=name,
        requests=len(latencies),
        errors=tally.errors,
        seconds=seconds,
        rps=len(latencies) / seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        client_cpu=client_cpu,
        server_cpu=server_cpu,
        other_cpu=other_cpu,
    )
    return result, tally


async def seed_list_rooms(
    session: aiohttp.ClientSession, server: Server, prefix: str, rooms: int, per_room: int
) -> list[str]:
    """Fresh rooms holding `per_room` dispatches each (plus the automatic one), so ListDispatch answers
    are of a realistic size."""
    names = [f"{prefix}-list-{i}" for i in range(rooms)]
    creates = [create_call(server, room) for room in names for _ in range(per_room)]
    results = await asyncio.gather(*(send(session, call) for call in creates))
    failed = [(status, body) for status, body in results if status != 200]
    if failed:
        status, body = failed[0]
        raise RuntimeError(
            f"seeding ListDispatch rooms failed: {len(failed)} non-200 answers, "
            f"the first HTTP {status} {body[:200]!r}"
        )
    status, body = await send(session, list_call(server, names[0]))
    listed = pb.ListAgentDispatchResponse.FromString(body).agent_dispatches if status == 200 else []
    # Besides ours, each room holds the automatic dispatch (empty agent name) that creating it added.
    ours = sum(dispatch.agent_name == AGENT_NAME for dispatch in listed)
    if ours != per_room:
        raise RuntimeError(f"a seeded room lists {ours} of our dispatches, expected {per_room}")
    return names


async def bench(server: Server, args: argparse.Namespace) -> list[tuple[PhaseResult, Tally]]:
    budget = Budget(args.requests, args.duration)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"  # so that a shared server's earlier runs do not interfere
    # Keep-alive connections, one per worker, as a long-lived SDK client would hold them.
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Tokens are minted here, outside the timed loop: minting is the client's cost, not the server's.
        floor = [Call("GET", f"{server.url}/")]
        creates = [create_call(server, f"{prefix}-create-{i}") for i in range(args.rooms)]
        list_rooms = await seed_list_rooms(session, server, prefix, args.list_rooms, args.per_room)
        lists = [list_call(server, room) for room in list_rooms]
        phases = [("GET /", floor), ("CreateDispatch", creates), ("ListDispatch", lists)]
        return [
            await run_phase(name, session, server, calls, budget, args.warmup, args.concurrency)
            for name, calls in phases
        ]


# ---------------------------------------------------------------------------------------------- report


def comparisons(results: Sequence[PhaseResult], where: str) -> list[dict[str, Any]]:
    by_name = {result.phase: result for result in results}
    floor, create = by_name["GET /"], by_name["CreateDispatch"]
    ratio = create.p50_ms / floor.p50_ms if floor.p50_ms else float("inf")
    return [
        {
            "name": "create_p50_ratio",
            "value": ratio,
            "target": TARGET_P50_RATIO,
            "pass": ratio <= TARGET_P50_RATIO,
            "text": f"CreateDispatch p50 = {create.p50_ms:.2f} ms = {ratio:.2f}{TIMES} the GET / floor "
            f"(target ≤ {TARGET_P50_RATIO:g}{TIMES})",
        },
        {
            "name": "create_rps",
            "value": create.rps,
            "target": TARGET_CREATE_RPS,
            "pass": create.rps >= TARGET_CREATE_RPS,
            "text": f"CreateDispatch throughput = {create.rps:.0f} req/s on {where} "
            f"(target ≥ {TARGET_CREATE_RPS:g}/s)",
        },
    ]


def note_for(result: PhaseResult) -> str | None:
    return diagnose(result.server_cpu, result.client_cpu, result.other_cpu)


def print_report(
    info: dict[str, Any], setup: dict[str, Any], results: Sequence[PhaseResult], checks: list[dict[str, Any]]
) -> None:
    print(f"machine: nproc={info['nproc']}  cpu={info['cpu_model']}  python={info['python']}")
    print(
        f"setup:   server {setup['server']} ({setup['url']}), load generator {setup['client']}, "
        f"loop={setup['loop']}, concurrency={setup['concurrency']}, {setup['budget']} per phase"
    )
    print()
    header = f"{'phase':<16}{'requests':>10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"
    print(header + f"{'server CPU':>12}{'client CPU':>12}{'other CPU':>11}")
    for r in results:
        print(
            f"{r.phase:<16}{r.requests:>10}{r.rps:>10.0f}{r.p50_ms:>10.2f}{r.p99_ms:>10.2f}{r.errors:>8}"
            f"{percent(r.server_cpu):>12}{percent(r.client_cpu):>12}{percent(r.other_cpu):>11}"
        )
    print()
    notes = [(r.phase, note) for r in results if (note := note_for(r))]
    for phase, note in notes:
        print(f"note: {phase}: {note}")
    if notes:
        print()
    for check in checks:
        print(f"{check['text']}  {verdict(check['pass'])}")
    errors = sum(r.errors for r in results)
    if errors:
        print(f"\nFAILED: {errors} requests (warm-up included) were not answered 200; samples on stderr")


def print_errors(named: Sequence[tuple[PhaseResult, Tally]]) -> None:
    for result, tally in named:
        for sample in tally.samples:
            print(f"error in {result.phase}: {sample}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", help="bench this running server instead of starting one")
    parser.add_argument("--api-key", help="API key of the --url server")
    parser.add_argument("--api-secret", help="API secret of the --url server")
    parser.add_argument("--requests", type=int, help="requests per phase (default: run for --duration)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per phase (default 1)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent workers (default 16)")
    parser.add_argument("--rooms", type=int, default=200, help="rooms CreateDispatch spreads over")
    parser.add_argument("--list-rooms", type=int, default=100, help="rooms ListDispatch reads")
    parser.add_argument("--per-room", type=int, default=3, help="dispatches in each ListDispatch room")
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="load generator's event loop (default uvloop: a lighter client loads the server harder)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    args = parser.parse_args(argv)
    if args.url and not (args.api_key and args.api_secret):
        parser.error("--url needs --api-key and --api-secret")
    if args.concurrency < 1 or (args.requests is not None and args.requests < 1):
        parser.error("--concurrency and --requests must be at least 1")
    return args


def run_loop(args: argparse.Namespace, server: Server) -> list[tuple[PhaseResult, Tally]]:
    if args.loop == "uvloop":
        import uvloop

        return uvloop.run(bench(server, args))
    return asyncio.run(bench(server, args))


@contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[Server, str]]:
    """The server to bench, and where the load generator runs (described for the report)."""
    if args.url:
        yield Server(args.url.rstrip("/"), args.api_key, args.api_secret, pinned="given by --url"), "unpinned"
        return
    server_cpu, client_cpu = choose_cpus()
    with own_server(server_cpu) as server:
        # Pinned after the server started, so that the server does not inherit this affinity.
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        yield server, f"pinned to CPU {client_cpu}" if client_cpu is not None else "sharing the CPU"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()  # before pinning, so nproc counts the whole machine
    try:
        with target(args) as (server, client):
            named = run_loop(args, server)
    except (RuntimeError, aiohttp.ClientError, OSError) as exc:  # no server, or set-up requests refused
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    results = [result for result, _ in named]
    checks = comparisons(results, "one core" if server.pid else "the --url server")
    budget = f"{args.requests} requests" if args.requests is not None else f"{args.duration:g} s"
    setup = {
        "url": server.url,
        "server": server.pinned,
        "client": client,
        "loop": args.loop,
        "concurrency": args.concurrency,
        "budget": budget,
    }
    if args.json:
        document = {
            "machine": info,
            "setup": setup,
            "phases": [{**asdict(r), "note": note_for(r)} for r in results],
            "checks": [{k: v for k, v in c.items() if k != "text"} for c in checks],
        }
        print(json.dumps(document, indent=2))
    else:
        print_report(info, setup, results, checks)
    print_errors(named)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
