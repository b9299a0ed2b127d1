"""The `switchboard` CLI against a running server, as a user runs it."""

import json
import os
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


def test_unreachable_server_is_reported() -> None:
    result = run(None, "room", "list", "--url", f"http://127.0.0.1:{free_port()}", check=False)
    assert result.returncode == 1 and "cannot reach" in result.stderr


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
