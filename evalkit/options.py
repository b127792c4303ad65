"""A stage's options, declared once: one dataclass whose fields carry their help, flag, parsing and defaults.

Everything else is derived from that dataclass, so an option cannot be in one place and missing from another:

    add_arguments(parser)      the argparse flags (help, defaults, choices, groups, deprecated spellings)
    from_args(args)            the dataclass from the parsed command line
    to_argv()                  the command line asking for these options (what a launcher passes to its ranks)
    to_manifest()              the entry a stage stores in the run directory
    from_manifest(data)        the dataclass back from that entry; an unknown or mistyped field is a one-line error
    from_api(values)           the dataclass from the Python API's keyword arguments (paths, sequences accepted)
    api_signature(), api_doc() the Python API's signature and the Options section of its docstring

A field is declared with `option(default, help=...)`. Its kind follows its type: `bool` is a switch (`--x`, or
`--no-x` when it defaults to true), `bool | None` takes on/off, `list[str]` takes a comma list (or, with
`repeat=True`, one flag per item), anything else takes one value parsed by its type (or `parse`).

This module is light (no torch, no stage): `import evalkit` and `evalkit --help` import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import sys
import textwrap
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

from evalkit.errors import EvalkitError

T = TypeVar("T", bound="StageOptions")


@dataclass(frozen=True)
class OptionSpec:
    """What the field metadata says about one option (see `option`)."""

    help: str
    flag: str | None = None  # default: --<name with dashes>; a bool defaulting to true: --no-<name>
    group: str | None = None  # argparse group title
    parse: Callable[[str], Any] | None = None  # str -> value for the command line (default: the field's type)
    choices: tuple[Any, ...] | None = None
    api_name: str | None = None  # the Python API's parameter name (default: the field name)
    api_type: str | None = None  # the Python API's annotation (default: the field's)
    metavar: str | None = None
    positional: bool = False
    repeat: bool = False  # a list given one flag per item (--plugin A --plugin B) rather than as a comma list
    aliases: tuple[str, ...] = ()  # other spellings, shown in --help (e.g. -q)
    deprecated: tuple[str, ...] = ()  # old spellings still accepted, with a warning (users' scripts)
    internal: bool = False  # not a user option: no flag, no API parameter, no manifest entry
    api: bool = True  # False: a command-line matter only (a launcher's --gpus, the terminal's --quiet)
    manifest_when_unset: bool = True  # False: left out of the manifest while None (old runs keep their entry)


def option(default: Any = MISSING, *, help: str, flag: str | None = None, group: str | None = None,
           parse: Callable[[str], Any] | None = None, choices: Sequence[Any] | None = None,
           api_name: str | None = None, api_type: str | None = None, metavar: str | None = None,
           positional: bool = False, repeat: bool = False, aliases: Sequence[str] = (),
           deprecated: Sequence[str] = (), internal: bool = False, manifest_when_unset: bool = True,
           api: bool = True) -> Any:
    """A dataclass field that is a stage option. A list default is copied per instance."""
    spec = OptionSpec(help=help, flag=flag, group=group, parse=parse, choices=tuple(choices) if choices else None,
                      api_name=api_name, api_type=api_type, metavar=metavar, positional=positional, repeat=repeat,
                      aliases=tuple(aliases), deprecated=tuple(deprecated), internal=internal,
                      manifest_when_unset=manifest_when_unset, api=api)
    meta = {"option": spec}
    if isinstance(default, list):
        items = list(default)
        return field(default_factory=lambda: list(items), metadata=meta)
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def parse_on_off(text: str) -> bool:
    """on/off (also true/false, yes/no, 1/0) for a `bool | None` option."""
    value = {"on": True, "true": True, "yes": True, "1": True,
             "off": False, "false": False, "no": False, "0": False}.get(text.strip().lower())
    if value is None:
        raise ValueError(f"expected on or off, not {text!r}")
    return value


# ------------------------------------------------------------------------------------------------ fields

@dataclass(frozen=True)
class Field:
    """One option: its dataclass field, its metadata and what its type makes of it."""

    name: str
    spec: OptionSpec
    base: type  # str, int, float or bool (a list's item type for a list)
    optional: bool  # None is a value
    is_list: bool
    default: Any  # MISSING for a required option
    annotation: str  # the field's annotation as written

    @property
    def flag(self) -> str:
        if self.spec.flag:
            return self.spec.flag
        if self.is_switch and self.default is True:
            return "--no-" + self.name.replace("_", "-")
        return "--" + self.name.replace("_", "-")

    @property
    def api_name(self) -> str:
        return self.spec.api_name or self.name

    @property
    def is_switch(self) -> bool:
        """A plain bool: present or absent on the command line."""
        return self.base is bool and not self.optional and not self.is_list


def _type_parts(tp: Any) -> tuple[type, bool, bool]:
    """(base type, optional, is a list) of an annotation such as `int | None` or `list[str]`."""
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            raise TypeError(f"option type {tp!r}: one type (and None) expected")
        tp = args[0]
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return item, optional, True
    if tp not in (str, int, float, bool):
        raise TypeError(f"option type {tp!r}: expected str, int, float, bool or list[str]")
    return tp, optional, False


def option_fields(cls: type, *, internal: bool = False) -> list[Field]:
    """The options of `cls`, in declaration order (internal ones only with `internal=True`)."""
    return [f for f in _all_fields(cls) if internal or not f.spec.internal]


def api_fields(cls: type) -> list[Field]:
    """The options the Python API takes."""
    return [f for f in option_fields(cls) if f.spec.api]


def _all_fields(cls: type) -> list[Field]:
    cached = cls.__dict__.get("_option_fields")
    if cached is None:
        hints = typing.get_type_hints(cls)
        cached = []
        for f in dataclasses.fields(cls):
            spec = f.metadata.get("option")
            if spec is None:
                raise TypeError(f"{cls.__name__}.{f.name}: declare it with evalkit.options.option(...)")
            base, optional, is_list = _type_parts(hints[f.name])
            default = f.default if f.default is not MISSING else (
                f.default_factory() if f.default_factory is not MISSING else MISSING)
            cached.append(Field(f.name, spec, base, optional, is_list, default, str(f.type)))
        type.__setattr__(cls, "_option_fields", cached)
    return cached


# ------------------------------------------------------------------------------------------------ argparse

class _Deprecated(argparse.Action):
    """An old spelling of a flag: does what the new one does and says which one to use."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"evalkit: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_deprecated_alias(parser: argparse.ArgumentParser | Any, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """Accept `old` as a hidden spelling of `new` (same `dest`), saying on stderr which one to use."""
    parser.add_argument(old, dest=dest, action=_Deprecated, new=new, help=argparse.SUPPRESS, **kwargs)


def _converter(f: Field) -> Callable[[str], Any]:
    convert = f.spec.parse or (parse_on_off if f.base is bool else f.base)

    def parse(text: str) -> Any:
        return convert(text)

    # argparse names the type in its error ("invalid int value: 'x'")
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, only: Sequence[str] | None = None,
                  flag_prefix: str = "") -> None:
    """Add `cls`'s options (or those named in `only`) to `parser`, each in its group, created once per parser.
    `flag_prefix` ("report") spells each flag `--report-<flag>` with the same dest and no other spelling: how
    `evalkit run` takes a later stage's options without clashing with generate's or score's flags."""
    groups: dict[str, Any] = {}
    for f in option_fields(cls):
        if only is not None and f.name not in only or (flag_prefix and f.spec.positional):
            continue
        target = parser
        if f.spec.group:
            if f.spec.group not in groups:
                groups[f.spec.group] = parser.add_argument_group(f.spec.group)
            target = groups[f.spec.group]
        help_text = f.spec.help
        shown = not (f.default is None or f.default is MISSING or isinstance(f.default, bool) or f.default == [])
        if shown and "default" not in help_text:
            help_text += f" (default: {_text(f.default)})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if f.spec.positional:
            target.add_argument(f.name, metavar=f.spec.metavar or f.api_name, help=help_text)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text}
        if f.is_switch:
            kwargs.update(action="store_false" if f.default is True else "store_true", default=f.default)
        else:
            kwargs.update(default=None if f.is_list else f.default, metavar=f.spec.metavar)
            kwargs["type"] = str if f.is_list else _converter(f)
            if f.spec.choices:
                kwargs["choices"] = f.spec.choices
            if f.spec.repeat:
                kwargs["action"] = "append"
        if f.default is MISSING:
            kwargs["required"] = True
        if flag_prefix:
            target.add_argument(f"--{flag_prefix}-{f.flag[2:]}", **kwargs)
            continue
        target.add_argument(f.flag, *f.spec.aliases, **kwargs)
        for old in f.spec.deprecated:
            extra: dict[str, Any] = ({"nargs": 0, "const": f.default is not True} if f.is_switch
                                     else {"type": kwargs["type"], "choices": kwargs.get("choices")})
            add_deprecated_alias(target, old, f.flag, f.name, **extra)


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def from_args(cls: type[T], args: argparse.Namespace, **internal: Any) -> T:
    """`cls` from parsed arguments (an option the parser did not define keeps its default)."""
    values: dict[str, Any] = {}
    for f in option_fields(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.is_list:
            items = value if f.spec.repeat else _split(value) if value is not None else None
            value = list(items) if items else (None if f.optional else [])
        values[f.name] = value
    return cls(**values, **internal)


# ------------------------------------------------------------------------------------------------ argv

def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)  # repr: a float reads back exactly


def to_argv(opts: Any) -> list[str]:
    """The command-line arguments asking for `opts` (after the stage's command name); defaults are left out.
    `--flag=value` keeps a value that starts with '-' (a negative seed) a value."""
    positional: list[str] = []
    flags: list[str] = []
    for f in option_fields(type(opts)):
        value = getattr(opts, f.name)
        if f.spec.positional:
            positional.append(_text(value))
        elif value == f.default or (f.is_list and not value and f.default in (None, [])):
            continue
        elif f.is_switch:
            flags.append(f.flag)
        elif f.base is bool and not f.is_list:
            flags.append(f"{f.flag}={'on' if value else 'off'}")
        elif f.is_list and f.spec.repeat:
            flags += [f"{f.flag}={item}" for item in value]
        elif f.is_list:
            flags.append(f"{f.flag}={','.join(value)}")
        else:
            flags.append(f"{f.flag}={_text(value)}")
    return positional + flags


# ------------------------------------------------------------------------------------------------ values

def _type_name(f: Field) -> str:
    base = f"list of {f.base.__name__}" if f.is_list else f.base.__name__
    return f"{base} or null" if f.optional else base


def _check(f: Field, value: Any, label: str) -> Any:
    """`value` if it has `f`'s type (an int is also a float) and is one of its choices, else a one-line error
    starting with `label` (where, and which option)."""
    if value is None and f.optional:
        return None
    if f.is_list:
        ok = isinstance(value, list) and all(isinstance(x, f.base) and not isinstance(x, bool) for x in value)
    elif f.base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif f.base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, f.base)
    if not ok:
        raise EvalkitError(f"{label} = {value!r}: expected {_type_name(f)}")
    if f.spec.choices and value not in f.spec.choices:
        raise EvalkitError(f"{label} = {value!r}: expected one of {', '.join(map(str, f.spec.choices))}")
    return value


def to_manifest(opts: Any) -> dict[str, Any]:
    """The options as a run directory stores them (JSON values); an unset option marked
    `manifest_when_unset=False` is left out, so runs made before it existed read back the same."""
    out: dict[str, Any] = {}
    for f in option_fields(type(opts)):
        value = getattr(opts, f.name)
        if value is None and not f.spec.manifest_when_unset:
            continue
        out[f.name] = list(value) if isinstance(value, list) else value
    return out


def from_manifest(cls: type[T], data: Any, where: str) -> T:
    """`cls` from a stored entry. A field this evalkit does not know (a renamed option) or of the wrong type is a
    one-line error naming `where` and every such field: a silently dropped option would change what runs.
    Names in `cls.RETIRED_OPTIONS` (options that no longer exist and never changed the output) are ignored."""
    if not isinstance(data, Mapping):
        raise EvalkitError(f"{where}: expected an object of options, got {type(data).__name__}")
    known = {f.name: f for f in option_fields(cls)}
    retired = set(getattr(cls, "RETIRED_OPTIONS", ()))
    unknown = sorted(k for k in data if k not in known and k not in retired)
    if unknown:
        raise EvalkitError(f"{where}: unknown option(s) {', '.join(unknown)} (written by another evalkit version?)")
    values = {}
    for name, f in known.items():
        if name in data:
            values[name] = _check(f, data[name], f"{where}: {name}")
        elif f.default is MISSING:
            raise EvalkitError(f"{where}: required option {name} is missing")
    return cls(**values)


def from_api(cls: type[T], values: Mapping[str, Any], where: str = "", **internal: Any) -> T:
    """`cls` from the Python API's arguments (keyed by API name): a path may be os.PathLike, a list option a
    comma string or any sequence, a string option given as a sequence is joined with commas. `where` names the
    function in errors ("evalkit.generate")."""
    out: dict[str, Any] = {}
    for f in api_fields(cls):
        if f.api_name not in values:
            continue
        value = values[f.api_name]
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if f.is_list and value is None and not f.optional:
            value = []  # `gpus=None` reads as no GPUs, as the API's earlier signatures allowed
        elif f.is_list and value is not None:
            items = _split(value) if isinstance(value, str) else [os.fspath(x) if isinstance(x, os.PathLike) else x
                                                                   for x in value]
            value = items or (None if f.optional else [])
        elif f.base is str and isinstance(value, (list, tuple)):
            value = ",".join(value)
        out[f.name] = _check(f, value, f"{where}: {f.api_name}" if where else f.api_name)
    return cls(**out, **internal)


# ------------------------------------------------------------------------------------------------ Python API

def api_signature(cls: type, *, positional: Sequence[str] = (), extra: Sequence[inspect.Parameter] = (),
                  return_annotation: Any = inspect.Signature.empty,
                  defaults: Mapping[str, Any] | None = None) -> inspect.Signature:
    """The Python API's signature: `positional` (API names) first, the other options keyword-only, then `extra`.
    `defaults` overrides a default where the API's differs."""
    fields_ = {f.api_name: f for f in api_fields(cls)}
    params = []
    for name in list(positional) + [n for n in fields_ if n not in positional]:
        f = fields_[name]
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if name in positional else inspect.Parameter.KEYWORD_ONLY
        default = (defaults or {}).get(name, f.default)
        params.append(inspect.Parameter(name, kind, default=inspect.Parameter.empty if default is MISSING else
                                        (tuple(default) if isinstance(default, list) else default),
                                        annotation=f.spec.api_type or f.annotation))
    return inspect.Signature(params + list(extra), return_annotation=return_annotation)


def api_doc(cls: type, title: str = "Options") -> str:
    """An `Options:` section for a docstring: each API parameter with its flag, default and help."""
    lines = [f"{title} (each is the command line's flag of the same name):"]
    for f in api_fields(cls):
        shown = tuple(f.default) if isinstance(f.default, list) else f.default  # as the API's signature shows it
        default = "" if f.default is MISSING or f.spec.positional else f", default {shown!r}"
        head = f"{f.api_name} ({f.api_name if f.spec.positional else f.flag}{default}): "
        lines += textwrap.wrap(head + " ".join(f.spec.help.split()), width=112, initial_indent="    ",
                               subsequent_indent="        ")
    return "\n".join(lines) + "\n"


class StageOptions:
    """Base of a stage's options dataclass: the derivations of this module as methods."""

    # Options that no longer exist and never changed a run's output: ignored when read back from a manifest.
    RETIRED_OPTIONS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | Any, only: Sequence[str] | None = None,
                      flag_prefix: str = "") -> None:
        add_arguments(parser, cls, only, flag_prefix)

    @classmethod
    def from_args(cls: type[T], args: argparse.Namespace, **internal: Any) -> T:
        return from_args(cls, args, **internal)

    @classmethod
    def from_manifest(cls: type[T], data: Any, where: str) -> T:
        return from_manifest(cls, data, where)

    @classmethod
    def from_api(cls: type[T], values: Mapping[str, Any], where: str = "", **internal: Any) -> T:
        return from_api(cls, values, where, **internal)

    def to_argv(self) -> list[str]:
        return to_argv(self)

    def to_manifest(self) -> dict[str, Any]:
        return to_manifest(self)
