"""Running one agent: what the AgentServer gets from the config, and how a run ends."""

import logging
import os

import pytest
from livekit.agents import JobContext

from switchboard.agents.config import parse_agent_config
from switchboard.agents.runner import agent_server, run
from tests.conftest import free_port

CAPTIONS = "live_captions:\n  processing: manual\n  provider: pocketsphinx\n"


async def entrypoint(ctx: JobContext) -> None:
    raise AssertionError("no job is expected")


def test_a_worker_that_cannot_reach_the_server_stops_with_one_clear_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = parse_agent_config(CAPTIONS + "load_threshold: 0.4\n", "f.yaml", "agent-a.yaml")
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    server = agent_server(config, ws_url=url, api_key="k", api_secret="s", max_retry=0, num_idle_processes=0)
    server.rtc_session(entrypoint, agent_name=config.registration_name)
    assert server._load_threshold == 0.4 and server._agent_name == "a"
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exited:
        run(server, config)
    assert exited.value.code == 1
    assert "agent stopped: failed to connect" in caplog.text  # the framework's words after ours


def test_a_disabled_agent_runs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    config = parse_agent_config("enabled: false\n" + CAPTIONS, "f.yaml", "agent-a.yaml")
    server = agent_server(config)
    with caplog.at_level(logging.INFO):
        run(server, config)  # returns at once: nothing to serve
    assert "f.yaml: agent 'a' not started: enabled is false" in caplog.text


def test_the_agent_file_decides_the_name_over_livekit_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_AGENT_NAME_OVERRIDE", "someone-else")
    config = parse_agent_config(CAPTIONS.replace("manual", "automatic"), "f.yaml", "agent-a.yaml")
    server = agent_server(config)
    server.rtc_session(entrypoint, agent_name=config.registration_name)
    assert server._agent_name == ""  # automatic, as the file says
    assert "LIVEKIT_AGENT_NAME_OVERRIDE" not in os.environ
