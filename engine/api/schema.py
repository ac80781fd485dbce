"""Declarative type checks for request bodies, as Go's encoding/json applies them in dockerd.

A schema is built from a few node kinds (Bool, Int, Str, StrSlice, List, Map, Obj). `check(schema, body)`
walks the body and raises InvalidParameter with Go's wording on the first value of the wrong type
("invalid JSON: json: cannot unmarshal string into Go struct field HostConfig.Privileged of type bool"),
so `"Privileged": "false"` is a 400 and never a truthy string. As in Go:
- unknown fields are accepted (clients send many the engine ignores);
- null is accepted for every field (Go leaves the zero value), but not as an item of a list or a value
  of a map (Go would make it "" or an empty struct; the engine's code would meet a None), except
  where the item is an empty struct or anything;
- integers are integers: no strings, no booleans, no fractions, and within the Go type's range.
Ranges Docker checks with its own message carry that message (`Int(..., message=...)`).
"""

from __future__ import annotations

import abc
from typing import Any, Mapping

from dockyard.engine.errors import InvalidParameter

INT64 = (-(1 << 63), (1 << 63) - 1)


def _json_kind(value: Any) -> str:
    """Go's name for the JSON value that did not fit ("string", "number", "bool", "array", "object")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def type_error(path: str, value: Any, go_type: str) -> InvalidParameter:
    kind = _json_kind(value)
    if kind == "number":
        kind = "number %s" % value
    return InvalidParameter(
        "invalid JSON: json: cannot unmarshal %s into Go struct field %s of type %s" % (kind, path, go_type)
    )


class Node(abc.ABC):
    go_type = "interface {}"
    null_item_ok = False  # may null be an item of a list / a value of a map of these?

    @abc.abstractmethod
    def check(self, value: Any, path: str) -> None:
        """Raise InvalidParameter (in Go's words) when `value` at `path` is not of this type."""


class Any_(Node):
    """Anything (a field the engine never reads as a typed value)."""

    null_item_ok = True

    def check(self, value: Any, path: str) -> None:
        return None


class Bool(Node):
    go_type = "bool"

    def check(self, value: Any, path: str) -> None:
        if value is not None and not isinstance(value, bool):
            raise type_error(path, value, self.go_type)


class Str(Node):
    go_type = "string"

    def check(self, value: Any, path: str) -> None:
        if value is not None and not isinstance(value, str):
            raise type_error(path, value, self.go_type)


class Int(Node):
    """An integer of a Go type (range), optionally with Docker's own range check and message.

    `message` (%-formatted with the value when it has a %d) applies outside [minimum, maximum].
    """

    def __init__(
        self,
        go_type: str = "int64",
        minimum: int | None = None,
        maximum: int | None = None,
        message: str | None = None,
    ) -> None:
        self.go_type = go_type
        low, high = _GO_INT_RANGES[go_type]
        self.type_range = (low, high)
        self.minimum = minimum
        self.maximum = maximum
        self.message = message

    def check(self, value: Any, path: str) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise type_error(path, value, self.go_type)
        if isinstance(value, float):
            # Go decodes 1.5 and 1e3 into an int field as errors; 1.0 is not an integer literal either.
            raise type_error(path, value, self.go_type)
        low, high = self.type_range
        if not low <= value <= high:
            raise type_error(path, value, self.go_type)
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            if self.message:
                raise InvalidParameter(self.message % value if "%" in self.message else self.message)
            raise InvalidParameter(
                "invalid value for %s: %d is out of range [%s, %s]"
                % (path, value, _bound(self.minimum), _bound(self.maximum))
            )


def _bound(value: int | None) -> str:
    return "-inf" if value is None else str(value)


_GO_INT_RANGES = {
    "int": INT64,
    "int64": INT64,
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint": (0, (1 << 64) - 1),
    "uint64": (0, (1 << 64) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint8": (0, 255),
    "os.FileMode": (0, (1 << 32) - 1),
    "time.Duration": INT64,
}


class List(Node):
    def __init__(self, item: Node, max_items: int | None = None) -> None:
        self.item = item
        self.max_items = max_items
        self.go_type = "[]" + item.go_type

    def check(self, value: Any, path: str) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            raise type_error(path, value, self.go_type)
        if self.max_items is not None and len(value) > self.max_items:
            raise InvalidParameter("invalid value for %s: at most %d items" % (path, self.max_items))
        for item in value:
            if item is None and not self.item.null_item_ok:
                raise type_error(path, item, self.item.go_type)
            self.item.check(item, path)


class StrSlice(Node):
    """strslice.StrSlice (Cmd, Entrypoint, Healthcheck.Test): a string or a list of strings."""

    go_type = "[]string"

    def check(self, value: Any, path: str) -> None:
        if value is None or isinstance(value, str):
            return
        if not isinstance(value, list):
            raise type_error(path, value, "strslice.StrSlice")
        for item in value:
            if not isinstance(item, str):
                raise type_error(path, item, "string")


class Map(Node):
    """A JSON object with free keys (Labels, Tmpfs, ExposedPorts ...), each value of one schema."""

    def __init__(self, value: Node) -> None:
        self.value = value
        self.go_type = "map[string]" + value.go_type

    def check(self, value: Any, path: str) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise type_error(path, value, self.go_type)
        for item in value.values():
            if item is None and not self.value.null_item_ok:
                raise type_error(path, item, self.value.go_type)
            self.value.check(item, path)


class Obj(Node):
    """A Go struct: known fields checked, unknown fields accepted."""

    def __init__(self, go_type: str, fields: Mapping[str, Node]) -> None:
        self.go_type = go_type
        self.fields = dict(fields)

    def check(self, value: Any, path: str) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise type_error(path or self.go_type, value, self.go_type)
        for name, node in self.fields.items():
            if name in value:
                node.check(value[name], path + "." + name if path else name)


EMPTY_STRUCT = Obj("struct {}", {})
EMPTY_STRUCT.null_item_ok = True  # ExposedPorts / Volumes: {"80/tcp": null} means the same as {}


def check(schema: Obj, body: Any) -> None:
    """Raise InvalidParameter (HTTP 400) when `body` does not fit `schema`; the body must be an object."""
    if not isinstance(body, dict):
        raise InvalidParameter(
            "invalid JSON: json: cannot unmarshal %s into Go value of type %s" % (_json_kind(body), schema.go_type)
        )
    schema.check(body, "")
