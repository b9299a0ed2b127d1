"""Validation of names and sizes, with LiveKit's limits as defaults."""

from collections.abc import Mapping
from dataclasses import dataclass

from switchboard.core.errors import InvalidArgument


@dataclass(frozen=True)
class Limits:
    max_metadata_size: int = 512 * 1024
    max_attributes_size: int = 64 * 1024
    max_room_name_length: int = 256
    max_participant_identity_length: int = 256
    max_agent_name_length: int = 128


def check_name(what: str, value: str, max_length: int, *, required: bool = True) -> None:
    """Refuse empty (when required), over-long, or control-character names with a message naming ``what``."""
    if not value:
        if required:
            raise InvalidArgument(f"{what} is required")
        return
    if len(value) > max_length:
        raise InvalidArgument(f"{what} length exceeds limits: max length {max_length}")
    for position, char in enumerate(value):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise InvalidArgument(f"{what} contains a control character at position {position}")
    if value != value.strip():
        raise InvalidArgument(f"{what} must not start or end with whitespace")


def check_metadata(what: str, metadata: str, limits: Limits) -> None:
    size = len(metadata.encode())
    if limits.max_metadata_size and size > limits.max_metadata_size:
        raise InvalidArgument(f"{what} size exceeds limits: {size} > {limits.max_metadata_size} bytes")


def check_attributes(what: str, attributes: Mapping[str, str], limits: Limits) -> None:
    size = sum(len(key.encode()) + len(value.encode()) for key, value in attributes.items())
    if limits.max_attributes_size and size > limits.max_attributes_size:
        raise InvalidArgument(f"{what} size exceeds limits: {size} > {limits.max_attributes_size} bytes")


def check_deployment(deployment: str) -> None:
    """LiveKit's rule: at most 64 bytes, no '_', no whitespace or control bytes."""
    raw = deployment.encode()
    if len(raw) > 64:
        raise InvalidArgument("deployment exceeds 64 bytes")
    if "_" in deployment:
        raise InvalidArgument("deployment contains reserved character '_'")
    for position, byte in enumerate(raw):
        if byte <= 0x20 or byte == 0x7F:
            raise InvalidArgument(f"deployment contains whitespace or control byte at position {position}")
