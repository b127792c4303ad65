"""Check that JSON read from disk has the shape a TypedDict declares, with a message that says where it does not.

    validate(data, Manifest, "manifest")  ->  ShapeError("manifest.prompts[2].seed must be an integer, found str '12'")

Supported annotations: TypedDict (required keys from Required[...] / total), list[X], dict[str, X], X | Y, Literal,
str, int, float (an int passes), bool, None and Any. Keys a TypedDict does not declare pass: a reader accepts
fields written by a newer evalkit of the same schema version. A bool is never taken for an int.
"""

import types
import functools
import typing
from typing import Any, Literal, NotRequired, Required

# No `from __future__ import annotations`: the annotations checked here are real objects.


class ShapeError(ValueError):
    """Where in a record the shape is wrong, and how."""


def validate(obj: Any, schema: Any, where: str = "") -> None:
    """Raise ShapeError if `obj` does not fit `schema` (a TypedDict or a type annotation). Unknown keys pass.

    `where` names `obj` in the message ("manifest", "manifest.prompts[2].seed", ...)."""
    hint = _resolve(schema)
    origin = typing.get_origin(hint)
    name = where or "the record"
    if hint is Any:
        return
    if _is_typeddict(hint):
        if not isinstance(obj, dict):
            raise ShapeError(f"{name} must be a JSON object, found {_kind(obj)}")
        hints = _hints(hint)
        for key in sorted(hint.__required_keys__):
            if key not in obj:
                raise ShapeError(f"{_join(where, key)} is missing")
        for key, sub in hints.items():
            if key in obj:
                validate(obj[key], sub, _join(where, key))
        return
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                validate(obj, option, where)
                return
            except ShapeError as e:
                errors.append(e)
        raise _union_error(obj, hint, errors, name)
    if origin is Literal:
        if obj not in typing.get_args(hint):
            raise ShapeError(f"{name} must be one of {', '.join(map(repr, typing.get_args(hint)))}, found {obj!r}")
        return
    if origin is list:
        if not isinstance(obj, list):
            raise ShapeError(f"{name} must be a JSON list, found {_kind(obj)}")
        (item,) = typing.get_args(hint) or (Any,)
        for i, v in enumerate(obj):
            validate(v, item, f"{where}[{i}]")
        return
    if origin is dict:
        if not isinstance(obj, dict):
            raise ShapeError(f"{name} must be a JSON object, found {_kind(obj)}")
        _k, val = typing.get_args(hint) or (str, Any)
        for k, v in obj.items():
            validate(v, val, _join(where, str(k)))
        return
    if hint is type(None):
        if obj is not None:
            raise ShapeError(f"{name} must be null, found {_kind(obj)}")
        return
    if hint is float:
        ok = isinstance(obj, (int, float)) and not isinstance(obj, bool)
    elif hint is int:
        ok = isinstance(obj, int) and not isinstance(obj, bool)
    else:
        ok = isinstance(obj, hint)
    if not ok:
        raise ShapeError(f"{name} must be {_name(hint)}, found {_kind(obj)}")


def _union_error(obj: Any, hint: Any, errors: list[ShapeError], name: str) -> ShapeError:
    """The error for `obj` fitting no option of the union `hint` (`errors`: each option's, in order). Apart from
    validate's loop: it runs only once a record is refused, so the loop over valid records pays nothing for it."""
    options = typing.get_args(hint)
    # An object or list of the right kind that went wrong inside: that option's complaint says where.
    inside = [e for o, e in zip(options, errors) if _container(o) is not None and isinstance(obj, _container(o))]
    if len(inside) == 1:
        return inside[0]
    return ShapeError(f"{name} must be {' or '.join(_name(o) for o in options)}, found {_kind(obj)}")


def _resolve(schema: Any) -> Any:
    # Required[...] / NotRequired[...] wrap a key's type inside a TypedDict; the type itself is what is checked.
    while typing.get_origin(schema) in (Required, NotRequired):
        schema = typing.get_args(schema)[0]
    return schema


@functools.lru_cache(maxsize=None)
def _hints(td: Any) -> dict[str, Any]:
    # Resolved in the TypedDict's own module, once per class: get_type_hints compiles every string annotation on
    # each call, which was most of an unchanged rerun's time (a run's records hold thousands of typed leaves).
    return typing.get_type_hints(td)


def _is_typeddict(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__required_keys__")


def _container(hint: Any) -> type | None:
    hint = _resolve(hint)
    if _is_typeddict(hint) or typing.get_origin(hint) is dict or hint is dict:
        return dict
    if typing.get_origin(hint) is list or hint is list:
        return list
    return None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if _container(hint) is dict:
        return "a JSON object"
    if _container(hint) is list:
        return "a JSON list"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(hint, str(hint))


def _kind(obj: Any) -> str:
    """What was found, in Python's words (str, dict, list, ...), with the value when it is short."""
    name = "null" if obj is None else type(obj).__name__
    if isinstance(obj, (dict, list)) or obj is None:
        return name
    return f"{name} {obj!r}"[:60]
