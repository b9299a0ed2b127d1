"""The STT engine a service's `provider` names: pocketsphinx built in, the others livekit-agents plugins."""

import importlib
from collections.abc import Mapping
from typing import Any

from livekit.agents import stt

from switchboard.agents.config import AgentConfig, AgentConfigError, ServiceConfig
from switchboard.agents.services.pocketsphinx_stt import PocketSphinxOptions, PocketSphinxSTT

# Settings a plugin needs that its own defaults do not give: captions and voice agents need results
# while people speak.
STREAMING_DEFAULTS: dict[str, dict[str, Any]] = {"openai": {"use_realtime": True}}


def build_stt(
    config: AgentConfig, service: ServiceConfig, defaults: Mapping[str, Mapping[str, Any]] | None = None
) -> stt.STT[Any]:
    """A streaming STT for `service`, or an AgentConfigError naming the file and the key at fault.

    `defaults` (provider → settings) are the service's own defaults, under what its file sets."""
    section = f"{config.source}: {service.name}.{service.provider}"
    own = dict((defaults or {}).get(service.provider, {}))
    if service.provider == "pocketsphinx":
        try:
            return PocketSphinxSTT(PocketSphinxOptions.from_settings(own | dict(service.settings)))
        except ValueError as exc:
            raise AgentConfigError(f"{section}.{exc}") from exc
    module_name = f"livekit.plugins.{service.provider}"
    try:
        plugin = importlib.import_module(module_name)
    except ImportError as exc:
        raise AgentConfigError(
            f"{config.source}: {service.name}.provider: '{service.provider}' needs the "
            f"livekit-plugins-{service.provider} package; install it with "
            f"pip install 'switchboard[{service.provider}]'"
        ) from exc
    settings = STREAMING_DEFAULTS.get(service.provider, {}) | own | dict(service.settings)
    try:
        engine: stt.STT[Any] = plugin.STT(**settings)
    except Exception as exc:  # unknown keyword, missing credentials, bad value: each plugin has its own
        raise AgentConfigError(f"{section}: {exc}") from exc
    if not engine.capabilities.streaming:
        raise AgentConfigError(
            f"{section}: these settings give no streaming recognition, which {service.name} needs"
        )
    return engine
