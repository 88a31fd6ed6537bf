"""The values a request body may hold: JSON every upstream can parse and we can re-encode.

Python's JSON parser (the one FastAPI uses) accepts more than RFC 8259: ``NaN`` and
``Infinity``, integers of any size, and lone surrogates (``"\\ud800"``, or the raw bytes
``ED A0 80``), which are not Unicode text. None of these can be sent on: orjson refuses to
encode them, and upstreams refuse them. Integers are held to I-JSON's interoperable range
(RFC 7493: ±(2**53 - 1), what every JSON parser, JavaScript's included, reads exactly).
:func:`check_json_values` walks a parsed body before the request model validates it and
raises :class:`JsonValueError`, naming where the value is, so the route answers 400 rather
than failing later with a 500.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias, Union

from pydantic import BeforeValidator, Field
from typing_extensions import TypeAliasType

__all__ = [
    "MAX_DEPTH",
    "MAX_INTEGER",
    "WHOLE",
    "JsonValue",
    "JsonValueError",
    "check_json_values",
]

#: How deep arrays and objects may nest (a tool's JSON schema needs a few dozen at most).
MAX_DEPTH = 64
#: I-JSON's integers (RFC 7493 section 2.2).
MAX_INTEGER = 2**53 - 1
_INT_MIN, _INT_MAX = -MAX_INTEGER, MAX_INTEGER

_NOT_INTEGER: dict[str, Any] = {"not": {"type": "integer"}}
#: A JSON value as this module allows it: the type of free-form fields (tool parameters,
#: content parts, unknown fields passed through), so the schema says what is accepted.
#: (mypy does not follow this recursive alias: to it, the values are ``Any``.)
if TYPE_CHECKING:
    JsonValue: TypeAlias = Any
else:
    JsonValue = TypeAliasType(
        "JsonValue",
        Union[  # noqa: UP007 - a recursive alias needs the names as strings
            list["JsonValue"],
            dict[str, "JsonValue"],
            str,
            bool,
            Annotated[int, Field(ge=_INT_MIN, le=_INT_MAX)],
            # Not an integer: JSON Schema counts 2**70 as a number, and it is refused.
            Annotated[float, Field(allow_inf_nan=False, json_schema_extra=_NOT_INTEGER)],
            None,
        ],
    )


def _whole(value: Any) -> Any:
    # JSON Schema counts 5.0 as an integer: so do we (true and "5" stay refused).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: Put last in an integer field's ``Annotated`` (after its bounds, so the schema shows them):
#: strict still (no ``true``, no ``"5"``), but ``5.0`` is 5, as JSON Schema has it.
WHOLE = BeforeValidator(_whole)


class JsonValueError(Exception):
    """A body value no upstream can take; ``param`` is its path (``messages[0].content``)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _path(parts: tuple[str | int, ...]) -> str | None:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or None


def _lone_surrogate(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"\\u{ord(text[exc.start]):04x}"
    return None


def _refuse(message: str, parts: tuple[str | int, ...]) -> JsonValueError:
    param = _path(parts)
    return JsonValueError(f"{param}: {message}" if param else message, param)


def check_json_values(body: Any) -> None:
    """Raise :class:`JsonValueError` at a value of ``body`` that is not sendable JSON:
    a lone surrogate in a string or a key, a non-finite number, an integer outside
    ±:data:`MAX_INTEGER`, or nesting deeper than :data:`MAX_DEPTH`."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(body, ())]
    while stack:
        value, parts = stack.pop()
        if isinstance(value, str):
            if (found := _lone_surrogate(value)) is not None:
                raise _refuse(f"a lone surrogate ({found}) is not Unicode text", parts)
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                raise _refuse("the integer is out of range (I-JSON: ±(2**53 - 1))", parts)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _refuse("NaN and Infinity are not JSON numbers", parts)
        elif isinstance(value, (dict, list)):
            if len(parts) >= MAX_DEPTH:
                raise _refuse(f"the body nests deeper than {MAX_DEPTH} levels", parts)
            if isinstance(value, list):
                stack.extend((item, (*parts, i)) for i, item in enumerate(value))
                continue
            for key, item in value.items():
                if (found := _lone_surrogate(key)) is not None:
                    raise _refuse(f"a key holds a lone surrogate ({found})", parts)
                stack.append((item, (*parts, key)))
