"""Helpers shared by the benchmarks: machine facts, CPU and memory readings, a server started for the run,
and the small pieces of the report (percentiles, verdicts).

A benchmark imports this as `common` (it runs as `python bench/NAME.py`, so bench/ is on the path).
"""

import contextlib
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from switchboard.auth.grants import VideoGrant
from switchboard.auth.tokens import mint_token

STARTUP_DEADLINE = 20.0
BUSY_CPU = 0.9  # a side using this much of its core is the one that limits the rate
NOISY_OTHER_CPU = 0.2  # more than this much of a core used by other processes disturbs the figures
TIMES = "\N{MULTIPLICATION SIGN}"  # by name: ruff (RUF001) flags the literal sign as ambiguous
SERVICE = "/twirp/livekit.AgentDispatchService"
# The SDK's own headers, so the server parses exactly what it parses in production.
USER_AGENT = "livekit-server-sdk-python/bench"
REQUEST_ID_HEADER = "X-Livekit-Request-Id"
TOKEN_TTL = 3600


@dataclass
class Server:
    url: str
    api_key: str
    api_secret: str
    pid: int | None = None  # only for a server this script started, whose CPU time it can read
    pinned: str = "not pinned"


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


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (a server's webhook delivery process, the agents it started and their job
    processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of the processes below it that still run (a server's webhook delivery
    process, for one: its work is the server's)."""
    total = process_cpu_seconds(pid)
    for child in descendants(pid):
        with contextlib.suppress(OSError):  # it ended between the listing and the reading
            total += process_cpu_seconds(child)
    return total


def process_rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB, from VmRSS in /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


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
    """CPU seconds used so far by this process, the server (if ours, with the processes it started) and
    the whole machine (if known)."""

    client: float
    server: float | None
    machine: float | None

    @classmethod
    def take(cls, server_pid: int | None) -> "CpuSample":
        server = process_tree_cpu_seconds(server_pid) if server_pid else None
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


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft open-files limit towards `wanted` (at most the hard limit); processes
    started afterwards inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    return soft


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


def new_secret() -> str:
    return "bench-secret-" + uuid.uuid4().hex  # long enough that the server is quiet


BENCH_API_KEY = "benchkey"
"""The API key of the servers `own_server` starts (a config can name it, as `webhook.api_key` does)."""


@contextmanager
def own_server(
    cpu: int | None, extra_config: Mapping[str, Any] | None = None, secret: str | None = None
) -> Iterator[Server]:
    """A fresh server on a free port, pinned to `cpu` so that its figure is one core's; always stopped.

    `extra_config` adds top-level keys to the config file (for instance an `agents` section); `secret`
    is the API secret (default: a fresh one), which the nodes of one cluster must share."""
    key, secret = BENCH_API_KEY, secret or new_secret()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as directory:
        config_path, log_path = Path(directory, "config.yaml"), Path(directory, "server.log")
        config = {
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "keys": {key: secret},
            "logging": {"level": "warning"},  # per-request logging would be part of the measurement
            **(extra_config or {}),
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


@contextmanager
def agents_server(agent_files: Mapping[str, str]) -> Iterator[Server]:
    """A fresh server, not pinned (its agents need the CPU too), that runs these agent-NAME.yaml files
    (name → text) from a directory of its own, with media on loopback."""
    with tempfile.TemporaryDirectory(prefix="switchboard-agents-") as directory:
        for name, text in agent_files.items():
            Path(directory, name).write_text(text)
        extra = {
            "rtc": {"ice_addresses": ["127.0.0.1"]},
            "agents_dir": directory,
            "agents": {"drain_timeout": 1},
        }
        with own_server(None, extra) as server:
            yield server


def choose_cpus() -> tuple[int, int | None]:
    """One CPU for the server and another for the load generator, when there are two to choose from."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return cpus[0], None
    return cpus[0], cpus[1]


# ---------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Call:
    """One request, prepared ahead so the timed loop spends as little client CPU as possible."""

    method: str
    url: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    twirp: bool = False  # Twirp calls get a fresh request id, as the SDK sends one per call


def token_for(server: Server, room: str) -> str:
    return mint_token(
        server.api_key, server.api_secret, video=VideoGrant(room_admin=True, room=room), ttl=TOKEN_TTL
    )


def twirp_call(server: Server, method: str, message: Any, room: str, service: str = SERVICE) -> Call:
    headers = {
        "Authorization": f"Bearer {token_for(server, room)}",
        "User-Agent": USER_AGENT,
        "Content-Type": "application/protobuf",
    }
    return Call("POST", f"{server.url}{service}/{method}", message.SerializeToString(), headers, twirp=True)


async def send(session: aiohttp.ClientSession, call: Call) -> tuple[int, bytes]:
    headers = {**call.headers, REQUEST_ID_HEADER: str(uuid.uuid4())} if call.twirp else call.headers
    async with session.request(call.method, call.url, data=call.body, headers=headers) as response:
        return response.status, await response.read()


# ---------------------------------------------------------------------------------------------- report


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the value at or below which `fraction` of the samples lie."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.0f}%"


def diagnose(server_cpu: float | None, client_cpu: float, other_cpu: float | None) -> str | None:
    """Why a phase's figure may not be the server's: a saturated client, or other load on the machine."""
    if other_cpu is not None and other_cpu > NOISY_OTHER_CPU:
        return f"other processes used {percent(other_cpu)} of a core: figures are noisy, rerun"
    if client_cpu >= BUSY_CPU and (server_cpu is None or server_cpu < BUSY_CPU):
        return "the load generator, not the server, is the bottleneck (server figure is a lower bound)"
    return None
