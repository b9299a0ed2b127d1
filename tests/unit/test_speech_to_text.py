"""Which STT a live_captions provider gives, and the startup errors a user can act on."""

import pytest

from switchboard.agents.config import AgentConfigError, parse_agent_config
from switchboard.agents.services.pocketsphinx_stt import PocketSphinxSTT
from switchboard.agents.services.speech_to_text import build_stt


def captions(provider: str, section: str = "") -> str:
    return f"live_captions:\n  processing: manual\n  provider: {provider}\n{section}"


def test_pocketsphinx_is_built_in_and_takes_its_settings() -> None:
    config = parse_agent_config(
        captions("pocketsphinx", "  pocketsphinx:\n    end_silence: 0.8\n"), "f.yaml", "agent-a.yaml"
    )
    engine = build_stt(config, config.services["live_captions"])
    assert isinstance(engine, PocketSphinxSTT) and engine.options.end_silence == 0.8


def test_a_service_s_own_defaults_come_under_what_its_file_sets() -> None:
    defaults = {"pocketsphinx": {"end_silence": 0.3}, "deepgram": {"endpointing_ms": 25}}
    unset = parse_agent_config(captions("pocketsphinx"), "f.yaml", "agent-a.yaml")
    engine = build_stt(unset, unset.services["live_captions"], defaults)
    assert isinstance(engine, PocketSphinxSTT) and engine.options.end_silence == 0.3
    assert isinstance(plain := build_stt(unset, unset.services["live_captions"]), PocketSphinxSTT)
    assert plain.options.end_silence == 0.5
    set_ = parse_agent_config(
        captions("pocketsphinx", "  pocketsphinx:\n    end_silence: 0.8\n"), "f.yaml", "agent-a.yaml"
    )
    engine = build_stt(set_, set_.services["live_captions"], defaults)
    assert isinstance(engine, PocketSphinxSTT) and engine.options.end_silence == 0.8


def test_a_bad_pocketsphinx_setting_names_the_file_and_key() -> None:
    config = parse_agent_config(
        captions("pocketsphinx", "  pocketsphinx:\n    vad_mode: 9\n"), "f.yaml", "agent-a.yaml"
    )
    with pytest.raises(AgentConfigError, match=r"^f\.yaml: live_captions\.pocketsphinx\.vad_mode: expected"):
        build_stt(config, config.services["live_captions"])


def test_a_plugin_that_is_not_installed_names_the_extra() -> None:
    config = parse_agent_config(captions("deepgram"), "f.yaml", "agent-a.yaml", env={"DEEPGRAM_API_KEY": "k"})
    with pytest.raises(AgentConfigError) as raised:
        build_stt(config, config.services["live_captions"])
    message = str(raised.value)
    assert message.startswith("f.yaml: live_captions.provider: 'deepgram' needs the livekit-plugins-deepgram")
    assert "pip install 'switchboard[deepgram]'" in message
