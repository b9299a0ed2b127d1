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
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from livekit.protocol import agent_dispatch as pb

from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token

SERVICE = "/twirp/livekit.AgentDispatchService"
AGENT_NAME = "bench-agent"
# The SDK's own headers, so the server parses exactly what it parses in production.
USER_AGENT = "livekit-server-sdk-python/bench"
REQUEST_ID_HEADER = "X-Livekit-Request-Id"
TOKEN_TTL = 3600
STARTUP_DEADLINE = 20.0
TARGET_P50_RATIO = 3.0
TARGET_CREATE_RPS = 1500.0
BUSY_CPU = 0.9  # a side using this much of its core is the one that limits the rate
NOISY_OTHER_CPU = 0.2  # more than this much of a core used by other processes disturbs the figures
TIMES = "\N{MULTIPLICATION SIGN}"  # by name: ruff (RUF001) flags the literal sign as ambiguous


@dataclass(frozen=True)
class Call:
    """One request, prepared ahead so the timed loop spends as little client CPU as possible."""

    method: str
    url: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    twirp: bool = False  # Twirp calls get a fresh request id, as the SDK sends one per call


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


@dataclass
class Server:
    url: str
    api_key: str
    api_secret: str
    pid: int | None = None  # only for a server this script started, whose CPU time it can read
    pinned: str = "not pinned"


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


# ---------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "aiohttp": aiohttp.__version__,
    }


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of another process, from /proc (fields 14 and 15 after the command name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU time all CPUs spent on anything but idle and iowait (steal included), from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return None
    ticks = [int(value) for value in first.split()[1:9]]  # guest time is already inside user and nice
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far by this process, the server (if ours) and the whole machine (if known)."""

    client: float
    server: float | None
    machine: float | None

    @classmethod
    def take(cls, server_pid: int | None) -> "CpuSample":
        server = process_cpu_seconds(server_pid) if server_pid else None
        return cls(time.process_time(), server, machine_busy_seconds())

    def usage_since(self, before: "CpuSample", seconds: float) -> tuple[float, float | None, float | None]:
        """Fractions of one core used by the client, the server and everything else."""
        client = (self.client - before.client) / seconds
        server = None
        if self.server is not None and before.server is not None:
            server = (self.server - before.server) / seconds
        other = None
        # Without the server's own figure (a --url server), the rest of the machine includes the server.
        if server is not None and self.machine is not None and before.machine is not None:
            other = max(0.0, (self.machine - before.machine) / seconds - client - server)
        return client, server, other


# ---------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url + "/", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not answer within {STARTUP_DEADLINE}s:\n{log_path.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def own_server(cpu: int | None) -> Iterator[Server]:
    """A fresh server on a free port, pinned to `cpu` so that its figure is one core's; always stopped."""
    key, secret = "benchkey", "bench-secret-" + uuid.uuid4().hex  # long enough that the server is quiet
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as directory:
        config_path, log_path = Path(directory, "config.yaml"), Path(directory, "server.log")
        config = {
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "keys": {key: secret},
            "logging": {"level": "warning"},  # per-request logging would be part of the measurement
        }
        config_path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "switchboard", "serve", "--config", str(config_path)]
        taskset = shutil.which("taskset")
        pinned = "not pinned (no taskset)" if cpu is None or taskset is None else f"pinned to CPU {cpu}"
        if cpu is not None and taskset is not None:
            command = [taskset, "-c", str(cpu), *command]  # taskset execs, so the pid is the server's
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(url, process, log_path)
            yield Server(url, key, secret, pid=process.pid, pinned=pinned)
        finally:
            stop(process)


def choose_cpus() -> tuple[int, int | None]:
    """One CPU for the server and another for the load generator, when there are two to choose from."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return cpus[0], None
    return cpus[0], cpus[1]


# ---------------------------------------------------------------------------------------------- requests


def token_for(server: Server, room: str) -> str:
    return mint_token(
        server.api_key, server.api_secret, video=VideoGrant(room_admin=True, room=room), ttl=TOKEN_TTL
    )


def twirp_call(server: Server, method: str, message: Any, room: str) -> Call:
    headers = {
        "Authorization": f"Bearer {token_for(server, room)}",
        "User-Agent": USER_AGENT,
        "Content-Type": "application/protobuf",
    }
    return Call("POST", f"{server.url}{SERVICE}/{method}", message.SerializeToString(), headers, twirp=True)


def create_call(server: Server, room: str) -> Call:
    request = pb.CreateAgentDispatchRequest(agent_name=AGENT_NAME, room=room, metadata='{"bench": true}')
    return twirp_call(server, "CreateDispatch", request, room)


def list_call(server: Server, room: str) -> Call:
    return twirp_call(server, "ListDispatch", pb.ListAgentDispatchRequest(room=room), room)


async def send(session: aiohttp.ClientSession, call: Call) -> tuple[int, bytes]:
    headers = {**call.headers, REQUEST_ID_HEADER: str(uuid.uuid4())} if call.twirp else call.headers
    async with session.request(call.method, call.url, data=call.body, headers=headers) as response:
        return response.status, await response.read()


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


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the value at or below which `fraction` of the samples lie."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


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


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


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


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.0f}%"


def diagnose(result: PhaseResult) -> str | None:
    """Why a phase's figure may not be the server's: a saturated client, or other load on the machine."""
    if result.other_cpu is not None and result.other_cpu > NOISY_OTHER_CPU:
        return f"other processes used {percent(result.other_cpu)} of a core: figures are noisy, rerun"
    if result.client_cpu >= BUSY_CPU and (result.server_cpu is None or result.server_cpu < BUSY_CPU):
        return "the load generator, not the server, is the bottleneck (server figure is a lower bound)"
    return None


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
    notes = [(r.phase, note) for r in results if (note := diagnose(r))]
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
            "phases": [{**asdict(r), "note": diagnose(r)} for r in results],
            "checks": [{k: v for k, v in c.items() if k != "text"} for c in checks],
        }
        print(json.dumps(document, indent=2))
    else:
        print_report(info, setup, results, checks)
    print_errors(named)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
