"""The AI services an `agent-NAME.yaml` turns on, and what each does inside a job."""

from livekit.agents import AutoSubscribe, JobContext

from switchboard.agents.config import SERVICES, AgentConfig, AgentConfigError, ServiceConfig
from switchboard.agents.services.live_captions import LiveCaptions
from switchboard.agents.services.speech_to_text import build_stt
from switchboard.agents.services.voice_echo import VoiceEcho, check_voice_echo


def check_services(config: AgentConfig) -> None:
    """Fail now, in the agent's main process, on what would otherwise fail in every job."""
    builtin = [service for service in config.services.values() if service.builtin]
    if not builtin:
        raise AgentConfigError(
            f"{config.source}: no built-in service to run (built in: {', '.join(SERVICES)}); "
            "an agent of your own runs as your own livekit-agents program"
        )
    for service in builtin:
        if service.name == "voice_echo":
            check_voice_echo(config, service)
        else:
            build_stt(config, service)


async def run_services(config: AgentConfig, ctx: JobContext) -> None:
    """The job's entrypoint: start every configured service in the room, then stay until the job ends."""
    services = [service for service in config.services.values() if service.builtin]
    for service in services:
        if service.name == "live_captions":  # before connecting: it follows the tracks as they come
            _start_captions(ctx, config, service)
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    for service in services:
        if service.name == "voice_echo":
            voice = VoiceEcho(ctx, config, service)
            ctx.add_shutdown_callback(voice.aclose)


def _start_captions(ctx: JobContext, config: AgentConfig, service: ServiceConfig) -> None:
    captions = LiveCaptions(ctx.room, build_stt(config, service))
    ctx.add_shutdown_callback(captions.aclose)
