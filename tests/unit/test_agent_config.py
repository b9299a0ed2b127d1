"""agent-AGENT_NAME.yaml: names, processing modes, sources, and errors that name the file and key."""

from pathlib import Path

import pytest

from switchboard.agents.config import (
    AgentConfigError,
    find_agent_config,
    load_agent_config,
    parse_agent_config,
)

MANUAL = """
live_captions:
  processing: manual
  provider: pocketsphinx
  pocketsphinx:
    language: en-US
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_manual_agent_registers_with_its_name(tmp_path: Path) -> None:
    config = load_agent_config(write(tmp_path, "agent-speech-processing.yaml", MANUAL))
    assert config.name == "speech-processing" and config.enabled and config.load_threshold == 0.7
    assert not config.automatic and config.registration_name == "speech-processing"
    service = config.services["live_captions"]
    assert (service.processing, service.provider, dict(service.settings)) == (
        "manual",
        "pocketsphinx",
        {"language": "en-US"},
    )


def test_singleton_is_read_and_off_by_default(tmp_path: Path) -> None:
    assert not load_agent_config(write(tmp_path, "agent-a.yaml", MANUAL)).singleton
    assert load_agent_config(write(tmp_path, "agent-b.yaml", MANUAL + "singleton: true\n")).singleton


def test_any_automatic_service_makes_the_agent_automatic(tmp_path: Path) -> None:
    text = MANUAL.replace("manual", "automatic") + "load_threshold: 0.5\nlog_level: DEBUG\n"
    config = load_agent_config(write(tmp_path, "agent-captions.yml", text))
    assert config.automatic and config.registration_name == ""
    assert config.load_threshold == 0.5 and config.log_level == "debug"


def test_unknown_keys_are_warnings(tmp_path: Path) -> None:
    text = MANUAL + "colour: blue\nlive_captions_extra: 1\n"
    config = load_agent_config(
        write(tmp_path, "agent-a.yaml", text.replace("provider:", "mode: x\n  provider:"))
    )
    assert any("unknown key 'colour'" in w for w in config.warnings)
    assert any("unknown key 'live_captions.mode'" in w for w in config.warnings)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MANUAL.replace("manual", "sometimes"), "live_captions.processing: expected automatic or manual"),
        (
            MANUAL.replace("provider: pocketsphinx", "provider: magic"),
            "live_captions.provider: expected one of",
        ),
        (MANUAL + "enabled: yes-please\n", "enabled: expected true or false"),
        (MANUAL + "singleton: 1\n", "singleton: expected true or false"),
        (MANUAL + "load_threshold: 2\n", "load_threshold: expected a number between 0 and 1"),
        (MANUAL + "load_threshold: high\n", "load_threshold: expected a number between 0 and 1"),
        (MANUAL + "log_level: loud\n", "log_level: expected one of"),
        (MANUAL + "agent_name: other\n", "agent_name: 'other' does not match the file name's 'a'"),
        (MANUAL + "ws_url: 5\n", "ws_url: expected a string"),
        ("live_captions: on\n", "live_captions: expected a section"),
        (
            MANUAL.replace("  pocketsphinx:\n    language: en-US\n", "  pocketsphinx: 3\n"),
            "live_captions.pocketsphinx",
        ),
        ("- a\n- b\n", "must be a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "agent-a.yaml", text)
    with pytest.raises(AgentConfigError, match=message) as raised:
        load_agent_config(path)
    assert str(raised.value).startswith(str(path))


def test_file_name_must_follow_the_convention(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match=r"agent-AGENT_NAME\.yaml"):
        load_agent_config(write(tmp_path, "captions.yaml", MANUAL))


def test_sources_in_order(tmp_path: Path) -> None:
    write(tmp_path, "agent-from-dir.yaml", MANUAL)
    assert find_agent_config({}, tmp_path).name == "from-dir"
    file_path = write(tmp_path.parent, "agent-from-file.yaml", MANUAL)
    assert find_agent_config({"AGENT_CONFIG_FILE": str(file_path)}, tmp_path).name == "from-file"
    body = {"AGENT_CONFIG_BODY": "agent_name: from-body\n" + MANUAL, "AGENT_CONFIG_FILE": str(file_path)}
    assert find_agent_config(body, tmp_path).name == "from-body"
    with pytest.raises(AgentConfigError, match="agent_name: required"):
        find_agent_config({"AGENT_CONFIG_BODY": MANUAL}, tmp_path)


def test_zero_or_several_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="no agent-"):
        find_agent_config({}, tmp_path)
    write(tmp_path, "agent-a.yaml", MANUAL)
    write(tmp_path, "agent-b.yaml", MANUAL)
    with pytest.raises(AgentConfigError, match="2 agent-"):
        find_agent_config({}, tmp_path)


def test_body_without_a_file_name_is_parsed() -> None:
    config = parse_agent_config("agent_name: x\n" + MANUAL, "AGENT_CONFIG_BODY")
    assert config.name == "x" and config.source == "AGENT_CONFIG_BODY"


def test_plugin_credentials_come_from_the_file_or_the_environment(tmp_path: Path) -> None:
    text = MANUAL.replace("provider: pocketsphinx", "provider: deepgram")
    path = write(tmp_path, "agent-a.yaml", text)
    with pytest.raises(
        AgentConfigError, match=r"live_captions\.deepgram\.api_key: required \(or set DEEPGRAM"
    ):
        load_agent_config(path, env={})
    assert (
        load_agent_config(path, env={"DEEPGRAM_API_KEY": "k"}).services["live_captions"].provider
        == "deepgram"
    )
    with_key = text + "  deepgram:\n    api_key: k\n"
    assert load_agent_config(write(tmp_path, "agent-b.yaml", with_key), env={}).name == "b"
    azure = MANUAL.replace("provider: pocketsphinx", "provider: azure") + "  azure:\n    speech_key: k\n"
    with pytest.raises(AgentConfigError, match=r"live_captions\.azure\.speech_region: required"):
        load_agent_config(write(tmp_path, "agent-c.yaml", azure), env={})


def test_server_options_carry_only_what_the_file_sets(tmp_path: Path) -> None:
    config = load_agent_config(write(tmp_path, "agent-a.yaml", MANUAL + "load_threshold: 0.4\n"))
    assert config.server_options() == {"load_threshold": 0.4}
    text = MANUAL + "ws_url: ws://example:7880\napi_key: k\napi_secret: s\n"
    config = load_agent_config(write(tmp_path, "agent-b.yaml", text))
    assert config.server_options() == {
        "load_threshold": 0.7,
        "ws_url": "ws://example:7880",
        "api_key": "k",
        "api_secret": "s",
    }


def test_sections_with_processing_are_custom_services(tmp_path: Path) -> None:
    text = "summaries:\n  processing: automatic\n  model: small\n"
    config = load_agent_config(write(tmp_path, "agent-mine.yaml", text))
    service = config.services["summaries"]
    assert config.automatic and not service.builtin and service.provider == ""
    assert dict(service.settings) == {"model": "small"} and config.warnings == ()
    with pytest.raises(AgentConfigError, match=r"summaries\.processing: expected automatic or manual"):
        load_agent_config(write(tmp_path, "agent-bad.yaml", "summaries:\n  processing: often\n"))


def test_an_openvidu_style_file_is_read(tmp_path: Path) -> None:
    """OpenVidu's sample keeps a section for every provider and writes log levels in capitals."""
    text = """
enabled: true
load_threshold: 1.0
log_level: CRITICAL
live_captions:
  processing: automatic
  provider: deepgram
  aws:
    aws_access_key_id: x
  deepgram:
    api_key: k
    model: nova-3
"""
    config = load_agent_config(write(tmp_path, "agent-speech-processing.yaml", text), env={})
    assert config.automatic and config.registration_name == "" and config.log_level == "critical"
    service = config.services["live_captions"]
    assert (service.provider, dict(service.settings)) == ("deepgram", {"api_key": "k", "model": "nova-3"})
    assert any("unknown key 'live_captions.aws' ignored" in w for w in config.warnings)
