"""Proto3 JSON as Switchboard reads and writes it, wherever it appears: Twirp bodies, WebSocket text frames
(`/agent`, `/rtc`) and the `roomConfig` claim of access tokens.

Written as LiveKit writes it. Read tolerantly where the spelling is concerned (snake_case or camelCase
names, unknown fields ignored: a newer client's extra fields pass, as they do in binary protobuf), but an
enum value the field does not define is refused, whether it is written as a name or as a number.

LiveKit itself is not consistent here: its Twirp handlers use Go protojson with `DiscardUnknown`, which
turns an unknown enum *name* into the default silently (`"restart_policy": "BOGUS"` becomes
`JRP_ON_FAILURE`), while its signalling connections and token parser use plain `protojson.Unmarshal`,
which refuses unknown names and unknown fields alike. Switchboard refuses unknown enum values in every
one of them, so that a typo never becomes a default, and tolerates unknown fields in every one of them.
"""

import json
from collections.abc import Callable, Iterable
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from switchboard.core.errors import InvalidArgument


def to_json(message: Message) -> dict[str, Any]:
    """Proto3 JSON as LiveKit writes it: snake_case, defaults emitted, enums by name, int64 as strings."""
    return json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )


def from_json(text: bytes | str, message: Message) -> None:
    """Read a JSON document into `message` (see `from_dict`); json_format.ParseError if it is not JSON."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also invalid UTF-8, and nesting too deep to decode
        raise json_format.ParseError(f"Failed to load JSON: {exc}") from exc
    from_dict(data, message)


def from_dict(data: object, message: Message) -> None:
    """Read decoded JSON into `message`: json_format.ParseError if it does not fit the message,
    InvalidArgument for an enum value (name or number) that its field does not define."""
    if not isinstance(data, dict):
        # protobuf reads a string or a list as an empty message, and fails on a number with a TypeError.
        raise json_format.ParseError(f"expected a JSON object for {message.DESCRIPTOR.name}")
    try:
        # Names first: protobuf's parser drops an unknown enum name silently when it ignores unknown fields.
        _check_enum_names(data, cast(Descriptor, message.DESCRIPTOR), "")
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except RecursionError as exc:  # nesting deeper than the parser goes: malformed, not a crash
        raise json_format.ParseError(f"Failed to parse JSON: {exc}") from exc
    check_enums(message)


def check_enums(message: Message, path: str = "") -> None:
    """Refuse enum numbers the field's enum does not define, in `message` and the messages it holds."""
    for field, value in message.ListFields():
        where = f"{path}{field.name}"
        value_field, items = _values(field, value, map_items=lambda v: v.values())
        enum, nested = _enum(value_field), _message(value_field)
        for item in items:
            if enum is not None and item not in enum.values_by_number:
                raise _unknown(where, enum, item)
            if nested is not None:
                check_enums(item, where + ".")


def _check_enum_names(data: Any, descriptor: Descriptor, path: str) -> None:
    if not isinstance(data, dict) or descriptor.full_name.startswith("google.protobuf."):
        return  # not an object (ParseDict says what is wrong), or a well-known type with its own JSON form
    for name, value in data.items():
        field = descriptor.fields_by_name.get(name) or descriptor.fields_by_camelcase_name.get(name)
        if field is None or value is None:
            continue
        where = f"{path}{field.name}"
        value_field, items = _values(
            field, value, map_items=lambda v: v.values() if isinstance(v, dict) else (), decoded_json=True
        )
        enum, nested = _enum(value_field), _message(value_field)
        for item in items:
            # A number, even written as a string ("1"), is checked by check_enums once parsed.
            if (
                enum is not None
                and isinstance(item, str)
                and item not in enum.values_by_name
                and not item.lstrip("-").isdigit()
            ):
                raise _unknown(where, enum, item)
            if nested is not None:
                _check_enum_names(item, nested, where + ".")


def _values(
    field: FieldDescriptor, value: Any, map_items: Callable[[Any], Iterable[Any]], decoded_json: bool = False
) -> tuple[FieldDescriptor, Iterable[Any]]:
    """The field that describes each item of `value` (a map's value field for a map), and the items."""
    entry = _message(field)
    if entry is not None and entry.GetOptions().map_entry:
        return entry.fields_by_name["value"], map_items(value)
    if field.is_repeated and (not decoded_json or isinstance(value, list)):
        return field, value
    return field, [value]


def _enum(field: FieldDescriptor) -> EnumDescriptor | None:
    return field.enum_type if field.type == FieldDescriptor.TYPE_ENUM else None


def _message(field: FieldDescriptor) -> Descriptor | None:
    return field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None


def _unknown(where: str, enum: EnumDescriptor, value: object) -> InvalidArgument:
    names = ", ".join(enum.values_by_name)
    return InvalidArgument(f"unknown {where} {value!r}: expected one of {names}")
