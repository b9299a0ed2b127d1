"""Server configuration: one YAML file with livekit.yaml's keys, then environment, then flags.

Every error names the key (and the file) so that a bad config stops startup with a message a user can act on.
"""

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from switchboard.agents.supervisor import SupervisorSettings
from switchboard.api.http import HttpLimits
from switchboard.cluster.settings import SORT_BY, SORT_BY_ALIASES, ClusterSettings, RedisSettings
from switchboard.core.engine import EngineSettings
from switchboard.core.limits import Limits
from switchboard.rtc.settings import TURN_PROTOCOLS, RtcSettings, TurnServer
from switchboard.rtc.speakers import AudioSettings
from switchboard.webhook_delivery import WebhookSettings
from switchboard.workers.session import WorkerSettings

DEV_KEYS = {"devkey": "secret"}
MIN_SECRET_LENGTH = 32
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    port: int = 7880
    bind_addresses: tuple[str, ...] = ("0.0.0.0",)
    keys: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "info"
    http: HttpLimits = field(default_factory=HttpLimits)
    drain_timeout: float = 60.0
    """On SIGTERM, how long running jobs may go on before they are terminated and the server exits."""
    engine: EngineSettings = field(default_factory=EngineSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    rtc: RtcSettings = field(default_factory=RtcSettings)
    agents: SupervisorSettings = field(default_factory=SupervisorSettings)
    """The agent-*.yaml files run next to the server (`agents_dir`, `--agents`)."""
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    """Set: this node is one of several sharing the deployment through Redis (see docs/cluster.md)."""
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    prometheus_port: int = 0
    """Where Prometheus metrics are served (on the bind addresses); 0 = not served."""
    development: bool = False
    warnings: tuple[str, ...] = ()
    """Things worth telling the operator at startup (unknown keys, a dev secret served to the network)."""


class _Reader:
    """Reads typed values out of the nested YAML mapping, remembering which keys it consumed."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data = data
        self.source = source
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    def get(self, key: str) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        self.used.add(key)
        return node

    def number(self, key: str, default: float, *, integer: bool = True, minimum: float = 0) -> Any:
        value = self.get(key)
        if value is None:
            return default
        allowed = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            kind = "an integer" if integer else "a number"
            raise self.fail(key, f"expected {kind}, got {value!r}")
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}, got {value!r}")
        return value

    def unknown_keys(self) -> list[str]:
        found: list[str] = []

        def walk(node: Mapping[str, Any], prefix: str) -> None:
            for name, value in node.items():
                key = f"{prefix}{name}"
                if key in self.used:
                    continue
                if isinstance(value, Mapping) and any(u.startswith(key + ".") for u in self.used):
                    walk(value, key + ".")
                else:
                    found.append(key)

        walk(self.data, "")
        return found


def _source_text(text: str) -> Any:
    """YAML with every scalar as the text written (BaseLoader): a secret `yes` or `0123` stays that text
    instead of becoming True or 83."""
    return yaml.load(text, Loader=yaml.BaseLoader)  # safe: BaseLoader builds only str, list and dict


def parse_keys(value: Any, where: str) -> dict[str, str]:
    """`keys` as a mapping, or LIVEKIT_KEYS as YAML text ("key: secret", one per line)."""
    if isinstance(value, str):
        try:
            value = _source_text(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: expected 'key: secret' lines ({exc})") from exc
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{where}: expected a mapping of API key to secret, like 'devkey: secret'")
    keys: dict[str, str] = {}
    for key, secret in value.items():
        if not isinstance(key, str) or not key or not isinstance(secret, str) or secret == "":
            raise ConfigError(f"{where}: {key!r}: each API key needs a non-empty secret")
        keys[key] = secret
    return keys


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to a public address


def load_config(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    dev: bool = False,
    port: int | None = None,
    bind: list[str] | None = None,
    keys: str | None = None,
    agents_dir: str | None = None,
) -> Config:
    env = os.environ if env is None else env
    if path:
        source = path
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    else:
        source, text = "LIVEKIT_CONFIG", env.get("LIVEKIT_CONFIG", "")
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the config must be a mapping of keys, like 'port: 7880'")
    r = _Reader(data, source)

    def address_list(key: str) -> list[str]:
        value = r.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(a, str) and a for a in value)
        ):
            raise r.fail(key, "expected a list of addresses, like ['127.0.0.1']")
        return value or []

    bind_value = address_list("bind_addresses")
    level = r.get("logging.level") or "info"
    if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
        raise r.fail("logging.level", f"expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    config_keys: dict[str, str] = {}
    if r.get("keys") is not None:
        config_keys = parse_keys(_source_text(text).get("keys"), f"{source}: keys")

    limits = Limits(
        max_metadata_size=r.number("limit.max_metadata_size", Limits.max_metadata_size),
        max_attributes_size=r.number("limit.max_attributes_size", Limits.max_attributes_size),
        max_room_name_length=r.number("limit.max_room_name_length", Limits.max_room_name_length, minimum=1),
        max_participant_identity_length=r.number(
            "limit.max_participant_identity_length", Limits.max_participant_identity_length, minimum=1
        ),
    )
    e, w = EngineSettings, WorkerSettings

    def seconds(key: str, default: float, minimum: float = 0) -> float:
        return float(r.number(key, default, integer=False, minimum=minimum))

    engine = EngineSettings(
        limits=limits,
        empty_timeout=r.number("room.empty_timeout", e.empty_timeout),
        departure_timeout=r.number("room.departure_timeout", e.departure_timeout),
        max_participants=r.number("room.max_participants", e.max_participants),
        history_ttl=seconds("room.history_ttl", e.history_ttl),
        history_max_rooms=r.number("room.history_max_rooms", e.history_max_rooms),
        pending_timeout=seconds("agents.pending_timeout", e.pending_timeout),
        availability_timeout=seconds("agents.availability_timeout", e.availability_timeout, 0.1),
        start_timeout=seconds("agents.start_timeout", e.start_timeout, 0.1),
        reconnect_grace=seconds("agents.reconnect_grace", e.reconnect_grace),
        max_job_restarts=r.number("agents.max_job_restarts", e.max_job_restarts),
        restart_backoff=seconds("agents.restart_backoff", e.restart_backoff),
        restart_backoff_max=seconds("agents.restart_backoff_max", e.restart_backoff_max),
        load_threshold=seconds("agents.load_threshold", e.load_threshold, 0.01),
        singleton_agents=_singleton_agents(r),
    )
    workers = WorkerSettings(
        register_timeout=seconds("agents.register_timeout", w.register_timeout, 0.1),
        ping_interval=seconds("agents.ping_interval", w.ping_interval, 0.1),
        max_message_size=r.number("limit.agent_signal_message_size_limit", w.max_message_size, minimum=1024),
        violation_close_delay=seconds("agents.violation_close_delay", w.violation_close_delay),
    )
    h = HttpLimits
    network, network_notes = _rtc_network(r)
    values: dict[str, Any] = {
        "port": r.number("port", Config.port, minimum=0),
        "prometheus_port": r.number("prometheus_port", Config.prometheus_port, minimum=0),
        "http": HttpLimits(
            max_body_size=r.number("limit.max_api_request_body_size", h.max_body_size, minimum=1),
            max_header_size=r.number("limit.max_request_header_size", h.max_header_size, minimum=1024),
            max_headers=r.number("limit.max_request_headers", h.max_headers, minimum=8),
            idle_timeout=seconds("limit.idle_timeout", h.idle_timeout, 0.1),
            body_timeout=seconds("limit.body_timeout", h.body_timeout, 0.1),
        ),
        "drain_timeout": seconds("agents.drain_timeout", Config.drain_timeout),
        "engine": engine,
        "workers": workers,
        "rtc": RtcSettings(
            ping_interval=r.number("rtc.ping_interval", RtcSettings.ping_interval, minimum=1),
            ping_timeout=r.number("rtc.ping_timeout", RtcSettings.ping_timeout, minimum=1),
            ice_addresses=tuple(address_list("rtc.ice_addresses")),
            max_bad_frames=r.number("rtc.max_bad_frames", RtcSettings.max_bad_frames, minimum=1),
            audio=_audio(r),
            **network,
        ),
    }
    directory = r.get("agents_dir")
    if directory is not None and not isinstance(directory, str):
        raise r.fail("agents_dir", f"expected a directory path, got {directory!r}")
    supervisor = SupervisorSettings
    values["agents"] = SupervisorSettings(
        directory=agents_dir or directory or "",
        restart_delay=seconds("agents.restart_delay", supervisor.restart_delay, 0.01),
        restart_max_delay=seconds("agents.restart_max_delay", supervisor.restart_max_delay, 0.01),
    )
    if values["rtc"].ping_interval >= values["rtc"].ping_timeout:
        raise r.fail(
            "rtc.ping_interval", "must be shorter than rtc.ping_timeout (clients ping every interval)"
        )
    for key in ("port", "prometheus_port"):
        if values[key] > 65535:
            raise r.fail(key, f"must be at most 65535, got {values[key]}")

    webhook = _webhook(r, seconds)
    values["redis"] = _redis(r, seconds)
    values["cluster"] = _cluster(r, seconds)
    notes = [f"{source}: unknown key '{key}' ignored" for key in r.unknown_keys()] + network_notes
    if env.get("LIVEKIT_KEYS"):
        config_keys = parse_keys(env["LIVEKIT_KEYS"], "LIVEKIT_KEYS")
    if keys:
        config_keys = parse_keys(keys, "--keys")
    if dev and not config_keys:
        config_keys = dict(DEV_KEYS)
    if not config_keys:
        raise ConfigError(
            "no API keys configured: set 'keys' in the config file, LIVEKIT_KEYS='key: secret', "
            "or run with --dev"
        )
    short = [key for key, secret in config_keys.items() if len(secret) < MIN_SECRET_LENGTH]
    if short and not dev:
        # HS256 with a short secret can be brute-forced offline from any one token the server issued.
        raise ConfigError(
            f"the secret of API key {short[0]!r} is shorter than {MIN_SECRET_LENGTH} characters: "
            "use a long random secret (e.g. `openssl rand -base64 32`), or --dev for local development"
        )
    if webhook.urls and webhook.api_key not in config_keys:
        raise ConfigError(
            f"{source}: webhook.api_key: {webhook.api_key!r} is not one of the configured API keys "
            "(webhooks are signed with its secret)"
        )
    values["webhook"] = webhook
    if port is not None:
        values["port"] = port
    addresses = tuple(bind or bind_value or (("127.0.0.1",) if dev else Config.bind_addresses))
    public = [host for host in addresses if not _is_loopback(host)]
    if dev and public and config_keys == DEV_KEYS:
        notes.append(
            f"--dev on {', '.join(public)}: the dev API key 'devkey' and its secret are public, and this "
            "server accepts them from the network; anyone who can reach it can create and delete rooms, "
            "dispatch agents and join every room. Outside local development, set your own keys."
        )
    elif dev and public and short:
        notes.append(
            f"--dev on {', '.join(public)} with a secret shorter than {MIN_SECRET_LENGTH} characters "
            f"(API key {short[0]!r}): tokens can be forged by anyone who guesses it"
        )
    return Config(
        bind_addresses=addresses,
        keys=config_keys,
        log_level=level.lower(),
        development=dev,
        warnings=tuple(notes),
        **values,
    )


def _audio(r: _Reader) -> AudioSettings:
    """livekit.yaml's `audio` section: how active speakers are told apart from noise and silence."""
    a = AudioSettings
    audio = AudioSettings(
        active_level=r.number("audio.active_level", a.active_level),
        min_percentile=r.number("audio.min_percentile", a.min_percentile),
        # A window shorter than an Opus packet (20 ms) would never hold one.
        update_interval=r.number("audio.update_interval", a.update_interval, minimum=20),
        smooth_intervals=r.number("audio.smooth_intervals", a.smooth_intervals),
    )
    for key, highest in (("active_level", 127), ("min_percentile", 100)):
        if getattr(audio, key) > highest:
            raise r.fail(f"audio.{key}", f"must be at most {highest}, got {getattr(audio, key)}")
    return audio


def _singleton_agents(r: _Reader) -> frozenset[str]:
    """`agents.singleton`: the agent names of which a room gets at most one dispatch."""
    names = r.get("agents.singleton")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise r.fail("agents.singleton", "expected a list of agent names, like ['my-agent']")
    return frozenset(names or ())


def _rtc_network(r: _Reader) -> tuple[dict[str, Any], list[str]]:
    """The `rtc` keys that say how media meets the network (ports, advertised address, TURN/STUN), as
    RtcSettings arguments, and what to warn about."""
    start = r.number("rtc.port_range_start", 0)
    end = r.number("rtc.port_range_end", 0)
    for key, port in (("rtc.port_range_start", start), ("rtc.port_range_end", end)):
        if port > 65535:
            raise r.fail(key, f"must be at most 65535, got {port}")
    if bool(start) != bool(end):
        raise r.fail("rtc.port_range_start", "set both it and rtc.port_range_end, or neither")
    if start > end:
        raise r.fail("rtc.port_range_end", f"must not be below rtc.port_range_start ({start}), got {end}")
    node_ip = r.get("rtc.node_ip") or ""
    try:
        if node_ip:
            ipaddress.ip_address(node_ip if isinstance(node_ip, str) else "")
    except ValueError as exc:
        raise r.fail("rtc.node_ip", f"expected an IP address, got {node_ip!r}") from exc
    if r.get("rtc.use_external_ip") not in (None, False):
        raise r.fail(
            "rtc.use_external_ip",
            "not supported (discovering the address needs a STUN server on the internet): "
            "set rtc.node_ip to the address clients reach this server at",
        )
    stun = r.get("rtc.stun_servers") or []
    if not isinstance(stun, list) or not all(isinstance(s, str) and _host_port(s) for s in stun):
        raise r.fail("rtc.stun_servers", f"expected a list of 'host:port', got {stun!r}")
    turn = r.get("rtc.turn_servers") or []
    if not isinstance(turn, list):
        raise r.fail("rtc.turn_servers", f"expected a list of servers, got {turn!r}")
    unsupported = {
        "rtc.tcp_port": "ICE over TCP is not supported; clients that cannot use UDP need a TURN server "
        "over TCP or TLS (rtc.turn_servers)",
        "rtc.udp_port": "a single-port UDP mux is not supported (each connection binds a port of its "
        "own); open rtc.port_range_start-end instead",
    }
    notes = [f"{r.source}: {key} ignored: {why}" for key, why in unsupported.items() if r.number(key, 0)]
    settings = {
        "port_range_start": start,
        "port_range_end": end,
        "node_ip": node_ip,
        "stun_servers": tuple(stun),
        "turn_servers": tuple(_turn_server(r, f"rtc.turn_servers[{i}]", t) for i, t in enumerate(turn)),
    }
    return settings, notes


def _host_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) <= 65535


def _turn_server(r: _Reader, key: str, entry: Any) -> TurnServer:
    fields = ("host", "port", "protocol", "username", "credential")
    if not isinstance(entry, Mapping):
        raise r.fail(key, f"expected a mapping with {', '.join(fields)}, got {entry!r}")
    unknown = sorted(set(entry) - set(fields))
    if unknown:
        raise r.fail(f"{key}.{unknown[0]}", f"not supported (a TURN server has {', '.join(fields)})")
    host, port, protocol = entry.get("host"), entry.get("port"), entry.get("protocol")
    if not isinstance(host, str) or not host:
        raise r.fail(f"{key}.host", f"expected a host name or address, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
        raise r.fail(f"{key}.port", f"expected a port number, got {port!r}")
    if protocol not in TURN_PROTOCOLS:
        raise r.fail(f"{key}.protocol", f"expected one of {', '.join(TURN_PROTOCOLS)}, got {protocol!r}")
    credentials = {name: entry.get(name, "") for name in ("username", "credential")}
    for name, value in credentials.items():
        if not isinstance(value, str):
            raise r.fail(f"{key}.{name}", f"expected a string, got {value!r}")
    return TurnServer(host=host, port=port, protocol=protocol, **credentials)


def _webhook(r: _Reader, seconds: Callable[[str, float, float], float]) -> WebhookSettings:
    """The `webhook` section, as livekit.yaml writes it (`api_key`, `urls`), and delivery settings."""
    d = WebhookSettings
    urls = r.get("webhook.urls")
    if urls is None:
        urls = []
    if not isinstance(urls, list) or not all(
        isinstance(url, str) and url.startswith(("http://", "https://")) for url in urls
    ):
        raise r.fail("webhook.urls", f"expected a list of http(s) URLs, got {urls!r}")
    api_key = r.get("webhook.api_key")
    if urls and (not isinstance(api_key, str) or not api_key):
        raise r.fail("webhook.api_key", "required with webhook.urls: the API key whose secret signs them")
    return WebhookSettings(
        api_key=api_key if isinstance(api_key, str) else "",
        urls=tuple(urls),
        queue_size=r.number("webhook.queue_size", d.queue_size, minimum=1),
        timeout=seconds("webhook.timeout", d.timeout, 0.1),
        retry_delay=seconds("webhook.retry_delay", d.retry_delay, 0.01),
        retry_delay_max=seconds("webhook.retry_delay_max", d.retry_delay_max, 0.01),
        max_attempts=r.number("webhook.max_attempts", d.max_attempts, minimum=1),
        shutdown_grace=seconds("webhook.shutdown_grace", d.shutdown_grace, 0),
    )


def _text(r: _Reader, key: str, default: str = "") -> str:
    value = r.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise r.fail(key, f"expected text, got {value!r}")
    return value


def _addresses(r: _Reader, key: str) -> tuple[str, ...]:
    value = r.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(a, str) and _host_port(a) for a in value):
        raise r.fail(key, f"expected a list of host:port addresses, got {value!r}")
    return tuple(value)


def _redis(r: _Reader, seconds: Callable[[str, float, float], float]) -> RedisSettings:
    """The `redis` section with livekit.yaml's keys (`max_redirects` is left to redis-py)."""
    d = RedisSettings
    address = _text(r, "redis.address")
    if address and not _host_port(address):
        raise r.fail("redis.address", f"expected host:port, got {address!r}")
    use_tls = r.get("redis.use_tls")
    if use_tls is not None and not isinstance(use_tls, bool):
        raise r.fail("redis.use_tls", f"expected true or false, got {use_tls!r}")
    settings = RedisSettings(
        address=address,
        username=_text(r, "redis.username"),
        password=_text(r, "redis.password"),
        db=r.number("redis.db", d.db),
        use_tls=bool(use_tls),
        sentinel_master_name=_text(r, "redis.sentinel_master_name"),
        sentinel_username=_text(r, "redis.sentinel_username"),
        sentinel_password=_text(r, "redis.sentinel_password"),
        sentinel_addresses=_addresses(r, "redis.sentinel_addresses"),
        cluster_addresses=_addresses(r, "redis.cluster_addresses"),
        timeout=seconds("redis.timeout", d.timeout, 0.05),
        wait_replicas=r.number("redis.wait_replicas", d.wait_replicas),
    )
    if settings.sentinel_addresses and not settings.sentinel_master_name:
        raise r.fail("redis.sentinel_master_name", "required with redis.sentinel_addresses")
    if settings.wait_replicas and settings.cluster_addresses:
        # WAIT counts the replicas of the connection's own shard, which a cluster pipeline does not name.
        raise r.fail("redis.wait_replicas", "not supported with redis.cluster_addresses")
    return settings


def _cluster(r: _Reader, seconds: Callable[[str, float, float], float]) -> ClusterSettings:
    """Switchboard's own `cluster` section: the lease, this node's address, and where new rooms go."""
    d = ClusterSettings
    node_address = _text(r, "cluster.node_address")
    if node_address and not node_address.startswith(("http://", "https://")):
        raise r.fail("cluster.node_address", f"expected an http(s) URL, got {node_address!r}")
    sort_by = _text(r, "node_selector.sort_by", d.sort_by)
    sort_by = SORT_BY_ALIASES.get(sort_by, sort_by)
    if sort_by not in SORT_BY:
        expected = ", ".join((*SORT_BY, *SORT_BY_ALIASES))
        raise r.fail("node_selector.sort_by", f"expected one of {expected}, got {sort_by!r}")
    cpu_load_limit = float(r.number("node_selector.cpu_load_limit", d.cpu_load_limit, integer=False))
    if cpu_load_limit > 1:
        raise r.fail("node_selector.cpu_load_limit", f"a share of the CPU, at most 1, got {cpu_load_limit:g}")
    return ClusterSettings(
        lease=seconds("cluster.lease", d.lease, 0.3),
        adopt_interval=seconds("cluster.adopt_interval", d.adopt_interval, 1),
        node_address=node_address.rstrip("/"),
        sort_by=sort_by,
        room_slack=float(r.number("node_selector.room_slack", d.room_slack, integer=False)),
        cpu_load_limit=cpu_load_limit,
    )
