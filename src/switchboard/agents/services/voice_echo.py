"""The `voice_echo` service: a livekit-agents voice agent that works offline.

An `AgentSession` as LiveKit agents are written: an STT (pocketsphinx unless the file names a plugin), the
framework's bundled voice activity detector (for interruptions), and the espeak-ng TTS. It greets the
participant it talks with, then answers each utterance by saying what it understood ("You said: …"); with
an `llm:` section, a livekit-agents LLM plugin answers instead. It talks with one participant at a time
(the first non-agent one in the room); when that participant leaves, it waits for the next and greets them.
"""

import asyncio
import contextlib
import importlib
import logging
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from livekit.agents import Agent, AgentSession, JobContext, StopResponse, inference, llm, room_io
from livekit.agents.types import NOT_GIVEN
from livekit.agents.voice import CloseEvent
from livekit.agents.voice.events import CloseReason

from switchboard.agents.config import AgentConfig, AgentConfigError, ServiceConfig
from switchboard.agents.services.espeak_tts import EspeakError, EspeakOptions, EspeakTTS, probe
from switchboard.agents.services.speech_to_text import build_stt

logger = logging.getLogger("switchboard.agents.voice_echo")

GREETING = "Hello! I am an echo. Say something, and I will repeat it."
REPLY = "You said: {text}"
INSTRUCTIONS = "You are a helpful voice assistant. Answer in one or two short spoken sentences."
TTS_PROVIDERS = ("espeak",)
STT_DEFAULTS = {"pocketsphinx": {"end_silence": 0.3}}
"""The STT's defaults for a conversation, under what the file sets. Captions wait 0.5 s of silence so as
not to cut a sentence at a pause; an answer that waits as long comes late (every 0.1 s here is 0.1 s
more between the end of an utterance and the reply, bench/voice.py), so the voice agent waits 0.3 s."""


@dataclass(frozen=True)
class VoiceEchoSettings:
    greeting: str = GREETING
    """Said to each participant the agent starts talking with; empty: say nothing first."""
    reply: str = REPLY
    """What the agent says to an utterance, `{text}` being what it understood (without an LLM)."""
    tts: EspeakOptions = field(default_factory=EspeakOptions)
    llm_provider: str = ""
    """A livekit-agents LLM plugin (`livekit.plugins.<provider>`), or empty: echo, no LLM."""
    llm_settings: Mapping[str, Any] = field(default_factory=dict)
    instructions: str = INSTRUCTIONS
    """The LLM's instructions."""

    @classmethod
    def from_service(cls, config: AgentConfig, service: ServiceConfig) -> "VoiceEchoSettings":
        """Read the service's own keys; an AgentConfigError names the file and the key at fault."""

        def fail(key: str, problem: str) -> AgentConfigError:
            return AgentConfigError(f"{config.source}: {service.name}.{key}: {problem}")

        def section(key: str, value: Any) -> Mapping[str, Any]:
            if value is None:
                return {}
            if not isinstance(value, Mapping):
                raise fail(key, f"expected a section of settings, got {value!r}")
            return value

        def known(key: str, value: Mapping[str, Any], keys: tuple[str, ...]) -> None:
            for name in value:
                if name not in keys:
                    raise fail(f"{key}.{name}", f"unknown setting (expected {', '.join(keys)})")

        options = service.options
        texts = {"greeting": GREETING, "reply": REPLY}
        for key in texts:
            value = options.get(key, texts[key])
            if not isinstance(value, str):
                raise fail(key, f"expected a text, got {value!r}")
            texts[key] = value
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(texts["reply"]) if name is not None}
        except ValueError as exc:
            raise fail("reply", f"{exc} (write {{{{ and }}}} for braces)") from exc
        if fields - {"text"}:
            others = ", ".join(f"{{{name}}}" for name in sorted(fields - {"text"}))
            raise fail("reply", f"only {{text}} may be filled in, not {others}")

        tts = section("tts", options.get("tts"))
        provider = tts.get("provider", "espeak")
        if provider not in TTS_PROVIDERS:
            raise fail("tts.provider", f"expected one of {', '.join(TTS_PROVIDERS)}, got {provider!r}")
        known("tts", tts, ("provider", *TTS_PROVIDERS))
        try:
            tts_options = EspeakOptions.from_settings(section(f"tts.{provider}", tts.get(provider)))
        except ValueError as exc:
            raise AgentConfigError(f"{config.source}: {service.name}.tts.{provider}.{exc}") from exc

        model = section("llm", options.get("llm"))
        if not model:
            return cls(greeting=texts["greeting"], reply=texts["reply"], tts=tts_options)
        llm_provider = model.get("provider")
        if not isinstance(llm_provider, str) or not llm_provider.isidentifier():
            raise fail("llm.provider", f"expected a livekit-agents plugin name, got {llm_provider!r}")
        known("llm", model, ("provider", "instructions", llm_provider))
        instructions = model.get("instructions", INSTRUCTIONS)
        if not isinstance(instructions, str) or not instructions.strip():
            raise fail("llm.instructions", f"expected a text, got {instructions!r}")
        return cls(
            greeting=texts["greeting"],
            reply=texts["reply"],
            tts=tts_options,
            llm_provider=llm_provider,
            llm_settings=dict(section(f"llm.{llm_provider}", model.get(llm_provider))),
            instructions=instructions,
        )


def build_llm(
    config: AgentConfig, service: ServiceConfig, settings: VoiceEchoSettings
) -> llm.LLM[Any] | None:
    """The LLM plugin the `llm:` section names, or None (echo); an AgentConfigError if it cannot start."""
    if not settings.llm_provider:
        return None
    provider = settings.llm_provider
    try:
        plugin = importlib.import_module(f"livekit.plugins.{provider}")
    except ImportError as exc:
        raise AgentConfigError(
            f"{config.source}: {service.name}.llm.provider: '{provider}' needs the "
            f"livekit-plugins-{provider} package (pip install livekit-plugins-{provider})"
        ) from exc
    if not isinstance(getattr(plugin, "LLM", None), type):
        raise AgentConfigError(
            f"{config.source}: {service.name}.llm.provider: livekit-plugins-{provider} has no LLM"
        )
    try:
        model: llm.LLM[Any] = plugin.LLM(**settings.llm_settings)
    except Exception as exc:  # unknown keyword, missing credentials, bad value: each plugin has its own
        raise AgentConfigError(f"{config.source}: {service.name}.llm.{provider}: {exc}") from exc
    return model


def check_voice_echo(config: AgentConfig, service: ServiceConfig) -> None:
    """Everything a job would need, checked before any job: the STT, espeak-ng and its voice, the LLM."""
    build_stt(config, service, STT_DEFAULTS)
    settings = VoiceEchoSettings.from_service(config, service)
    try:
        probe(settings.tts)
    except EspeakError as exc:
        raise AgentConfigError(f"{config.source}: {service.name}.tts: {exc}") from exc
    build_llm(config, service, settings)


class EchoAgent(Agent):
    """Answers each utterance by saying what it understood; no LLM involved."""

    def __init__(self, reply: str) -> None:
        super().__init__(instructions="Repeat what the user said.")
        self._reply = reply

    async def on_user_turn_completed(self, turn_ctx: llm.ChatContext, new_message: llm.ChatMessage) -> None:
        text = (new_message.text_content or "").strip()
        if text:
            self.session.say(self._reply.format(text=text))
        raise StopResponse  # the answer is the one above, not an LLM's


class VoiceEcho:
    """One job's conversations: with the first participant, then with the next one once they leave."""

    def __init__(self, ctx: JobContext, config: AgentConfig, service: ServiceConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.service = service
        self.settings = VoiceEchoSettings.from_service(config, service)
        self._task = asyncio.create_task(self._converse())

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _converse(self) -> None:
        while True:
            participant = await self.ctx.wait_for_participant()
            reason = await self._talk_with(participant.identity)
            if reason == CloseReason.ERROR:
                logger.error("voice session with %s failed; the agent leaves the room", participant.identity)
                self.ctx.shutdown(reason="voice session failed")
            if reason != CloseReason.PARTICIPANT_DISCONNECTED:  # else the next participant is greeted
                return

    async def _talk_with(self, identity: str) -> CloseReason:
        config, service, settings = self.config, self.service, self.settings
        model = build_llm(config, service, settings)
        session: AgentSession[None] = AgentSession(
            stt=build_stt(config, service, STT_DEFAULTS),
            vad=inference.VAD(),
            tts=EspeakTTS(settings.tts),
            llm=model if model is not None else NOT_GIVEN,
            # The STT's end of utterance ends the user's turn; the VAD is for interruptions. The STT has
            # already waited its own `end_silence` before it says so: waiting the framework's default
            # 0.5 s endpointing delay on top only makes every reply later (measured by bench/voice.py).
            turn_handling={"turn_detection": "stt", "endpointing": {"min_delay": 0.0}},
        )
        closed: asyncio.Future[CloseReason] = asyncio.get_running_loop().create_future()

        @session.on("close")
        def on_close(event: CloseEvent) -> None:
            if not closed.done():
                closed.set_result(event.reason)

        agent = EchoAgent(settings.reply) if model is None else Agent(instructions=settings.instructions)
        # Heard at 16 kHz, the rate of the STT and of the VAD (nothing resampled on the way), in frames of
        # 20 ms: the framework's default of 50 ms holds the end of an utterance back by up to 50 ms.
        audio = room_io.AudioInputOptions(sample_rate=16000, frame_size_ms=20)
        options = room_io.RoomOptions(participant_identity=identity, audio_input=audio)
        # record=False: nothing is sent to LiveKit Cloud's observability (there is no cloud here).
        await session.start(agent, room=self.ctx.room, room_options=options, record=False)
        logger.info("talking with %s", identity)
        if settings.greeting:
            session.say(settings.greeting)
        try:
            return await closed
        finally:
            await session.aclose()
