"""The composition root: build the application from a Config, wire the pieces, run it."""

import asyncio
import contextlib
import errno
import logging
import os
import signal
from functools import partial

from aiohttp import web
from livekit.protocol import models

from switchboard import LIVEKIT_COMPATIBLE_VERSION, LIVEKIT_PROTOCOL, __version__, logs
from switchboard.agents.supervisor import AgentSupervisor
from switchboard.api import agent_dispatch_service, room_service, worker_service
from switchboard.api.cors import cors_middleware
from switchboard.api.dashboard import Dashboard
from switchboard.api.dashboard_nodes import DashboardNodes
from switchboard.api.twirp import TwirpServer
from switchboard.auth.tokens import TokenVerifier
from switchboard.cluster import node_service
from switchboard.cluster.adoption import RoomAdoption
from switchboard.cluster.bus import RedisBus
from switchboard.cluster.forwarding import FORWARDED, TwirpForwarding, releasing
from switchboard.cluster.node import ClusterNode
from switchboard.cluster.node_service import ClusterNodes, SingleNode
from switchboard.cluster.nodes import NodeDescription, NodeStats
from switchboard.cluster.ownership import RoomOwnership
from switchboard.cluster.redis_client import FAILURES, UNREACHABLE
from switchboard.cluster.relay import SignalRelay, send_everyone_elsewhere
from switchboard.cluster.store import DispatchStore
from switchboard.cluster.workers import ClusterWorkers
from switchboard.config import DEV_KEYS, Config
from switchboard.core import ids
from switchboard.core.engine import Engine
from switchboard.core.events import RoomClosed
from switchboard.effects import wire_effects
from switchboard.event_loop import loop_factory
from switchboard.metrics import Metrics, NodeIdentity
from switchboard.rtc.service import RtcService
from switchboard.runtime import Runtime
from switchboard.webhooks import DeliveryProcess, Webhooks
from switchboard.wire import room_to_proto
from switchboard.workers.hub import WorkerHub

log = logging.getLogger("switchboard.server")

RUNTIME = web.AppKey("runtime", Runtime)
HUB = web.AppKey("hub", WorkerHub)
METRICS = web.AppKey("metrics", Metrics)
CLUSTER = web.AppKey("cluster", ClusterNode)
DRAIN_POLL_INTERVAL = 0.1
KILL_GRACE = 2.0
"""After the second signal killed them, how long the agents' exits are waited for."""


async def health(_: web.Request) -> web.Response:
    # The body stays LiveKit's "OK" (health checks compare it); the header says what really answers.
    return web.Response(text="OK", headers={"Server": f"switchboard/{__version__}"})


def build_app(config: Config) -> web.Application:
    runtime = Runtime(Engine(config.engine))
    verifier = TokenVerifier(config.keys)
    app = web.Application(middlewares=[cors_middleware])
    app[RUNTIME] = runtime
    metrics = None
    node_id = ids.new_id("ND_")
    if config.prometheus_port:
        metrics = app[METRICS] = Metrics(runtime, NodeIdentity(node_id, node_url(config), __version__))
    server_info = models.ServerInfo(
        edition=models.ServerInfo.Standard,
        version=LIVEKIT_COMPATIBLE_VERSION,
        protocol=LIVEKIT_PROTOCOL,
        debug_info=f"switchboard {__version__}",
        agent_protocol=1,
        node_id=node_id,
    )
    hub = app[HUB] = WorkerHub(runtime, verifier, config.keys, config.workers, server_info)
    app.router.add_get("/agent", hub.handle)
    rtc = RtcService(runtime, verifier, config.rtc, server_info)
    rtc.install(app)
    twirp = TwirpServer(verifier, config.http, metrics.twirp_request if metrics is not None else None)
    room_methods = room_service.methods(runtime, live=rtc)
    dispatch_methods = agent_dispatch_service.methods(runtime)
    explain_methods = worker_service.dispatch_methods(runtime)
    cluster = None
    store = None
    adoption = None
    cluster_workers = None
    cluster_parts: tuple[TwirpForwarding | SignalRelay, ...] = ()
    url = node_url(config)
    if config.redis.configured:
        cluster = app[CLUSTER] = ClusterNode(
            config.redis, config.cluster, server_info.node_id, url, lambda: node_stats(runtime), __version__
        )
        ownership = RoomOwnership(cluster, runtime, partial(send_everyone_elsewhere, rtc))
        # Persistence: dispatches and job states kept in Redis; a room this node does not hold is restored
        # from there before a call acts on it here, and CreateDispatch answers once its dispatch is stored.
        store = DispatchStore(
            cluster.redis,
            server_info.node_id,
            runtime,
            ownership.claim,
            wait_replicas=config.redis.wait_replicas,
            wait_timeout=config.redis.timeout / 2,  # WAIT answers before the command's own timeout
        )
        store.wrap_services(dispatch_methods, room_methods)
        ownership.record_written = store.written
        # A lost node's room that nobody comes back to is brought back anyway, to run its jobs and close.
        adoption = RoomAdoption(cluster, store, runtime)
        # ExplainDispatch is forwarded to its room's node like LiveKit's room calls, and restores as they do.
        explain = explain_methods["ExplainDispatch"]
        explain_methods["ExplainDispatch"] = store.restoring(explain, lambda request: str(request.room))
        # Rooms are claimed before they are created here, released when they close here (or fail to open).
        runtime.effects.on(RoomClosed, ownership.room_closed)
        runtime.effects.on(RoomClosed, adoption.room_closed)
        room_methods = releasing(room_methods, ownership, "/twirp/livekit.RoomService/")
        dispatch_methods = releasing(dispatch_methods, ownership, "/twirp/livekit.AgentDispatchService/")
        forwarding = TwirpForwarding(
            ownership,
            lambda names: [room_to_proto(r) for r in runtime.engine.list_rooms(names)],
            store.has_record,
        )
        twirp.route = forwarding.route
        # A call forwarded to the room's node is counted once, on the node its client reached.
        twirp.counted = lambda request: FORWARDED not in request.headers
        relay = SignalRelay(ownership, rtc)
        app.middlewares.append(relay.middleware)  # outermost: a join for another node's room goes there
        app.middlewares.append(store.restoring_joins(verifier))
        cluster_parts = (forwarding, relay)
        # Dispatch across nodes: job decisions for another node's worker go there (docs/cluster.md).
        bus = RedisBus(cluster.redis, cluster.node_id, config.redis.timeout)
        cluster_workers = ClusterWorkers(runtime, hub, bus, cluster.registry)
    nodes: node_service.Nodes = (
        ClusterNodes(cluster, ownership.unreachable)
        if cluster is not None
        else SingleNode(
            NodeDescription(server_info.node_id, url, lambda: node_stats(runtime), __version__), runtime
        )
    )
    if metrics is not None:
        metrics.live_nodes = nodes.list
    twirp.add_service("RoomService", room_methods)
    twirp.add_service("AgentDispatchService", dispatch_methods)
    twirp.add_service("NodeService", node_service.methods(nodes, server_info.node_id), "switchboard")
    twirp.add_service(
        "WorkerService", worker_service.worker_methods(runtime, server_info.node_id), "switchboard"
    )
    twirp.add_service("DispatchService", explain_methods, "switchboard")
    twirp.install(app)
    dashboard_nodes = DashboardNodes(ownership) if cluster is not None else None
    dashboard = Dashboard(runtime, verifier, config.keys, rtc.rooms, node_id, dashboard_nodes)
    dashboard.install(app)
    app.router.add_get("/", health)
    webhooks = None
    if config.webhook.urls:
        delivery = DeliveryProcess(config.webhook, config.keys[config.webhook.api_key], config.log_level)
        webhooks = Webhooks(delivery, runtime)
    wire_effects(runtime.effects, cluster_workers or hub, rtc, dashboard, webhooks, metrics, store)

    async def start_cluster(cluster: ClusterNode, workers: ClusterWorkers) -> None:
        """Before serving: a node that cannot reach Redis (or is refused by it) must not start alone."""
        try:
            await cluster.start()
            for part in cluster_parts:
                await part.start()
            await workers.start()
        except FAILURES as exc:
            with contextlib.suppress(*FAILURES):
                await cluster.stop()  # out of the node list now, not a lease later
            raise StartError(f"cannot reach redis at {cluster.redis_address}: {exc}") from None

    async def start(app: web.Application) -> None:
        if cluster is not None and cluster_workers is not None:
            await start_cluster(cluster, cluster_workers)
        if store is not None:
            await store.start()
        if webhooks is not None:
            await webhooks.start()  # before the runtime: its first decisions are told too
        await app[RUNTIME].start()
        if adoption is not None:
            await adoption.start()  # once the runtime carries out the decisions of the rooms it restores

    async def stop(app: web.Application) -> None:
        if adoption is not None:
            await adoption.stop()
        await app[RUNTIME].stop()
        if webhooks is not None:
            await webhooks.stop()  # after the last decisions (rooms closed at shutdown)
        if store is not None:
            await store.stop()  # after the last decisions: what they changed is written
        if cluster_workers is not None:
            await cluster_workers.stop()
        if cluster is not None:
            for part in cluster_parts:
                await part.stop()
            await cluster.stop()

    async def close_workers(app: web.Application) -> None:
        await app[HUB].close_all()

    app.on_startup.append(start)
    app.on_shutdown.append(close_workers)
    app.on_cleanup.append(stop)
    return app


async def drain(runtime: Runtime, grace: float) -> None:
    """Take no new work, let running jobs finish for up to `grace` seconds, then terminate the rest.

    Jobs of rooms where no non-agent participant is left serve nobody: they end at once, also when their
    room empties during the drain."""
    runtime.call(lambda engine: engine.drain())
    unattended = runtime.call(lambda engine: engine.end_unattended_jobs(runtime.now()))
    busy = runtime.engine.busy_jobs()
    log.info("draining jobs=%d grace=%gs ended_in_empty_rooms=%d", busy, grace, unattended)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # Polling: jobs end through many paths (worker reports, crashes, deadlines); a tenth of a second is cheap.
    while runtime.engine.busy_jobs() and loop.time() < deadline:
        await asyncio.sleep(DRAIN_POLL_INTERVAL)
        runtime.call(lambda engine: engine.end_unattended_jobs(runtime.now()))
    remaining = runtime.engine.busy_jobs()
    runtime.call(lambda engine: _end_everything(engine, runtime.now()))
    log.info("drained jobs_terminated=%d", remaining)


def _end_everything(engine: Engine, now: float) -> None:
    """Every job ends (workers told to stop theirs) and every room closes, its participants told."""
    engine.drain()
    engine.shut_down(now)
    engine.close_all_rooms(now)


async def stop_gracefully(runtime: Runtime, supervisor: AgentSupervisor, grace: float) -> None:
    """The first signal: the agents drain while the server drains, then they get a bounded time to exit."""
    supervisor.stop()  # the agents drain too: they take no new job and finish (or are told to end) theirs
    await drain(runtime, grace)
    await asyncio.sleep(DRAIN_POLL_INTERVAL)  # let the terminations reach the workers
    await supervisor.wait()


def stop_now(runtime: Runtime, supervisor: AgentSupervisor) -> None:
    """The second signal: every job ends now and every agent process is killed, with its job processes."""
    runtime.call(lambda engine: _end_everything(engine, runtime.now()))
    supervisor.kill()


class StartError(Exception):
    """The server cannot start (cannot listen where it was told to, or reach its Redis); the message says
    why, in one line."""


async def listen(runner: web.AppRunner, host: str, port: int) -> None:
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            problem = (
                f"port {port} is in use on {host}: another server (a second `make serve`?) listens there; "
                "stop it, or choose another --port"
            )
        elif exc.errno == errno.EADDRNOTAVAIL:
            problem = f"cannot listen on {host}:{port}: {host} is not an address of this machine"
        elif exc.errno == errno.EACCES:
            problem = f"cannot listen on {host}:{port}: permission denied (ports below 1024 need privileges)"
        else:
            problem = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise StartError(problem) from None


async def run(config: Config) -> None:
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **config.http.handler_options())
    await runner.setup()
    metrics_runner = None
    try:
        for host in config.bind_addresses:
            await listen(runner, host, config.port)
        if config.prometheus_port:
            metrics_runner = web.AppRunner(app[METRICS].app(), access_log=None, handle_signals=False)
            await metrics_runner.setup()
            for host in config.bind_addresses:
                await listen(metrics_runner, host, config.prometheus_port)
    except StartError:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
        raise
    mode = ""
    if config.development:
        dev_keys = dict(config.keys) == DEV_KEYS
        mode = " (dev mode: API key 'devkey' with the built-in dev secret)" if dev_keys else " (dev mode)"
    addresses = ", ".join(f"{host}:{config.port}" for host in config.bind_addresses)
    if config.prometheus_port:
        addresses += f" (metrics on port {config.prometheus_port})"
    log.info(
        "switchboard %s (LiveKit %s compatible) listening on %s%s",
        __version__,
        LIVEKIT_COMPATIBLE_VERSION,
        addresses,
        mode,
    )
    supervisor = AgentSupervisor(config.agents, agent_environment(config), config.drain_timeout)
    if config.agents.directory:
        supervisor.start()
        # `singleton: true` in an agent's config: the server holds to it for the agents it runs.
        singletons = {a.config.registration_name for a in supervisor.agents.values() if a.config.singleton}
        app[RUNTIME].call(lambda engine: engine.singleton_agents.update(singletons))

    signals: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    try:
        await signals.get()
        if CLUSTER in app:  # before anything else: new rooms go to the other nodes at once
            await mark_draining(app[CLUSTER])
        log.info(
            "shutdown requested: draining for up to %gs (a second Ctrl-C or SIGTERM stops everything now)",
            config.drain_timeout,
        )
        stopping = asyncio.create_task(stop_gracefully(app[RUNTIME], supervisor, config.drain_timeout))
        again = asyncio.create_task(signals.get())
        await asyncio.wait((stopping, again), return_when=asyncio.FIRST_COMPLETED)
        if again.done():
            log.warning("second signal: stopping now; running jobs are terminated and the agents killed")
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
            stop_now(app[RUNTIME], supervisor)
            await supervisor.wait(KILL_GRACE)
        else:
            again.cancel()
            await stopping  # its error, if any, is the server's
    finally:
        supervisor.kill()  # whatever ended the server (an error too): no agent outlives it
    await runner.cleanup()
    if metrics_runner is not None:
        await metrics_runner.cleanup()


async def mark_draining(cluster: ClusterNode) -> None:
    try:
        await cluster.registry.set_draining(True)
        log.info("node draining: new rooms are placed on the other nodes")
    except UNREACHABLE as exc:  # published with the next renewal, if there is one before the node stops
        log.warning("node draining, but Redis at %s is unreachable: %s", cluster.redis_address, exc)


def node_stats(runtime: Runtime) -> NodeStats:
    engine = runtime.engine
    rooms = engine.list_rooms()
    return NodeStats(
        rooms=len(rooms),
        participants=sum(len(room.participants) for room in rooms),
        workers=sum(1 for worker in engine.workers.values() if not worker.spec.node),  # its own only
    )


def node_url(config: Config) -> str:
    """Where the other nodes reach this one: `cluster.node_address`, else rtc.node_ip or the bind address."""
    if config.cluster.node_address:
        return config.cluster.node_address
    return f"http://{_reachable(config.rtc.node_ip or config.bind_addresses[0])}:{config.port}"


def _reachable(host: str) -> str:
    """`host` as a URL's host, a wildcard bind address replaced by this machine's loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def agent_environment(config: Config) -> dict[str, str]:
    """What supervised agents need to reach this server: its URL and its first API key."""
    key, secret = next(iter(config.keys.items()))
    return dict(os.environ) | {
        "LIVEKIT_URL": f"ws://{_reachable(config.bind_addresses[0])}:{config.port}",
        "LIVEKIT_API_KEY": key,
        "LIVEKIT_API_SECRET": secret,
    }


def serve(config: Config) -> None:
    logs.configure(config.log_level)
    for warning in config.warnings:
        log.warning("config %s", warning)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(run(config))
