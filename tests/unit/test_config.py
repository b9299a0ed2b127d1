"""Configuration: livekit.yaml keys, environment, flags, and errors that name the key."""

import re
from pathlib import Path

import pytest

from switchboard.api.http import HttpLimits
from switchboard.config import ConfigError, load_config

LONG = "s" * 40
KEYS = f"keys: {{k: {LONG}}}\n"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "switchboard.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_with_dev() -> None:
    config = load_config(env={}, dev=True)
    assert config.port == 7880 and config.bind_addresses == ("127.0.0.1",)
    assert dict(config.keys) == {"devkey": "secret"}
    assert (config.engine.empty_timeout, config.engine.departure_timeout) == (300, 20)
    assert config.engine.pending_timeout == 60.0 and config.engine.availability_timeout == 5.0
    assert config.warnings == ()


def test_file_keys_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
port: 9000
bind_addresses: ["127.0.0.2"]
keys:
  k1: {LONG}
room:
  empty_timeout: 30
  departure_timeout: 3
  max_participants: 7
  history_ttl: 90.5
  history_max_rooms: 10
logging:
  level: debug
limit:
  max_metadata_size: 100
  max_api_request_body_size: 2048
  max_request_header_size: 4096
  max_request_headers: 20
  idle_timeout: 5
  body_timeout: 2.5
agents_dir: ./agents
agents:
  pending_timeout: 2.5
  restart_delay: 0.2
  restart_max_delay: 4
""",
    )
    config = load_config(path, env={})
    assert (config.agents.directory, config.agents.restart_delay, config.agents.restart_max_delay) == (
        "./agents",
        0.2,
        4.0,
    )
    assert load_config(path, env={}, agents_dir="elsewhere").agents.directory == "elsewhere"
    assert load_config(env={}, dev=True).agents.directory == ""
    assert (config.port, config.bind_addresses, dict(config.keys)) == (9000, ("127.0.0.2",), {"k1": LONG})
    assert (config.engine.empty_timeout, config.engine.departure_timeout) == (30, 3)
    assert config.engine.max_participants == 7 and config.engine.pending_timeout == 2.5
    assert (config.engine.history_ttl, config.engine.history_max_rooms) == (90.5, 10)
    assert config.log_level == "debug" and config.engine.limits.max_metadata_size == 100
    assert config.http == HttpLimits(
        max_body_size=2048, max_header_size=4096, max_headers=20, idle_timeout=5, body_timeout=2.5
    )
    assert config.http.handler_options()["keepalive_timeout"] == 5


def test_env_and_flags_override_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, f"port: 9000\nkeys:\n  file: {LONG}\n")
    config = load_config(path, env={"LIVEKIT_KEYS": f"env: {LONG}"}, port=9100, bind=["0.0.0.0"])
    assert (
        dict(config.keys) == {"env": LONG} and config.port == 9100 and config.bind_addresses == ("0.0.0.0",)
    )
    assert dict(load_config(path, env={}, keys=f"flag: {LONG}").keys) == {"flag": LONG}


def test_livekit_config_env_holds_the_yaml_body() -> None:
    config = load_config(env={"LIVEKIT_CONFIG": f"port: 7001\nkeys: {{k: {LONG}}}\n"})
    assert config.port == 7001 and dict(config.keys) == {"k": LONG}


def test_dev_keeps_configured_keys(tmp_path: Path) -> None:
    assert dict(load_config(write(tmp_path, f"keys: {{k: {LONG}}}"), env={}, dev=True).keys) == {"k": LONG}


def test_unknown_keys_are_warnings(tmp_path: Path) -> None:
    path = write(tmp_path, KEYS + "rtc:\n  use_ice_lite: true\nroom:\n  empty_timeout: 5\n  colour: red\n")
    warnings = load_config(path, env={}).warnings
    assert any("unknown key 'rtc'" in w for w in warnings)
    assert any("unknown key 'room.colour'" in w for w in warnings)


def test_a_short_secret_stops_startup_outside_dev(tmp_path: Path) -> None:
    short = "s" * 31
    sources = [
        {"path": write(tmp_path, f"keys: {{k: {short}}}\n"), "env": {}},
        {"env": {"LIVEKIT_KEYS": f"k: {short}"}},
        {"env": {}, "keys": f"k: {short}"},
    ]
    for source in sources:
        with pytest.raises(ConfigError, match="secret of API key 'k' is shorter than 32 characters"):
            load_config(**source)  # type: ignore[arg-type]
        assert dict(load_config(dev=True, **source).keys) == {"k": short}  # type: ignore[arg-type]
    assert dict(load_config(env={}, keys="k: " + "s" * 32).keys) == {"k": "s" * 32}


def test_dev_on_a_public_address_says_the_dev_secret_is_public() -> None:
    assert load_config(env={}, dev=True).warnings == ()  # 127.0.0.1
    assert load_config(env={}, dev=True, bind=["::1", "localhost"]).warnings == ()
    (warning,) = load_config(env={}, dev=True, bind=["127.0.0.1", "0.0.0.0"]).warnings
    assert "--dev on 0.0.0.0: the dev API key 'devkey' and its secret are public" in warning
    # Your own keys in dev mode: nothing about devkey; a short one on the network is worth a word.
    assert load_config(env={}, dev=True, bind=["0.0.0.0"], keys=f"k: {LONG}").warnings == ()
    (warning,) = load_config(env={}, dev=True, bind=["192.0.2.1"], keys="k: short").warnings
    assert "--dev on 192.0.2.1 with a secret shorter than 32 characters (API key 'k')" in warning
    assert "devkey" not in warning


@pytest.mark.parametrize(
    ("secret", "dev"),
    # YAML 1.1 would read True, 83, 1000.0, None, None, 31, True, 750 (sexagesimal), and a long octal int
    [(s, True) for s in ("yes", "0123", "1e3", "null", "~", "0x1F", "true", "12:30")]
    + [("0" + "1234567" * 5, False)],
)
def test_keys_and_secrets_are_the_text_written(tmp_path: Path, secret: str, dev: bool) -> None:
    path = write(tmp_path, f"keys:\n  {secret}: {secret}\n")
    assert dict(load_config(path, env={}, dev=dev).keys) == {secret: secret}
    assert dict(load_config(env={"LIVEKIT_KEYS": f"{secret}: {secret}"}, dev=dev).keys) == {secret: secret}
    assert dict(load_config(env={}, keys=f"{secret}: {secret}", dev=dev).keys) == {secret: secret}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (KEYS + "room:\n  empty_timeout: soon\n", "room.empty_timeout: expected an integer, got 'soon'"),
        (KEYS + "room:\n  departure_timeout: -1\n", "room.departure_timeout: must be at least 0"),
        (KEYS + "port: 70000\n", "port: must be at most 65535"),
        (KEYS + "port: true\n", "port: expected an integer"),
        (KEYS + "logging:\n  level: loud\n", "logging.level: expected one of"),
        (KEYS + "bind_addresses: 127.0.0.1\n", "bind_addresses: expected a list"),
        (KEYS + "agents:\n  pending_timeout: x\n", "agents.pending_timeout: expected a number"),
        (KEYS + "agents_dir: [a]\n", "agents_dir: expected a directory path"),
        (KEYS + "agents:\n  restart_delay: 0\n", "agents.restart_delay: must be at least 0.01"),
        (KEYS + "agents:\n  singleton: solo\n", "agents.singleton: expected a list of agent names"),
        (KEYS + "node_selector:\n  room_slack: -0.1\n", "node_selector.room_slack: must be at least 0"),
        (KEYS + "cluster:\n  adopt_interval: 0.5\n", "cluster.adopt_interval: must be at least 1"),
        (
            KEYS + "redis:\n  cluster_addresses: [10.0.0.1:7000]\n  wait_replicas: 1\n",
            "redis.wait_replicas: not supported with redis.cluster_addresses",
        ),
        (KEYS + "node_selector:\n  room_slack: some\n", "node_selector.room_slack: expected a number"),
        (KEYS + "node_selector:\n  sort_by: load\n", "node_selector.sort_by: expected one of"),
        (KEYS + "node_selector:\n  sort_by: tracks\n", "node_selector.sort_by: expected one of"),
        (KEYS + "node_selector:\n  cpu_load_limit: 70\n", "node_selector.cpu_load_limit: a share of the CPU"),
        (KEYS + "redis:\n  address: nowhere\n", "redis.address: expected host:port"),
        (KEYS + "redis:\n  use_tls: yes please\n", "redis.use_tls: expected true or false"),
        (KEYS + "redis:\n  sentinel_addresses: [127.0.0.1:26379]\n", "redis.sentinel_master_name: required"),
        ("keys: [a, b]\n", "keys: expected a mapping of API key to secret"),
        ("keys:\n  k: ''\n", "each API key needs a non-empty secret"),
        ("- just\n- a list\n", "the config must be a mapping"),
        ("port: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(path, env={})
    assert str(raised.value).startswith(path)


def test_missing_keys_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no API keys configured"):
        load_config(env={})


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(str(tmp_path / "nope.yaml"), env={})


def test_bad_livekit_keys_env() -> None:
    with pytest.raises(ConfigError, match="LIVEKIT_KEYS"):
        load_config(env={"LIVEKIT_KEYS": "just-a-key"})


def test_rtc_settings_are_read_and_checked(tmp_path: Path) -> None:
    path = write(tmp_path, KEYS + "rtc:\n  ping_interval: 2\n  ping_timeout: 4\n  max_bad_frames: 3\n")
    rtc = load_config(path, env={}).rtc
    assert (rtc.ping_interval, rtc.ping_timeout, rtc.max_bad_frames) == (2, 4, 3)
    assert load_config(write(tmp_path, KEYS), env={}).rtc.max_bad_frames == 20
    with pytest.raises(ConfigError, match=r"rtc\.max_bad_frames"):
        load_config(write(tmp_path, KEYS + "rtc:\n  max_bad_frames: 0\n"), env={})


def test_webhook_section_as_livekit_yaml_writes_it(tmp_path: Path) -> None:
    text = "keys:\n  k1: s1\nwebhook:\n  api_key: k1\n  urls: ['http://127.0.0.1:9/a', 'https://hooks.example/b']\n"
    config = load_config(write(tmp_path, text), env={}, dev=True)
    assert config.webhook.api_key == "k1"
    assert config.webhook.urls == ("http://127.0.0.1:9/a", "https://hooks.example/b")
    assert config.warnings == ()
    assert load_config(env={}, dev=True).webhook.urls == ()


@pytest.mark.parametrize(
    ("webhook", "message"),
    [
        (
            "{api_key: other, urls: ['http://x/']}",
            "webhook.api_key: 'other' is not one of the configured API keys",
        ),
        ("{urls: ['http://x/']}", "webhook.api_key: required with webhook.urls"),
        ("{api_key: k1, urls: 'http://x/'}", "webhook.urls: expected a list of http(s) URLs"),
        ("{api_key: k1, urls: ['ftp://x/']}", "webhook.urls: expected a list of http(s) URLs"),
        ("{api_key: k1, urls: ['http://x/'], max_attempts: 0}", "webhook.max_attempts: must be at least 1"),
    ],
)
def test_bad_webhook_section(tmp_path: Path, webhook: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, f"keys:\n  k1: s1\nwebhook: {webhook}\n"), env={}, dev=True)


def test_prometheus_port(tmp_path: Path) -> None:
    assert load_config(env={}, dev=True).prometheus_port == 0
    assert load_config(write(tmp_path, "prometheus_port: 6789\n"), env={}, dev=True).prometheus_port == 6789
    with pytest.raises(ConfigError, match="prometheus_port: must be at most 65535"):
        load_config(write(tmp_path, "prometheus_port: 70000\n"), env={}, dev=True)


def test_singleton_agents_are_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, KEYS + "agents:\n  singleton: [solo, ''] \n"), env={})
    assert config.engine.singleton_agents == frozenset({"solo", ""})
    assert load_config(write(tmp_path, KEYS), env={}).engine.singleton_agents == frozenset()


def test_cluster_and_redis_sections_as_livekit_yaml_writes_them(tmp_path: Path) -> None:
    text = KEYS + (
        "redis:\n  address: redis.internal:6380\n  username: sb\n  password: pw\n  db: 2\n  use_tls: true\n"
        "  wait_replicas: 1\n"
        "node_selector:\n  sort_by: clients\n  cpu_load_limit: 0.8\n"
        "cluster:\n  lease: 4\n  node_address: http://10.0.0.5:7880/\n  adopt_interval: 30\n"
    )
    config = load_config(write(tmp_path, text), env={})
    assert config.redis is not None
    redis, cluster = config.redis, config.cluster
    assert (redis.address, redis.username, redis.password, redis.db, redis.use_tls) == (
        "redis.internal:6380",
        "sb",
        "pw",
        2,
        True,
    )
    # LiveKit's `clients` is Switchboard's `participants`, its `sysload` Switchboard's `cpuload`.
    assert (cluster.sort_by, cluster.cpu_load_limit, cluster.lease) == ("participants", 0.8, 4)
    assert cluster.node_address == "http://10.0.0.5:7880"
    assert cluster.adopt_interval == 30
    assert redis.wait_replicas == 1
    sysload = load_config(write(tmp_path, KEYS + "node_selector:\n  sort_by: sysload\n"), env={})
    assert sysload.cluster.sort_by == "cpuload"
