"""The bounds every request obeys before any service sees it: no NUL, no huge strings,
no endless repeated fields. Field-specific rules (tags, names, durations) stay with the
code that knows the field."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from lifeboat.bounds import MAX_REQUEST_REPEATED, string_problem
from lifeboat.errors import InvalidArgument


def check_request(message: Message, prefix: str = "") -> None:
    """InvalidArgument naming the first field out of bounds; the value is never repeated."""
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.is_repeated:
            if len(value) > MAX_REQUEST_REPEATED:
                raise InvalidArgument(name, f"more than {MAX_REQUEST_REPEATED} entries")
            for index, item in enumerate(value):
                _check_value(field, item, f"{name}[{index}]")
        else:
            _check_value(field, value, name)


def _check_value(field: FieldDescriptor, value: object, name: str) -> None:
    if field.type == FieldDescriptor.TYPE_STRING:
        assert isinstance(value, str)
        problem = string_problem(value)
        if problem is not None:
            raise InvalidArgument(name, problem)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        assert isinstance(value, Message)
        check_request(value, name + ".")
