"""The `switchboard` CLI against a running server, as a user runs it."""

import json
import os
import socket
import subprocess
import sys
import time

import jwt

from switchboard import __version__
from tests.conftest import Server, free_port


def run(server: Server | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    if server is not None:
        env.update(
            LIVEKIT_URL=server.http_url, LIVEKIT_API_KEY=server.api_key, LIVEKIT_API_SECRET=server.api_secret
        )
    result = subprocess.run(
        [sys.executable, "-m", "switchboard", *args], capture_output=True, text=True, env=env, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_dispatch_round_trip(server: Server) -> None:
    created = json.loads(run(server, "dispatch", "create", "--room", "cli-room", "--agent-name", "bot",
                             "--metadata", "hello", "--json").stdout)  # fmt: skip
    assert created["id"].startswith("AD_") and created["metadata"] == "hello"

    table = run(server, "dispatch", "list", "--room", "cli-room").stdout
    header, *rows = table.splitlines()
    assert header.split()[:3] == ["ID", "AGENT", "ROOM"]
    assert any(created["id"] in row and "bot" in row and "pending" in row for row in rows)
    assert any("(automatic)" in row for row in rows)

    listed = json.loads(run(server, "dispatch", "list", "--room", "cli-room", "--json").stdout)
    assert {d["agent_name"] for d in listed} == {"bot", ""}
    got = json.loads(
        run(server, "dispatch", "get", "--room", "cli-room", "--id", created["id"], "--json").stdout
    )
    assert got["id"] == created["id"]

    deleted = run(server, "dispatch", "delete", "--room", "cli-room", "--id", created["id"]).stdout
    assert f"deleted dispatch {created['id']}" in deleted
    listed = json.loads(run(server, "dispatch", "list", "--room", "cli-room", "--json").stdout)
    assert [d["agent_name"] for d in listed] == [""]


def test_dispatch_list_on_a_closed_room_shows_how_its_jobs_ended(server: Server) -> None:
    run(server, "dispatch", "create", "--room", "cli-closed", "--agent-name", "bot")
    run(server, "room", "delete", "cli-closed")
    listed = run(server, "dispatch", "list", "--room", "cli-closed")
    rows = listed.stdout.splitlines()[1:]
    assert any("bot" in row and "terminated: room closed (deleted by API request)" in row for row in rows)
    assert "room 'cli-closed' has closed" in listed.stderr


def test_room_round_trip(server: Server) -> None:
    room = json.loads(run(server, "room", "create", "cli-room-2", "--empty-timeout", "60", "--metadata", "m",
                          "--agent", "captions:meta", "--json").stdout)  # fmt: skip
    assert room["sid"].startswith("RM_") and room["empty_timeout"] == 60
    dispatches = json.loads(run(server, "dispatch", "list", "--room", "cli-room-2", "--json").stdout)
    assert [(d["agent_name"], d["metadata"]) for d in dispatches] == [("captions", "meta")]
    assert "cli-room-2" in run(server, "room", "list").stdout
    assert json.loads(run(server, "room", "list", "cli-room-2", "--json").stdout)[0]["name"] == "cli-room-2"
    assert json.loads(run(server, "room", "participants", "cli-room-2", "--json").stdout) == []
    run(server, "room", "delete", "cli-room-2")
    assert json.loads(run(server, "room", "list", "cli-room-2", "--json").stdout) == []


def test_token_create_carries_grants_and_agents(server: Server) -> None:
    args = ["--room", "r", "--identity", "alice", "--join", "--agent", "captions:lang=en"]
    args += ["--agent", "helper"]
    out = run(server, "token", "create", *args, "--valid-for", "1h30m", "--json").stdout
    token = json.loads(out)["token"]
    claims = jwt.decode(token, server.api_secret, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["iss"] == server.api_key
    assert claims["video"] == {"roomJoin": True, "room": "r"}
    assert claims["roomConfig"]["agents"] == [{"agentName": "captions", "metadata": "lang=en"},
                                              {"agentName": "helper"}]  # fmt: skip
    assert claims["exp"] - claims["nbf"] == 5400
    assert abs(claims["nbf"] - time.time()) < 60


def test_server_errors_and_bad_usage_are_reported(server: Server) -> None:
    missing = run(server, "room", "delete", "no-such-room", check=False)
    assert (
        missing.returncode == 1 and "not_found" in missing.stderr and "room does not exist" in missing.stderr
    )
    usage = run(server, "token", "create", "--join", "--room", "r", check=False)
    assert usage.returncode == 2 and "--identity is required" in usage.stderr
    duration = run(server, "token", "create", "--list", "--valid-for", "soon", check=False)
    assert duration.returncode == 2 and "invalid duration" in duration.stderr


def test_version_names_switchboard_and_the_livekit_version_it_follows() -> None:
    expected = f"switchboard {__version__} (LiveKit 1.9.0 compatible, protocol 16)\n"
    assert run(None, "--version").stdout == expected


def test_unreachable_server_is_reported_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in (("room", "list"), ("dispatch", "list", "--room", "r")):
        result = run(None, *command, "--url", url, check=False)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr == (
            f"switchboard: cannot reach the server at {url} (connection refused): is it running? "
            "(`make serve` starts one; --url or LIVEKIT_URL names another)\n"
        )


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(None, "serve", "--dev", "--port", str(port), "--agents", str(tmp_path), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"switchboard: port {port} is in use on 127.0.0.1" in result.stderr.splitlines()[-1]


def test_serve_with_a_config_file_that_is_not_there() -> None:
    result = run(None, "serve", "--config", "/nonexistent/switchboard.yaml", check=False)
    assert result.returncode == 2 and result.stderr == (
        "switchboard: /nonexistent/switchboard.yaml: cannot read the config file "
        "(No such file or directory)\n"
    )


def test_minting_a_token_does_not_import_webrtc() -> None:
    # Loading the config and minting a token are what the client commands do; aiortc (and PyAV, aioice)
    # take a second to import and are not needed for either.
    program = """
import sys
from switchboard.cli import main
from switchboard.config import load_config
load_config(env={}, dev=True)
assert main(["token", "create", "--room", "r", "--identity", "i", "--join"]) == 0
webrtc = ("aiortc", "av", "aioice", "livekit.rtc", "livekit.agents", "switchboard.rtc.service")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in webrtc[:3] or m.startswith(webrtc[3:]))
print("heavy:", heavy)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "heavy: []"


def test_serve_refuses_a_bad_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "bad.yaml"
    config.write_text("keys: {k: 0123456789abcdef0123456789abcdef}\nroom:\n  empty_timeout: soon\n")
    result = run(None, "serve", "--config", str(config), check=False)
    assert result.returncode == 2
    assert f"{config}: room.empty_timeout: expected an integer, got 'soon'" in result.stderr


def test_agent_check_explains_dispatch_and_names_bad_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    manual = tmp_path / "agent-speech-processing.yaml"
    manual.write_text("live_captions:\n  processing: manual\n  provider: pocketsphinx\n")
    shown = json.loads(run(None, "agent", "check", str(manual), "--json").stdout)
    assert (shown["agent_name"], shown["dispatch"], shown["registers_as"]) == (
        "speech-processing",
        "manual",
        "speech-processing",
    )
    manual.write_text("live_captions:\n  processing: automatic\n  provider: pocketsphinx\n")
    assert "joins every new room" in run(None, "agent", "check", str(manual)).stdout
    manual.write_text("live_captions:\n  processing: sometimes\n  provider: pocketsphinx\n")
    bad = run(None, "agent", "check", str(manual), check=False)
    assert (
        bad.returncode == 2
        and f"{manual}: live_captions.processing: expected automatic or manual" in bad.stderr
    )


def test_agent_run_stops_at_once_on_what_it_cannot_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    agent = tmp_path / "agent-captions.yaml"
    agent.write_text(
        "live_captions:\n  processing: manual\n  provider: pocketsphinx\n  pocketsphinx:\n    vad_mode: 9\n"
    )
    bad = run(None, "agent", "run", str(agent), check=False)
    assert bad.returncode == 2 and f"{agent}: live_captions.pocketsphinx.vad_mode: expected" in bad.stderr

    agent.write_text("live_captions:\n  processing: manual\n  provider: assemblyai\n")
    missing_key = run(None, "agent", "run", str(agent), check=False)
    assert missing_key.returncode == 2
    assert "live_captions.assemblyai.api_key: required (or set ASSEMBLYAI_API_KEY" in missing_key.stderr

    agent.write_text(
        "live_captions:\n  processing: manual\n  provider: assemblyai\n  assemblyai:\n    api_key: k\n"
    )
    for command in ("run", "check"):
        no_plugin = run(None, "agent", command, str(agent), check=False)
        assert no_plugin.returncode == 2 and "pip install 'switchboard[assemblyai]'" in no_plugin.stderr

    agent.write_text("enabled: false\n" + "live_captions:\n  processing: manual\n  provider: assemblyai\n")
    disabled = run(None, "agent", "run", str(agent), check=False)  # nothing is checked or started
    assert disabled.returncode == 0 and "not started: enabled is false" in disabled.stderr


def serve_until_listening(tmp_path, *args: str) -> str:  # type: ignore[no-untyped-def]
    """Run `switchboard serve ARGS` until it says it listens; stop it; its output."""
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "switchboard", "serve", "--port", str(free_port()), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in log_path.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=20)
    return log_path.read_text()


def test_serve_refuses_a_short_secret_outside_dev() -> None:
    result = run(None, "serve", "--keys", "k: short", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "secret of API key 'k' is shorter than 32 characters" in result.stderr


def test_dev_mode_names_the_dev_key_only_when_it_is_used_and_warns_when_public(tmp_path) -> None:  # type: ignore[no-untyped-def]
    public = serve_until_listening(tmp_path, "--dev", "--bind", "0.0.0.0")
    assert "WARNING" in public and "the dev API key 'devkey' and its secret are public" in public
    assert "(dev mode: API key 'devkey' with the built-in dev secret)" in public
    own_keys = serve_until_listening(tmp_path, "--dev", "--keys", "mine: " + "x" * 40)
    assert "(dev mode)" in own_keys and "devkey" not in own_keys
