"""A setting declared once: the field of a frozen config group, with :func:`option` metadata.

From one declaration come its type and default (the field's annotation and default), its range
or choices, its command-line flag and ``SSEGATE_*`` variable, and its help text. The config
groups check their values with :func:`validate`; the command line makes its options from
:func:`option_specs`; :meth:`Settings.from_options` maps option names to fields. So a setting
can't be documented in one place, parsed in another and checked in a third.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Option", "OptionSpec", "option", "option_specs", "validate"]

Source = Literal["flag", "env", "code"]


@dataclass(frozen=True, slots=True)
class Option:
    """What a config field's declaration says beyond its type and default.

    ``flag``: the command-line flag (default ``--`` and the field name with dashes); its
    variable is ``SSEGATE_`` and the flag's name in capitals. ``source``: ``flag`` (a flag and
    a variable), ``env`` (a variable only: secrets that must not show in a process list) or
    ``code`` (set by the program, never by the user). ``minimum``/``maximum`` bound numbers;
    ``path`` says the value names an existing file; ``default_help`` describes a computed
    default.
    """

    help: str
    flag: str | None = None
    source: Source = "flag"
    minimum: float | None = None
    maximum: float | None = None
    path: bool = False
    default_help: str | None = None


def option(default: Any, help: str, *, secret: bool = False, **details: Any) -> Any:
    """A config field with ``default`` and an :class:`Option` (see there for ``details``).

    A ``secret`` is left out of the group's ``repr`` and of error messages.
    """
    return field(default=default, repr=not secret, metadata={"option": Option(help, **details)})


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One declared setting, resolved: where it lives and how it is typed and named.

    ``name`` is the flag without dashes, with underscores (``heartbeat``,
    ``upstream_connect_timeout``): the key of :meth:`Settings.from_options`.
    """

    name: str
    group: str
    field: str
    flag: str
    env: str
    kind: type
    optional: bool
    multiple: bool
    choices: tuple[str, ...] | None
    default: Any
    secret: bool
    option: Option


def _resolve(hint: Any) -> tuple[type, bool, bool, tuple[str, ...] | None]:
    """``(kind, optional, multiple, choices)`` of a field's type hint."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        (hint,) = args
    if typing.get_origin(hint) is Literal:
        return str, optional, False, tuple(str(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], optional, True, None
    if hint not in (str, int, float, bool):
        raise TypeError(f"a setting cannot be of type {hint!r}")
    return hint, optional, False, None


def _group_specs(group: str, cls: type) -> list[OptionSpec]:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        declared = f.metadata.get("option")
        if not isinstance(declared, Option):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with option()")
        flag = declared.flag or "--" + f.name.replace("_", "-")
        name = flag.removeprefix("--").replace("-", "_")
        kind, optional, multiple, choices = _resolve(hints[f.name])
        env = "SSEGATE_" + name.upper()
        specs.append(
            OptionSpec(
                name=name,
                group=group,
                field=f.name,
                flag=flag,
                env=env,
                kind=kind,
                optional=optional,
                multiple=multiple,
                choices=choices,
                default=f.default,
                secret=not f.repr,
                option=declared,
            )
        )
    return specs


def option_specs(settings_cls: type) -> list[OptionSpec]:
    """Every setting of ``settings_cls`` (a dataclass of config groups), in declaration order."""
    hints = typing.get_type_hints(settings_cls)
    specs: list[OptionSpec] = []
    for f in dataclasses.fields(settings_cls):
        specs += _group_specs(f.name, hints[f.name])
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise TypeError(f"two settings share an option name: {sorted(names)}")
    return specs


def _problem(spec: OptionSpec, value: Any) -> str | None:
    """Why ``value`` is not a valid value of ``spec``, or ``None``."""
    if value is None:
        return None if spec.optional else "must be set"
    if spec.multiple:
        if not isinstance(value, tuple) or not all(isinstance(v, spec.kind) for v in value):
            return f"must be a tuple of {spec.kind.__name__}"
        return None
    if spec.kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if not math.isfinite(value):
            return "must be a finite number"
    elif spec.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        return "must be a whole number"
    elif not isinstance(value, spec.kind):
        return f"must be a {spec.kind.__name__}"
    if spec.choices is not None and value not in spec.choices:
        return "must be one of " + ", ".join(spec.choices)
    low, high = spec.option.minimum, spec.option.maximum
    if low is not None and value < low:
        return f"must be at least {low:g}"
    if high is not None and value > high:
        return f"must be at most {high:g}"
    return None


def validate(group: object) -> None:
    """Check every field of a config group against its declaration; ``ValueError`` names the
    setting by its flag (or variable) and says what is wrong."""
    for spec in _group_specs("", type(group)):
        value = getattr(group, spec.field)
        problem = _problem(spec, value)
        if problem is not None:
            where = {"flag": spec.flag, "env": spec.env, "code": spec.field}[spec.option.source]
            shown = "a secret" if spec.secret else repr(value)
            raise ValueError(f"{where} {problem} (got {shown})")
