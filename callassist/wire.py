"""The one versioned wire format of everything that travels between nodes (the Redis bus).

Events: `encode(event)` is the JSON (UTF-8) of {"v": WIRE_VERSION, **event_to_dict(event)};
`decode(data)` gives the CallEvent back, or raises WireError saying exactly what is wrong
(not JSON, unknown version, unknown type, a missing, extra or mistyped field), so a consumer
can set a bad entry aside (callassist:events:rejected) instead of crashing on it, or worse,
storing half of it. RPC payloads: `encode_message(dict)` / `decode_message(bytes)`, the same
envelope without the event checks.

A new field in an event is a new version: decoders refuse what they do not know rather than
dropping it silently.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

from callassist.events import EVENT_TYPES, CallEvent, event_from_dict, event_to_dict

WIRE_VERSION = 1
VERSION_KEY = "v"


class WireError(ValueError):
    """Bytes that are not a valid message of this wire format; the message says why."""


def encode(event: CallEvent) -> bytes:
    if type(event).__name__ not in EVENT_TYPES:
        raise WireError(f"not a call event: {type(event).__name__}")
    return _dumps({VERSION_KEY: WIRE_VERSION, **event_to_dict(event)})


def decode(data: bytes | str) -> CallEvent:
    body = _envelope(data)
    kind = body.get("type")
    if not isinstance(kind, str):
        raise WireError(f"no event type (\"type\" is {kind!r})")
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise WireError(f"unknown event type {kind!r} (known: {', '.join(sorted(EVENT_TYPES))})")
    fields = {k: v for k, v in body.items() if k != "type"}
    _check_dataclass(cls, fields, kind)
    try:
        return event_from_dict(body)
    except (TypeError, ValueError, KeyError) as exc:     # a check above should have said it
        raise WireError(f"{kind}: {exc}") from None


def encode_message(message: dict[str, Any]) -> bytes:
    """An RPC payload (a JSON object with string keys); "v" is the envelope's."""
    if VERSION_KEY in message:
        raise WireError(f"a message must not carry its own {VERSION_KEY!r} key")
    try:
        return _dumps({VERSION_KEY: WIRE_VERSION, **message})
    except (TypeError, ValueError) as exc:
        raise WireError(f"message not serialisable: {exc}") from None


def decode_message(data: bytes | str) -> dict[str, Any]:
    return _envelope(data)


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _envelope(data: bytes | str) -> dict[str, Any]:
    """The JSON object of `data` without its version key, checked to be this version."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"not JSON: {exc} (data starts {_preview(data)})") from None
    except TypeError:
        raise WireError(f"not bytes or text: {type(data).__name__}") from None
    if not isinstance(value, dict):
        raise WireError(f"not a JSON object but {type(value).__name__} (data starts {_preview(data)})")
    if VERSION_KEY not in value:
        raise WireError(f"no wire version (key {VERSION_KEY!r}); data starts {_preview(data)}")
    version = value.pop(VERSION_KEY)
    if version != WIRE_VERSION or isinstance(version, bool):
        raise WireError(f"unknown wire version {version!r} (this node reads version {WIRE_VERSION}: "
                        f"upgrade it, or the sender is newer)")
    return value


def _preview(data: bytes | str, limit: int = 60) -> str:
    return repr(data[:limit]) + ("..." if len(data) > limit else "")


# --- field checks ---------------------------------------------------------------------
# The events' annotations say what each field holds; the checks read them, so a new event
# type or field is checked without touching this module.

@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _required(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def _check_dataclass(cls: type, data: dict[str, Any], where: str) -> None:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(_required(cls) - data.keys())
    if missing:
        raise WireError(f"{where}: missing field(s) {', '.join(missing)}")
    extra = sorted(data.keys() - names)
    if extra:
        raise WireError(f"{where}: unknown field(s) {', '.join(extra)}")
    for name, value in data.items():
        _check_value(value, hints[name], f"{where}.{name}")


def _check_value(value: Any, hint: Any, where: str) -> None:
    origin = get_origin(hint)
    if hint is Any:
        return
    if origin is Union or origin is types.UnionType:
        for option in get_args(hint):
            try:
                _check_value(value, option, where)
                return
            except WireError:
                pass
        raise WireError(f"{where}: {value!r} is none of {hint}")
    if origin is Literal:
        if value not in get_args(hint):
            raise WireError(f"{where}: {value!r} is not one of {', '.join(map(repr, get_args(hint)))}")
        return
    if origin is tuple:              # tuple[X, ...]: a JSON list
        if not isinstance(value, list):
            raise WireError(f"{where}: expected a list, got {type(value).__name__}")
        item_hint = get_args(hint)[0]
        for index, item in enumerate(value):
            _check_value(item, item_hint, f"{where}[{index}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise WireError(f"{where}: expected an object, got {type(value).__name__}")
        return
    if hint is type(None):
        if value is not None:
            raise WireError(f"{where}: expected null, got {type(value).__name__}")
        return
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise WireError(f"{where}: expected an object ({hint.__name__}), got {type(value).__name__}")
        _check_dataclass(hint, value, where)
        return
    if hint is float:                # JSON has one number type; a bool is not a number here
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint in (str, bool):
        ok = isinstance(value, hint)
    else:
        raise WireError(f"{where}: no wire check for {hint}")
    if not ok:
        raise WireError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r:.40}")
