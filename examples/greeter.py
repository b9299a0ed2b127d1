"""An agent of your own, configured by an agent-NAME.yaml file the way Switchboard's built-in agents are.

    AGENT_CONFIG_FILE=examples/agent-greeter.yaml \
    LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \
    python examples/greeter.py

It registers as `greeter` (its only service is `processing: manual`), so it joins the rooms it is
dispatched to, and says its greeting there on the `lk.chat` topic.
"""

from livekit.agents import JobContext

from switchboard.agents.config import find_agent_config
from switchboard.agents.runner import agent_server, run

config = find_agent_config()  # AGENT_CONFIG_BODY, else AGENT_CONFIG_FILE, else the ./agent-*.yaml
greeting = config.services["greeting"].settings.get("text", "Hello")
server = agent_server(config)  # the file's load_threshold, and ws_url / api_key / api_secret if set


@server.rtc_session(agent_name=config.registration_name)  # "" when any service is automatic
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    await ctx.room.local_participant.send_text(greeting, topic="lk.chat")


if __name__ == "__main__":
    run(server, config)  # until SIGTERM / Ctrl-C, then drain; `enabled: false` runs nothing
