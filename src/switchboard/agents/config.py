"""`agent-AGENT_NAME.yaml`: what an agent is, which AI services it runs, and how it is dispatched.

If any AI service of the agent has `processing: automatic`, the agent joins every new room (its worker
registers with no agent name); if all are `manual`, it registers as AGENT_NAME and joins only the rooms it
is dispatched to. Every error names the file and the key; unknown keys are warnings.

Besides the built-in services (SERVICES), any top-level section with a `processing` key is a custom
service: a user's own livekit-agents program reads its settings, and it counts for the dispatch mode.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NAME = re.compile(r"^[A-Za-z0-9_-]+$")
FILE_NAME = re.compile(r"^agent-([A-Za-z0-9_-]+)\.ya?ml$")
PROCESSING = ("automatic", "manual")
LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "critical")  # OpenVidu's files say CRITICAL too
COMMON_KEYS = (
    "agent_name",
    "enabled",
    "singleton",
    "load_threshold",
    "log_level",
    "ws_url",
    "api_key",
    "api_secret",
)

# AI services and the STT providers each accepts. `pocketsphinx` is built in (no network, no download);
# the others are livekit-agents plugins, installed as extras.
STT_PROVIDERS = ("pocketsphinx", "deepgram", "openai", "google", "azure", "assemblyai")
SERVICES: dict[str, tuple[str, ...]] = {
    "live_captions": STT_PROVIDERS,
    "voice_echo": STT_PROVIDERS,
}
# A service's keys besides `processing`, `provider` and the provider's section; the service checks them.
SERVICE_KEYS: dict[str, tuple[str, ...]] = {
    "voice_echo": ("tts", "llm", "greeting", "reply"),
}
# The settings each plugin cannot start without, and the environment variable it reads them from instead.
# (google also finds Application Default Credentials by itself, so nothing is required of it here.)
CREDENTIALS: dict[str, tuple[tuple[str, str], ...]] = {
    "deepgram": (("api_key", "DEEPGRAM_API_KEY"),),
    "openai": (("api_key", "OPENAI_API_KEY"),),
    "assemblyai": (("api_key", "ASSEMBLYAI_API_KEY"),),
    "azure": (("speech_key", "AZURE_SPEECH_KEY"), ("speech_region", "AZURE_SPEECH_REGION")),
}


class AgentConfigError(Exception):
    """A config the agent cannot start with; the message names the file and the key."""


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    processing: str
    provider: str
    """Empty for a custom service (a section with `processing` that Switchboard does not implement)."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """The provider's own section (e.g. `pocketsphinx: {…}`); a custom service's other keys."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """A built-in service's own keys (SERVICE_KEYS), as written; the service reads and checks them."""

    @property
    def builtin(self) -> bool:
        return self.name in SERVICES


@dataclass(frozen=True)
class AgentConfig:
    name: str
    source: str
    enabled: bool = True
    singleton: bool = False
    """At most one dispatch of this agent per room (when the server runs it, from agents_dir)."""
    load_threshold: float = 0.7
    log_level: str = "info"
    ws_url: str = ""
    api_key: str = ""
    api_secret: str = ""
    services: Mapping[str, ServiceConfig] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def automatic(self) -> bool:
        return any(service.processing == "automatic" for service in self.services.values())

    @property
    def registration_name(self) -> str:
        """The agent name its worker registers: empty (automatic dispatch) if any service is automatic."""
        return "" if self.automatic else self.name

    def server_options(self) -> dict[str, Any]:
        """Keyword arguments for livekit-agents' `AgentServer`: load threshold, and the server URL and API
        key when the file sets them (else the framework reads LIVEKIT_URL, LIVEKIT_API_KEY, ...)."""
        options: dict[str, Any] = {"load_threshold": self.load_threshold}
        connection = {"ws_url": self.ws_url, "api_key": self.api_key, "api_secret": self.api_secret}
        return options | {key: value for key, value in connection.items() if value}


def parse_agent_config(
    text: str, source: str, file_name: str | None = None, env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Read one agent's YAML. `file_name` (agent-NAME.yaml) gives the name; without it, `agent_name` must.
    `env` (default: the process environment) is where provider credentials may come from instead."""
    env = os.environ if env is None else env

    def fail(key: str, problem: str) -> AgentConfigError:
        return AgentConfigError(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")

    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise fail("", f"not valid YAML ({exc})") from exc
    if not isinstance(data, Mapping):
        raise fail("", "the agent config must be a mapping of keys")

    named = FILE_NAME.match(file_name) if file_name else None
    if file_name and not named:
        raise fail("", "the file must be named agent-AGENT_NAME.yaml (letters, digits, '-', '_')")
    declared = data.get("agent_name")
    if declared is not None and (not isinstance(declared, str) or not NAME.match(declared)):
        raise fail("agent_name", "expected letters, digits, '-' and '_' only")
    if named and declared is not None and declared != named.group(1):
        raise fail("agent_name", f"'{declared}' does not match the file name's '{named.group(1)}'")
    name = named.group(1) if named else declared
    if not name:
        raise fail("agent_name", "required when the config does not come from an agent-AGENT_NAME.yaml file")

    def typed(key: str, kinds: type | tuple[type, ...], default: Any, what: str) -> Any:
        value = data.get(key, default)
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            raise fail(key, f"expected {what}, got {value!r}")
        if not isinstance(value, kinds):
            raise fail(key, f"expected {what}, got {value!r}")
        return value

    enabled = typed("enabled", bool, True, "true or false")
    singleton = typed("singleton", bool, False, "true or false")
    threshold = float(typed("load_threshold", (int, float), 0.7, "a number between 0 and 1"))
    if not 0 < threshold <= 1:
        raise fail("load_threshold", f"expected a number between 0 and 1, got {threshold!r}")
    log_level = typed("log_level", str, "info", "a log level").lower()
    if log_level not in LOG_LEVELS:
        raise fail("log_level", f"expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    strings = {key: typed(key, str, "", "a string") for key in ("ws_url", "api_key", "api_secret")}

    services: dict[str, ServiceConfig] = {}
    warnings: list[str] = []
    for key, value in data.items():
        if key in COMMON_KEYS:
            continue
        if key in SERVICES:
            services[key] = _service(key, value, fail, warnings)
        elif isinstance(value, Mapping) and "processing" in value:
            services[key] = _custom_service(key, value, fail)
        else:
            warnings.append(f"unknown key '{key}' ignored")
    warnings = [f"{source}: {warning}" for warning in warnings]
    # A disabled agent is not started, so what it would need to start is not asked of it.
    for service in services.values() if enabled else ():
        for key, variable in CREDENTIALS.get(service.provider, ()):
            if not service.settings.get(key) and not env.get(variable):
                where = f"{service.name}.{service.provider}.{key}"
                raise fail(where, f"required (or set {variable} in the environment)")
    return AgentConfig(
        name=name,
        source=source,
        enabled=enabled,
        singleton=singleton,
        load_threshold=threshold,
        log_level=log_level,
        services=services,
        warnings=tuple(warnings),
        **strings,
    )


def _service(name: str, value: Any, fail: Any, warnings: list[str]) -> ServiceConfig:
    if not isinstance(value, Mapping):
        raise fail(name, "expected a section with at least 'processing' and 'provider'")
    processing = value.get("processing")
    if processing not in PROCESSING:
        raise fail(f"{name}.processing", f"expected automatic or manual, got {processing!r}")
    provider = value.get("provider")
    if provider not in SERVICES[name]:
        raise fail(f"{name}.provider", f"expected one of {', '.join(SERVICES[name])}, got {provider!r}")
    settings = value.get(provider, {})
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        raise fail(f"{name}.{provider}", "expected a section of provider settings")
    own = SERVICE_KEYS.get(name, ())
    for key in value:
        if key not in ("processing", "provider", *SERVICES[name], *own):
            warnings.append(f"unknown key '{name}.{key}' ignored")
    options = {key: value[key] for key in own if key in value}
    return ServiceConfig(
        name=name, processing=processing, provider=provider, settings=dict(settings), options=options
    )


def _custom_service(name: str, value: Mapping[str, Any], fail: Any) -> ServiceConfig:
    """A section of the user's own agent program: only `processing` is Switchboard's to read."""
    processing = value["processing"]
    if processing not in PROCESSING:
        raise fail(f"{name}.processing", f"expected automatic or manual, got {processing!r}")
    settings = {key: setting for key, setting in value.items() if key != "processing"}
    return ServiceConfig(name=name, processing=processing, provider="", settings=settings)


def load_agent_config(path: str | Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise AgentConfigError(f"{path}: cannot read the agent config ({exc.strerror})") from exc
    return parse_agent_config(text, str(path), path.name, env)


def find_agent_config(env: Mapping[str, str] | None = None, directory: str | Path = ".") -> AgentConfig:
    """OpenVidu's order: AGENT_CONFIG_BODY (YAML text, with agent_name), AGENT_CONFIG_FILE, else the one
    agent-*.yaml in the working directory."""
    env = os.environ if env is None else env
    if env.get("AGENT_CONFIG_BODY"):
        return parse_agent_config(env["AGENT_CONFIG_BODY"], "AGENT_CONFIG_BODY", env=env)
    if env.get("AGENT_CONFIG_FILE"):
        return load_agent_config(env["AGENT_CONFIG_FILE"], env)
    found = agent_config_files(directory)
    if len(found) != 1:
        what = "no agent-*.yaml" if not found else f"{len(found)} agent-*.yaml files"
        raise AgentConfigError(
            f"{Path(directory).resolve()}: {what}; set AGENT_CONFIG_FILE or AGENT_CONFIG_BODY to choose one"
        )
    return load_agent_config(found[0], env)


def agent_config_files(directory: str | Path) -> list[Path]:
    return sorted(p for p in Path(directory).iterdir() if FILE_NAME.match(p.name))
