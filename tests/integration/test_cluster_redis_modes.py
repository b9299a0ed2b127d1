"""The `redis:` section's other deployments, as the README lists them: nodes that find their Redis through
Redis Sentinel (`sentinel_master_name`, `sentinel_addresses`), nodes on a Redis Cluster
(`cluster_addresses`), nodes that log in (`username`, `password`) to a db other than 0 (`db`), and nodes
that speak TLS to Redis (`use_tls`), each with real redis-server processes (Debian's) and two switchboard
nodes.

The same cross-node dispatch in both: a real livekit-agents worker on node A, A drained so that the room
is placed on B, CreateDispatch sent to B (livekit-api). The offer, the answer and the assignment cross
Redis streams, the room's claim and lease are Lua scripts and keys: everything a cluster does with Redis.
With Sentinel, the master is then killed, and the nodes must follow the replica the Sentinel promotes.
"""

import asyncio
import datetime
import ipaddress
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from livekit import api

from switchboard.cluster.redis_client import PREFIX
from tests.cluster_nodes import AGENTS, LEASE, cli, node_config
from tests.conftest import Server, free_port, start_server, stop_server, unique
from tests.integration.test_cluster_dispatch import worker_on
from tests.polling import eventually
from tests.redis_server import RedisServer

MASTER = "switchboard"
"""The name Sentinel monitors the master under (`sentinel_master_name`)."""
REDIS_PASSWORD = "a-password-for-the-switchboard-user"
FAILOVER_DETECTION_MS = 500
"""How long the Sentinel waits before it calls the master down: short, so the failover takes ~1-2 s."""
FAILOVER_LEASE = 10.0
"""The nodes' lease in the failover test: longer than the failover, so that no node gives its rooms up
meanwhile (a node without Redis for a lease would, as it must)."""


@contextmanager
def redis_servers(servers: list[RedisServer]) -> Iterator[list[RedisServer]]:
    started: list[RedisServer] = []
    try:
        for server in servers:
            server.directory.mkdir(parents=True, exist_ok=True)
            server.start()
            started.append(server)
        yield servers
    finally:
        for server in reversed(started):
            server.stop()


@contextmanager
def nodes(
    directory: Path, first: RedisServer, redis_section: dict[str, Any], lease: float = LEASE
) -> Iterator[list[Server]]:
    """Two switchboard nodes with this `redis:` section; node A drained (new rooms go to B)."""
    config = {"redis": {**redis_section, "timeout": 0.5}, "agents": AGENTS, "cluster": {"lease": lease}}
    started: list[Server] = []
    try:
        for name in ("a", "b"):
            started.append(start_server(directory / name, node_config(first, config)))
        drained = cli(started[0], "node", "drain")
        assert drained.returncode == 0, drained.stderr
        yield started
    finally:
        for node in started:
            stop_server(node)


async def dispatch_across(a: Server, b: Server, agent_name: str) -> str:
    """CreateDispatch of `agent_name` (its worker on A) to a new room through B (the room placed on B): the
    job runs and succeeds, and both nodes list the same dispatch. The room's name."""
    room = unique("modes-room")
    clients = [api.LiveKitAPI(node.http_url, node.api_key, node.api_secret) for node in (a, b)]
    try:
        request = api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)

        async def created() -> api.AgentDispatch | None:
            try:
                return await clients[1].agent_dispatch.create_dispatch(request)
            except api.TwirpError as error:  # Redis away: `unavailable` at once, until the node has it back
                if error.code != api.TwirpErrorCode.UNAVAILABLE:
                    raise
                return None

        dispatch = await eventually(created, "CreateDispatch to be answered")

        async def succeeded() -> list[api.AgentDispatch] | None:
            listed = await clients[1].agent_dispatch.list_dispatch(room)
            mine = [d for d in listed if d.id == dispatch.id]
            jobs = mine[0].state.jobs if mine else []
            return mine if jobs and jobs[-1].state.status == api.JS_SUCCESS else None

        [done] = await eventually(succeeded, f"dispatch {dispatch.id}'s job to succeed")
        assert done.state.jobs[-1].state.worker_id, "the job names its worker"
        on_a, on_b = [await client.agent_dispatch.list_dispatch(room) for client in clients]
        assert on_a == on_b, "ListDispatch differs between the nodes"
        [listed_room] = (await clients[0].room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms
        assert listed_room.name == room
        return room
    finally:
        for client in clients:
            await client.aclose()


async def agent_on(a: Server, b: Server, agent_workers: Any) -> str:
    """A new agent name, with a livekit-agents worker on A (its jobs join, then end with success) that B,
    the rooms' node, knows."""
    agent_name = unique("modes")
    await worker_on(a, b, agent_workers, agent_name, "shutdown")
    return agent_name


def cluster_ok(shard: RedisServer) -> bool:
    state = redis.Redis(port=shard.port, decode_responses=True).cluster("info")["cluster_state"]
    return bool(state == "ok")


def node_ids(client: Any) -> set[str]:
    """The nodes registered in Redis (`{sb}:nodes`), read with a plain or a cluster client."""
    return set(client.smembers(PREFIX + "nodes"))


async def test_nodes_that_find_redis_through_sentinel_and_follow_its_failover(
    tmp_path: Path, agent_workers: Any
) -> None:
    master = RedisServer(tmp_path / "master")
    master.arguments = ("--repl-diskless-sync-delay", "0")  # the replica's first sync at once, not after 5 s
    replica = RedisServer(tmp_path / "replica")
    replica.arguments = ("--replicaof", "127.0.0.1", str(master.port))
    sentinel = RedisServer(tmp_path / "sentinel")
    sentinel.directory.mkdir(parents=True)
    conf = sentinel.directory / "sentinel.conf"  # Sentinel rewrites its file: one of its own
    conf.write_text(
        f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} {FAILOVER_DETECTION_MS}\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
    )
    sentinel.arguments = (str(conf), "--sentinel")
    with redis_servers([master, replica, sentinel]):
        section = {"sentinel_master_name": MASTER, "sentinel_addresses": [sentinel.address]}
        with nodes(tmp_path, master, section, lease=FAILOVER_LEASE) as (a, b):
            agent_name = await agent_on(a, b, agent_workers)
            before = await dispatch_across(a, b, agent_name)
            # The nodes were told only the Sentinel's address: what they wrote is on the master it named.
            assert len(node_ids(redis.Redis(port=master.port, decode_responses=True))) == 2

            # Replication is asynchronous: only what the replica has survives the master (see the README).
            primary = redis.Redis(port=master.port, decode_responses=True)
            assert primary.wait(1, 10_000) == 1, "the replica has every write so far"
            # The master dies; the Sentinel promotes the replica, and the nodes follow it by themselves.
            assert master.process is not None
            master.process.kill()
            master.process.wait()
            master.process = None
            watcher = redis.Redis(port=sentinel.port, decode_responses=True)
            await eventually(
                lambda: watcher.sentinel_get_master_addr_by_name(MASTER),
                "the Sentinel to promote the replica",
                accept=lambda address: address is not None and int(address[1]) == replica.port,
            )
            await dispatch_across(a, b, agent_name)
            async with api.LiveKitAPI(a.http_url, a.api_key, a.api_secret) as lkapi:
                listed = await lkapi.agent_dispatch.list_dispatch(before)
                kept = [d for d in listed if d.agent_name == agent_name]  # not the implicit automatic one
                assert len(kept) == 1, f"the dispatch made before the failover is still known: {listed}"


async def test_nodes_on_a_redis_cluster(tmp_path: Path, agent_workers: Any) -> None:
    shards = [
        RedisServer(
            tmp_path / f"shard{index}",
            # The cluster bus port given: by default it is the port + 10000, past 65535 for a high free port.
            arguments=(
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-port", str(free_port())),
            ),
        )
        for index in range(3)
    ]
    with redis_servers(shards):
        redis_cli = shutil.which("redis-cli")
        assert redis_cli is not None, "redis-cli is not installed (Debian: apt-get install redis-tools)"
        create = [redis_cli, "--cluster", "create", *(s.address for s in shards), "--cluster-replicas", "0"]
        created = await asyncio.to_thread(
            subprocess.run, [*create, "--cluster-yes"], capture_output=True, text=True, timeout=60
        )
        assert created.returncode == 0, created.stdout + created.stderr
        for shard in shards:
            await eventually(partial(cluster_ok, shard), f"{shard.address} to see the cluster ok")
        with nodes(tmp_path, shards[0], {"cluster_addresses": [s.address for s in shards]}) as (a, b):
            await dispatch_across(a, b, await agent_on(a, b, agent_workers))
            # Every key shares the `{sb}` hash tag: one slot, on one shard, which holds them all.
            cluster = redis.RedisCluster(host="127.0.0.1", port=shards[0].port, decode_responses=True)
            assert len(node_ids(cluster)) == 2
            slot = cluster.keyslot(PREFIX + "nodes")  # type: ignore[no-untyped-call]
            holders = [s for s in shards if redis.Redis(port=s.port).cluster("countkeysinslot", slot)]
            assert len(holders) == 1


async def test_nodes_that_log_in_to_redis_with_a_user_and_password_and_use_another_db(
    tmp_path: Path, agent_workers: Any
) -> None:
    """Redis 6+ ACLs: the default user off, the nodes log in as their own user (`username`, `password`)
    and keep everything in db 3 (`db`)."""
    server = RedisServer(tmp_path / "redis")
    server.arguments = ("--user", "default", "off")
    server.arguments += ("--user", "switchboard", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all")
    with redis_servers([server]):
        section = {"address": server.address, "username": "switchboard", "password": REDIS_PASSWORD, "db": 3}
        with nodes(tmp_path, server, section) as (a, b):
            await dispatch_across(a, b, await agent_on(a, b, agent_workers))
            login = {"port": server.port, "username": "switchboard", "password": REDIS_PASSWORD}
            assert len(node_ids(redis.Redis(db=3, decode_responses=True, **login))) == 2
            assert node_ids(redis.Redis(db=0, decode_responses=True, **login)) == set()
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=server.port).ping()  # nobody else gets in


async def test_with_wait_replicas_a_dispatch_is_acknowledged_only_once_a_replica_has_it(
    tmp_path: Path, agent_workers: Any
) -> None:
    """`wait_replicas: 1`: CreateDispatch answers once the replica has the dispatch too (Redis WAIT). With
    the replica stopped (SIGSTOP), the master alone has it, and a failover then would lose it: the call
    answers `unavailable` and the dispatch is withdrawn; once the replica runs again, calls succeed."""
    master = RedisServer(tmp_path / "master")
    master.arguments = ("--repl-diskless-sync-delay", "0")
    replica = RedisServer(tmp_path / "replica")
    replica.arguments = ("--replicaof", "127.0.0.1", str(master.port))
    with redis_servers([master, replica]):
        section = {"address": master.address, "wait_replicas": 1}
        with nodes(tmp_path, master, section) as (a, b):
            agent_name = await agent_on(a, b, agent_workers)
            await dispatch_across(a, b, agent_name)
            assert replica.process is not None
            room = unique("unreplicated")
            async with api.LiveKitAPI(b.http_url, b.api_key, b.api_secret) as lkapi:
                request = api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
                replica.process.send_signal(signal.SIGSTOP)
                try:
                    with pytest.raises(api.TwirpError) as refused:
                        await lkapi.agent_dispatch.create_dispatch(request)
                    assert refused.value.code == api.TwirpErrorCode.UNAVAILABLE
                    assert "not 1 replica(s)" in refused.value.message, refused.value.message
                    listed = await lkapi.agent_dispatch.list_dispatch(room)
                    assert [d for d in listed if d.agent_name == agent_name] == [], "withdrawn"
                finally:
                    replica.process.send_signal(signal.SIGCONT)
            await dispatch_across(a, b, agent_name)


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA, and a certificate it signed for 127.0.0.1 with its key: the CA's, the certificate's
    and the key's files."""
    directory.mkdir(parents=True)
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            builder = builder.add_extension(x509.SubjectAlternativeName([address]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = directory / "ca.crt", directory / "redis.crt", directory / "redis.key"
    pem = serialization.Encoding.PEM
    files[0].write_bytes(certificate("test CA", ca_key, "test CA", ca_key, True).public_bytes(pem))
    files[1].write_bytes(certificate("127.0.0.1", key, "test CA", ca_key, False).public_bytes(pem))
    files[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


async def test_nodes_over_tls_verify_redis_against_the_trusted_cas(
    tmp_path: Path, agent_workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`use_tls: true` (as LiveKit's): the nodes speak TLS to a Redis that listens only for TLS there, and
    verify its certificate against the CAs the system trusts; a private CA is added with SSL_CERT_FILE.
    A node that does not trust the certificate does not start, and says why."""
    ca, certificate, key = tls_files(tmp_path / "tls")
    tls_port = free_port()
    server = RedisServer(tmp_path / "redis")
    server.arguments = (
        *("--tls-port", str(tls_port), "--tls-auth-clients", "no"),
        *("--tls-cert-file", str(certificate), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)),
    )
    section = {"address": f"127.0.0.1:{tls_port}", "use_tls": True}
    with redis_servers([server]):
        untrusted = node_config(server, {"redis": section})
        with pytest.raises(RuntimeError) as refused:
            stop_server(start_server(tmp_path / "untrusted", untrusted))
        said = str(refused.value)
        assert f"cannot reach redis at 127.0.0.1:{tls_port}" in said and "certificate verify failed" in said
        assert "Traceback" not in said, said
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the nodes' environment: they trust the CA
        with nodes(tmp_path, server, section) as (a, b):
            await dispatch_across(a, b, await agent_on(a, b, agent_workers))
            assert len(node_ids(redis.Redis(port=server.port, decode_responses=True))) == 2
