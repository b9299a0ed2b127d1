"""The AI services an `agent-NAME.yaml` turns on, and what each does inside a job."""

from livekit.agents import AutoSubscribe, JobContext

from switchboard.agents.config import SERVICES, AgentConfig, AgentConfigError, ServiceConfig
from switchboard.agents.services.live_captions import LiveCaptions
from switchboard.agents.services.speech_to_text import build_stt


def check_services(config: AgentConfig) -> None:
    """Fail now, in the agent's main process, on what would otherwise fail in every job."""
    builtin = [service for service in config.services.values() if service.builtin]
    if not builtin:
        raise AgentConfigError(
            f"{config.source}: no built-in service to run (built in: {', '.join(SERVICES)}); "
            "an agent of your own runs as your own livekit-agents program"
        )
    for service in builtin:
        build_stt(config, service)


async def run_services(config: AgentConfig, ctx: JobContext) -> None:
    """The job's entrypoint: start every configured service in the room, then stay until the job ends."""
    for service in config.services.values():
        if service.builtin:
            _start(ctx, config, service)
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)


def _start(ctx: JobContext, config: AgentConfig, service: ServiceConfig) -> None:
    # Only live_captions exists so far; config parsing refuses any other service name.
    captions = LiveCaptions(ctx.room, build_stt(config, service))
    ctx.add_shutdown_callback(captions.aclose)
