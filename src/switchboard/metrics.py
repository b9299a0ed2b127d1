"""Prometheus metrics on `prometheus_port` (LiveKit's key; 0 = off), with prometheus-client.

Counters and histograms follow the engine's decisions (dispatches, jobs) and the Twirp server's requests;
gauges (rooms, participants, tracks, jobs, workers) are read from the engine's state at each scrape, so
they can never drift from it. Every name starts with `switchboard_`; the README lists them.

Each node serves its own: with several nodes (`redis:`), a node's series count what that node holds — its
rooms, their jobs, the workers connected to its own `/agent` (its engine also holds the other nodes'
workers, which their own nodes count) — so summing a series over the nodes gives the cluster's total.
`switchboard_node_info` names the node (its id changes at every start, so it is not a label on every
series: that would start new series at each restart; join on the scrape's `instance` instead), and
`switchboard_cluster_nodes` says how many live nodes this one sees in Redis.
"""

import bisect
import itertools
import logging
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from switchboard.cluster.nodes import NodeInfo
from switchboard.core.errors import Unavailable
from switchboard.core.events import AssignJob, DispatchCreated, JobEnded, JobStarted, OfferJob
from switchboard.core.jobs import Job, JobStatus
from switchboard.core.workers import Worker, WorkerStatus
from switchboard.runtime import Runtime

log = logging.getLogger("switchboard.metrics")

WAIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# Why a job ended, in a few classes (a label's values must stay few): the first match wins.
_REASON_CLASSES = (
    ("terminated: dispatch deleted", "dispatch_deleted"),
    ("terminated: room closed", "room_closed"),
    ("terminated: server", "server_shutdown"),
    ("no worker registered", "no_worker"),
    ("no worker took the job", "no_capacity"),
    ("not offered within", "server_draining"),
    ("job failed on worker", "worker_failed"),  # before the rest: what follows it is the worker's own words
    ("node lost: node ND_", "node_lost"),  # the room's node (cluster)
    ("'s node ND_", "node_lost"),  # the worker's node: "worker AW_…'s node ND_… was lost"
    ("declined the job", "worker_declined"),
    ("did not start the job", "start_timeout"),
    ("disconnected", "worker_lost"),
    ("lost its connection", "agent_lost"),
    ("left the room", "agent_left"),
)


def reason_class(job: Job) -> str:
    """The class of an ended job's reason: `completed` for a success its worker reported without one."""
    for marker, name in _REASON_CLASSES:
        if marker in job.error:
            return name
    return "completed" if not job.error and job.status is JobStatus.SUCCEEDED else "other"


def worker_state(worker: Worker) -> str:
    """`draining` (an operator drained it) whatever it reports, else what it reports."""
    if worker.drained:
        return "draining"
    return "full" if worker.status is WorkerStatus.FULL else "available"


class Buckets:
    """A histogram's counts by bucket and the sum of what it observed, as prometheus-client's Histogram
    keeps them, in plain numbers (the server runs on one thread); `_DecisionCollector` writes them out."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by upper bound, as the exposition writes them (`le`, ending with +Inf)."""
        bounds = [*map(floatToGoString, self.bounds), "+Inf"]
        return list(zip(bounds, itertools.accumulate(self.counts), strict=True))


@dataclass(frozen=True)
class NodeIdentity:
    """What `switchboard_node_info` says of the node serving the metrics."""

    node_id: str
    address: str
    """Where the other nodes (and the dashboard's forwarded calls) reach it."""
    version: str


LiveNodes = Callable[[], Awaitable[list[NodeInfo]]]
"""The live nodes as Redis has them (this one alone without `redis:`); raises Unavailable without Redis."""


class Metrics:
    """Counts what the engine decided and what the API served.

    Each update is a plain increment of a number kept here, read by `_DecisionCollector` at each scrape:
    prometheus-client's own Counter and Histogram take a lock and check their state on every update, and
    `labels()` more, a cost paid on every request and every job otherwise."""

    def __init__(self, runtime: Runtime, node: NodeIdentity) -> None:
        self.runtime = runtime
        self.live_nodes: LiveNodes | None = None
        """Set by the server once it knows how to list the nodes (the NodeService's source)."""
        self.nodes: list[NodeInfo] | None = None
        """The live nodes read for the scrape under way; None when Redis did not answer."""
        self.dispatches = 0
        self.redispatches = 0
        self.jobs_ended: Tally[tuple[str, str]] = Tally()
        """By final status and reason class."""
        self.to_assignment = Buckets(WAIT_BUCKETS)
        self.to_running = Buckets(WAIT_BUCKETS)
        self.twirp_requests: Tally[tuple[str, str]] = Tally()
        """By method and code."""
        self.twirp_latency: dict[str, Buckets] = {}
        """By method."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_DecisionCollector(self))
        self.registry.register(_EngineCollector(runtime))
        self.registry.register(_NodeCollector(self, node))
        self._offered_attempt: dict[str, int] = {}
        """The last attempt of each live job that was offered: a re-dispatch is counted once per attempt."""

    def twirp_request(self, method: str, code: str, seconds: float) -> None:
        self.twirp_requests[(method, code)] += 1
        latency = self.twirp_latency.get(method)
        if latency is None:
            latency = self.twirp_latency[method] = Buckets(LATENCY_BUCKETS)
        latency.observe(seconds)

    # The engine's decisions (wired in switchboard.effects)

    def dispatch_created(self, _: DispatchCreated) -> None:
        self.dispatches += 1

    def offered(self, decision: OfferJob) -> None:
        job = decision.job
        if job.attempt > 1 and self._offered_attempt.get(job.id) != job.attempt:
            self.redispatches += 1
        self._offered_attempt[job.id] = job.attempt

    def assigned(self, decision: AssignJob) -> None:
        if decision.job.attempt == 1:
            self.to_assignment.observe(max(self.runtime.now() - decision.job.created_at, 0.0))

    def started(self, decision: JobStarted) -> None:
        if decision.job.attempt == 1:
            self.to_running.observe(max(self.runtime.now() - decision.job.created_at, 0.0))

    def ended(self, decision: JobEnded) -> None:
        job = decision.job
        self._offered_attempt.pop(job.id, None)
        if not decision.handed_over:  # it goes on on the node that takes its room over
            self.jobs_ended[(job.status.value, reason_class(job))] += 1

    async def handle(self, _: web.Request) -> web.Response:
        # Read before writing out: the collectors are synchronous, the registry is in Redis.
        try:
            self.nodes = await self.live_nodes() if self.live_nodes is not None else None
        except Unavailable as exc:
            log.warning("metrics: cluster nodes not counted: %s", exc)
            self.nodes = None
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        app.router.add_get("/", self.handle)
        return app


class _DecisionCollector(Collector):
    """The counters and histograms `Metrics` keeps, written out at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield CounterMetricFamily(
            "switchboard_dispatches_created",
            "Dispatches added to rooms (API, room creation, tokens)",
            value=m.dispatches,
        )
        ended = CounterMetricFamily(
            "switchboard_jobs_ended",
            "Jobs that ended, by final status and reason class",
            labels=["status", "reason"],
        )
        for labels, count in sorted(m.jobs_ended.items()):
            ended.add_metric(labels, count)
        yield ended
        yield CounterMetricFamily(
            "switchboard_job_redispatches",
            "Job attempts offered again after an earlier attempt failed (restart policy)",
            value=m.redispatches,
        )
        for name, doc, histogram in (
            (
                "switchboard_job_assignment_seconds",
                "Time from a job's creation (its dispatch) to its assignment to a worker (first attempt)",
                m.to_assignment,
            ),
            (
                "switchboard_job_running_seconds",
                "Time from a job's creation (its dispatch) to its running (first attempt)",
                m.to_running,
            ),
        ):
            yield HistogramMetricFamily(name, doc, buckets=histogram.buckets(), sum_value=histogram.total)
        requests = CounterMetricFamily(
            "switchboard_twirp_requests", "Twirp API requests, by method and code", labels=["method", "code"]
        )
        for labels, count in sorted(m.twirp_requests.items()):
            requests.add_metric(labels, count)
        yield requests
        latency = HistogramMetricFamily(
            "switchboard_twirp_request_seconds", "Twirp API request latency, by method", labels=["method"]
        )
        for method, histogram in sorted(m.twirp_latency.items()):
            latency.add_metric([method], histogram.buckets(), histogram.total)
        yield latency


class _EngineCollector(Collector):
    """What the engine holds now, read at each scrape."""

    def __init__(self, runtime: Runtime) -> None:
        self.engine = runtime.engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self.engine
        rooms = list(engine.rooms.values())
        yield GaugeMetricFamily("switchboard_rooms", "Rooms open now", value=len(rooms))
        participants = GaugeMetricFamily(
            "switchboard_participants", "Participants in rooms now, by kind", labels=["kind"]
        )
        kinds = Tally(p.kind for room in rooms for p in room.participants.values())
        for kind, count in sorted(kinds.items()):
            participants.add_metric([kind], count)
        yield participants
        tracks = sum(len(p.tracks) for room in rooms for p in room.participants.values())
        yield GaugeMetricFamily("switchboard_tracks", "Tracks published now", value=tracks)
        statuses = Tally(job.status.value for job in engine.jobs.values())
        jobs = GaugeMetricFamily("switchboard_jobs", "Jobs that have not ended, by status", labels=["status"])
        for status in (JobStatus.PENDING, JobStatus.OFFERED, JobStatus.ASSIGNED, JobStatus.RUNNING):
            jobs.add_metric([status.value], statuses[status.value])
        yield jobs
        waiting = statuses[JobStatus.PENDING.value] + statuses[JobStatus.OFFERED.value]
        yield GaugeMetricFamily(
            "switchboard_jobs_pending", "Jobs waiting for a worker now (pending or offered)", value=waiting
        )
        workers = GaugeMetricFamily(
            "switchboard_workers",
            "Connected workers, by agent name and status (available, full, draining)",
            labels=["agent_name", "status"],
        )
        load = GaugeMetricFamily(
            "switchboard_worker_load",
            "Sum of the load the workers reported, by agent name",
            labels=["agent_name"],
        )
        by_status: Tally[tuple[str, str]] = Tally()
        loads: dict[str, float] = {}
        for worker in engine.workers.values():
            if worker.spec.node:  # another node's worker: counted by its own node
                continue
            name = worker.spec.agent_name
            by_status[(name, worker_state(worker))] += 1
            loads[name] = loads.get(name, 0.0) + worker.load
        for (name, state), count in sorted(by_status.items()):
            workers.add_metric([name, state], count)
        for name, total in sorted(loads.items()):
            load.add_metric([name], total)
        yield workers
        yield load


class _NodeCollector(Collector):
    """Which node this is, and the live nodes it sees."""

    def __init__(self, metrics: Metrics, node: NodeIdentity) -> None:
        self.metrics = metrics
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = GaugeMetricFamily(
            "switchboard_node_info",
            "The node serving these metrics (always 1): its id, address and version",
            labels=["node_id", "address", "version"],
        )
        info.add_metric([self.node.node_id, self.node.address, self.node.version], 1)
        yield info
        nodes = self.metrics.nodes
        if nodes is None:  # Redis did not answer: no figure rather than a wrong one
            return
        live = GaugeMetricFamily(
            "switchboard_cluster_nodes",
            "Live nodes this node sees in Redis (itself included; 1 without redis:), by state",
            labels=["state"],
        )
        states = Tally(node.state for node in nodes)
        for state in ("serving", "draining"):
            live.add_metric([state], states[state])
        yield live
