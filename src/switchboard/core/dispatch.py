"""Dispatches: a request that an agent (by name; empty name = automatic agents) serve a room."""

from dataclasses import dataclass, field
from enum import IntEnum

from switchboard.core.jobs import Job
from switchboard.core.limits import Limits, check_attributes, check_deployment, check_metadata, check_name


class RestartPolicy(IntEnum):
    """Same numbers as ``livekit.JobRestartPolicy``."""

    ON_FAILURE = 0
    NEVER = 1


@dataclass(frozen=True)
class DispatchSpec:
    """What a caller asks for: the fields of CreateAgentDispatchRequest and RoomAgentDispatch."""

    agent_name: str = ""
    metadata: str = ""
    restart_policy: RestartPolicy = RestartPolicy.ON_FAILURE
    deployment: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    def validate(self, limits: Limits) -> None:
        check_name("agent name", self.agent_name, limits.max_agent_name_length, required=False)
        check_deployment(self.deployment)
        check_metadata("dispatch metadata", self.metadata, limits)
        check_attributes("dispatch attributes", self.attributes, limits)


@dataclass
class Dispatch:
    id: str
    room: str
    spec: DispatchSpec
    created_at: float
    jobs: list[Job] = field(default_factory=list)
    deleted_at: float | None = None
    references: int = 1
    """For a singleton agent: how many requests share this dispatch (DeleteDispatch removes one)."""

    @property
    def live(self) -> bool:
        """It still has an agent coming or present: a job that has not ended, or none launched yet."""
        return not self.jobs or any(not job.ended for job in self.jobs)

    @property
    def agent_name(self) -> str:
        return self.spec.agent_name
