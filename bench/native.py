"""bench/loadgen.c from Python: built with the machine's C compiler, given a plan (the calls and the worker
messages, made here with the same code as the Python client's), run, and its report read back.

The plan file is binary: the magic `SBLG1\\n`, then little-endian u32 numbers and blobs (a u32 length, then
the bytes), in the order `write_plan` writes them and loadgen.c's `read_plan` reads them.
"""

import asyncio
import base64
import contextlib
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from livekit.protocol import agent

from common import Call, Server
from dispatch import (
    AVAILABLE,
    REGISTER,
    STATUS_STEP,
    accept,
    job_update,
    status_reports_per_step,
    worker_token,
)
from wire import OP_BINARY, TIMEOUT, accept_value, client_frame, request_bytes, upgrade_request

SOURCE = Path(__file__).with_name("loadgen.c")
JOB_ID = "AJ_" + "X" * 12
"""Stands for the job id in the worker message templates: as long as the server's (AJ_ and 12 characters)."""
WS_KEY = base64.b64encode(b"switchboard-benc")  # any 16 bytes: the server only answers with its digest
READY_DEADLINE = 120.0  # every worker registered and every caller connected
FINISH_DEADLINE = 10.0
REPORT_LIMIT = 1 << 30  # the report is read whole: a line per call and per assignment


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def build(directory: Path) -> Path:
    """loadgen.c compiled into `directory`."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc) for bench/loadgen.c; use --client python")
    binary = directory / "loadgen"
    done = subprocess.run([cc, "-O2", "-o", str(binary), str(SOURCE)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cc bench/loadgen.c failed:\n{done.stderr}")
    return binary


@dataclass(frozen=True)
class Plan:
    nodes: Sequence[Server]
    duration: float
    drain: float
    callers_per_node: int
    status_interval: float
    worker_nodes: Sequence[int]
    """The node each worker connects to, by worker index."""
    calls: Sequence[tuple[int, str, Call]]
    """(node index, room, CreateDispatch) in the order each node's callers take them."""


def _template(payload: bytes, count: int) -> bytes:
    placeholder = JOB_ID.encode()
    offsets, at = [], -1
    for _ in range(count):
        at = payload.index(placeholder, at + 1)
        offsets.append(at)
    return _blob(payload) + b"".join(struct.pack("<I", offset) for offset in offsets)


def _blob(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def write_plan(plan: Plan, path: Path) -> None:
    u32 = struct.Struct("<I").pack
    parts = [b"SBLG1\n", u32(len(plan.nodes))]
    ports = [urlsplit(node.url).port for node in plan.nodes]
    parts += [u32(port or 0) for port in ports]
    parts += [
        u32(round(plan.duration * 1000)),
        u32(round(plan.drain * 1000)),
        u32(plan.callers_per_node),
        u32(round(STATUS_STEP * 1000)),
        u32(status_reports_per_step(len(plan.worker_nodes), plan.status_interval)),
        u32(round(TIMEOUT * 1000)),
        u32(len(JOB_ID)),
    ]
    for node in plan.nodes:
        headers = {"Authorization": f"Bearer {worker_token(node)}"}
        parts.append(_blob(upgrade_request(f"{node.url}/agent", WS_KEY, headers)))
    parts.append(_blob(accept_value(WS_KEY).encode()))
    parts += [_blob(client_frame(OP_BINARY, REGISTER)), _blob(client_frame(OP_BINARY, AVAILABLE))]
    parts.append(_template(accept(JOB_ID), 2))
    parts.append(_template(job_update(JOB_ID, agent.JS_RUNNING), 1))
    parts.append(_template(job_update(JOB_ID, agent.JS_SUCCESS), 1))
    parts.append(u32(len(plan.worker_nodes)))
    parts += [u32(node) for node in plan.worker_nodes]
    parts.append(u32(len(plan.calls)))
    for node, room, call in plan.calls:
        url = urlsplit(call.url)
        parts += [u32(node), _blob(room.encode()), _blob(request_bytes(call, url.netloc, url.path))]
    path.write_bytes(b"".join(parts))


@dataclass
class Report:
    """What loadgen.c saw; times in seconds of time.perf_counter (both read CLOCK_MONOTONIC)."""

    started: float = 0.0
    stopped: float = 0.0
    replies: dict[int, tuple[float, float, int, str]] = field(default_factory=dict)
    """By call index: sent, answered (0: never), HTTP status (0: none), dispatch id ("" unless 200)."""
    assignments: list[tuple[str, str, float, int]] = field(default_factory=list)
    """(room, dispatch id, received at, worker index) for each JobAssignment."""
    terminations: int = 0
    lost_connections: int = 0
    ran_out: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)


def parse_report(text: str) -> Report:
    report = Report()
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        fields = rest.split(" ")
        match kind:
            case "S":
                report.started, report.stopped = int(fields[0]) / 1e9, int(fields[1]) / 1e9
            case "R":
                index, sent, answered, status, dispatch = fields
                report.replies[int(index)] = (
                    int(sent) / 1e9,
                    int(answered) / 1e9,
                    int(status),
                    "" if dispatch == "-" else dispatch,
                )
            case "A":
                room, dispatch, at, worker = fields
                report.assignments.append(
                    (room, "" if dispatch == "-" else dispatch, int(at) / 1e9, int(worker))
                )
            case "T":
                report.terminations = int(rest)
            case "L":
                report.lost_connections = int(rest)
            case "X":
                report.ran_out = int(rest)
            case "N":
                report.errors = int(rest)
            case "E":
                report.samples.append(rest)
            case "DONE":
                return report
    raise RuntimeError(f"bench/loadgen.c ended without its report: {text[-500:]!r}")


class LoadGenerator:
    """A running loadgen.c: started, it connects and registers everything, then waits for `go`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid

    @classmethod
    async def start(cls, binary: Path, plan: Path) -> "LoadGenerator":
        process = await asyncio.create_subprocess_exec(
            str(binary),
            str(plan),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=REPORT_LIMIT,
        )
        generator = cls(process)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), READY_DEADLINE)
        except BaseException:
            generator.kill()
            raise
        if line != b"READY\n":
            rest = await process.stdout.read()
            generator.kill()
            raise RuntimeError(f"bench/loadgen.c did not start: {(line + rest).decode(errors='replace')}")
        return generator

    async def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"GO\n")
        await self.process.stdin.drain()

    async def report(self) -> Report:
        """What it saw, once the run is over; its workers stay connected until `finish`."""
        assert self.process.stdout is not None
        try:
            output = await self.process.stdout.readuntil(b"DONE\n")
        except asyncio.IncompleteReadError as exc:
            output = exc.partial
        return parse_report(output.decode(errors="replace"))

    async def finish(self) -> None:
        """Its connections closed, and it gone."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), FINISH_DEADLINE)
        except TimeoutError:
            self.kill()

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
