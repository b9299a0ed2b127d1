"""The voice_echo service's configuration: the sample file, its defaults, and errors naming file and key."""

import subprocess
import sys
from pathlib import Path

import pytest

from switchboard.agents.config import AgentConfigError, load_agent_config, parse_agent_config
from switchboard.agents.services import check_services
from switchboard.agents.services.espeak_tts import EspeakOptions
from switchboard.agents.services.pocketsphinx_stt import PocketSphinxSTT
from switchboard.agents.services.speech_to_text import build_stt
from switchboard.agents.services.voice_echo import GREETING, REPLY, STT_DEFAULTS, VoiceEchoSettings

SAMPLE = Path(__file__).parents[2] / "agents" / "agent-voice-echo.yaml"
BASE = "voice_echo:\n  processing: manual\n  provider: pocketsphinx\n"


def settings(extra: str) -> VoiceEchoSettings:
    config = parse_agent_config(BASE + extra, "agent-v.yaml", "agent-v.yaml")
    return VoiceEchoSettings.from_service(config, config.services["voice_echo"])


def test_the_sample_agent_is_accepted_as_it_ships() -> None:
    config = load_agent_config(SAMPLE)
    assert config.name == "voice-echo" and config.registration_name == "voice-echo" and not config.warnings
    check_services(config)  # pocketsphinx, espeak-ng and its voice: what `switchboard agent check` runs
    echo = VoiceEchoSettings.from_service(config, config.services["voice_echo"])
    assert echo.tts == EspeakOptions(voice="en-us", speed=160) and echo.llm_provider == ""
    assert "{text}" in echo.reply and echo.greeting

    checked = subprocess.run(
        [sys.executable, "-m", "switchboard", "agent", "check", str(SAMPLE)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert (
        "agent 'voice-echo' enabled; joins only rooms it is dispatched to as 'voice-echo'" in checked.stdout
    )


def test_every_key_is_optional() -> None:
    assert settings("") == VoiceEchoSettings(greeting=GREETING, reply=REPLY, tts=EspeakOptions())
    # The STT waits less silence than the captions agent's before it ends the user's turn.
    config = parse_agent_config(BASE, "agent-v.yaml", "agent-v.yaml")
    engine = build_stt(config, config.services["voice_echo"], STT_DEFAULTS)
    assert isinstance(engine, PocketSphinxSTT) and engine.options.end_silence == 0.3
    quiet = settings("  greeting: ''\n  reply: 'Heard: {text}.'\n  tts:\n    espeak:\n      voice: en-gb\n")
    assert (quiet.greeting, quiet.reply, quiet.tts.voice) == ("", "Heard: {text}.", "en-gb")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  greeting: 3\n", "voice_echo.greeting: expected a text, got 3"),
        ("  reply: 'You said {what}'\n", r"voice_echo.reply: only \{text\} may be filled in, not \{what\}"),
        ("  reply: 'You said {text'\n", "voice_echo.reply: .*write {{ and }} for braces"),
        ("  tts: espeak\n", "voice_echo.tts: expected a section of settings, got 'espeak'"),
        ("  tts:\n    provider: piper\n", "voice_echo.tts.provider: expected one of espeak, got 'piper'"),
        ("  tts:\n    voice: en\n", r"voice_echo.tts.voice: unknown setting \(expected provider, espeak\)"),
        ("  tts:\n    espeak:\n      speed: 1000\n", "voice_echo.tts.espeak.speed: expected a whole number"),
        (
            "  llm:\n    model: x\n",
            "voice_echo.llm.provider: expected a livekit-agents plugin name, got None",
        ),
        (
            "  llm:\n    provider: openai\n    temperature: 1\n",
            r"voice_echo.llm.temperature: unknown setting \(expected provider, instructions, openai\)",
        ),
        (
            "  llm:\n    provider: openai\n    instructions: ''\n",
            "voice_echo.llm.instructions: expected a text",
        ),
    ],
)
def test_bad_settings_name_the_file_and_the_key(extra: str, message: str) -> None:
    with pytest.raises(AgentConfigError, match=f"^agent-v.yaml: {message}"):
        settings(extra)


def test_the_check_runs_espeak_and_imports_the_llm_plugin() -> None:
    voice = parse_agent_config(
        BASE + "  tts:\n    espeak:\n      voice: nosuch\n", "agent-v.yaml", "agent-v.yaml"
    )
    with pytest.raises(
        AgentConfigError, match=r"agent-v\.yaml: voice_echo\.tts: espeak-ng with voice 'nosuch' failed"
    ):
        check_services(voice)

    # An LLM plugin is optional: named but not installed, it is reported before any job.
    model = settings("  llm:\n    provider: nosuchplugin\n    nosuchplugin:\n      model: m\n")
    assert (model.llm_provider, dict(model.llm_settings)) == ("nosuchplugin", {"model": "m"})
    config = parse_agent_config(BASE + "  llm:\n    provider: nosuchplugin\n", "agent-v.yaml", "agent-v.yaml")
    with pytest.raises(AgentConfigError, match="needs the livekit-plugins-nosuchplugin package"):
        check_services(config)
