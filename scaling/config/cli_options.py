"""Click options generated from the config sections, and the sections rebuilt from parsed options.

Every command that takes run options (`train`, `distill`, `launch -- train`, `config`, `estimate`) gets them
from here, so each option's type, default, choices and help exist once: on its section field.

Type mapping: bool -> `--x/--no-x` (a plain switch when the flag is already `--no-x`); `list[str]` -> a
repeatable option (with `choices`: one comma-separated value, `a,b`); `list[int]` -> one comma-separated
value (`0,2,4`); `tuple[float, float]` -> `A,B`; `T | None` -> T with no default shown; numbers with bounds
-> ranges; `choices` -> a choice.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from scaling.config.fields import default_of, field_docs, flag_of, option_fields, param_of, spec_of

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXPLICIT_SOURCES = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
"""Where a value must come from to count as given by the user: typed, or set in the environment."""


def explicit_options(ctx: click.Context) -> frozenset[str]:
    """Parameters the user gave (see EXPLICIT_SOURCES); the others are defaults that yield to the JSON."""
    return frozenset(name for name in ctx.params if ctx.get_parameter_source(name) in EXPLICIT_SOURCES)


class FieldOption(click.Option):
    """A Click option generated from a section field; knows the field, so tests can compare defaults."""

    def __init__(self, *args: Any, section: type, field_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section
        self.field_name = field_name


class FloatPair(click.ParamType):
    name = "A,B"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[float, float]:
        if isinstance(value, tuple | list) and len(value) == 2:
            return (float(value[0]), float(value[1]))
        try:
            a, b = (float(x) for x in str(value).split(","))
        except ValueError:
            self.fail(f"expected two comma-separated floats, got {value!r}", param, ctx)
        return (a, b)


class IntList(click.ParamType):
    name = "I,J,..."

    def convert(self, value: Any, param: Any, ctx: Any) -> list[int] | None:
        if isinstance(value, list):
            return value
        try:
            return [int(x) for x in str(value).split(",") if x.strip()] or None
        except ValueError:
            self.fail(f"expected comma-separated integers, e.g. 0,2,4; got {value!r}", param, ctx)


class NameList(click.ParamType):
    """Comma-separated names out of a fixed set (`--report-to wandb,csv`); `none` or '' for none."""

    name = "NAME,..."

    def __init__(self, choices: tuple[str, ...]) -> None:
        self.choices = choices

    def convert(self, value: Any, param: Any, ctx: Any) -> list[str]:
        if isinstance(value, list | tuple):
            return list(value)
        names = [x.strip() for x in str(value).split(",") if x.strip() and x.strip() != "none"]
        unknown = [x for x in names if x not in self.choices]
        if unknown:
            self.fail(f"{', '.join(unknown)}: choose from {', '.join(self.choices)}", param, ctx)
        return names


def _strip_optional(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _number_type(base: type, f: Field[Any]) -> Any:
    spec = spec_of(f)
    if spec.min is None and spec.max is None:
        return base
    if base is int:
        low = None if spec.min is None else int(spec.min)
        high = None if spec.max is None else int(spec.max)
        return click.IntRange(min=low, max=high, min_open=spec.min_open, max_open=spec.max_open)
    return click.FloatRange(min=spec.min, max=spec.max, min_open=spec.min_open, max_open=spec.max_open)


def field_option(section: type, f: Field[Any], *, required: bool = False) -> FieldOption:
    """The Click option of one section field."""
    spec = spec_of(f)
    base = _strip_optional(typing.get_type_hints(section)[f.name])
    origin = typing.get_origin(base)
    default = default_of(f)
    flag = flag_of(f)
    kwargs: dict[str, Any] = {
        "help": field_docs(section).get(f.name),
        "default": None if default is MISSING else default,
        "required": required,
        "show_default": True,
        "metavar": spec.metavar,
    }
    decl = flag
    if spec.choices and origin is list:
        kwargs["type"] = NameList(spec.choices)
    elif spec.choices:
        kwargs["type"] = click.Choice(spec.choices)
    elif base is bool and flag.startswith("--no-"):
        kwargs["is_flag"] = True  # already a negative (--no-ssh): a plain switch, not --no-no-ssh
    elif base is bool:
        decl = f"{flag}/--no-{flag[2:]}"
    elif origin is list and typing.get_args(base) == (str,):
        kwargs["multiple"] = True
        kwargs["default"] = tuple(kwargs["default"] or ())
    elif origin is list and typing.get_args(base) == (int,):
        kwargs["type"] = IntList()
    elif origin is tuple:
        kwargs["type"] = FloatPair()
    elif base in (int, float):
        kwargs["type"] = _number_type(base, f)
    elif spec.path is not None:
        kwargs["type"] = click.Path(
            dir_okay=spec.path == "dir",
            file_okay=spec.path == "file",
            path_type=Path if base is Path else None,
        )
    return FieldOption([decl, param_of(f)], section=section, field_name=f.name, **kwargs)


def section_options(
    section: type,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    required: Iterable[str] = (),
) -> list[FieldOption]:
    """The options of `section`'s option fields (or of the fields named in `only`), in declaration order."""
    wanted = None if only is None else set(only)
    skip, must = set(exclude), set(required)
    chosen = [
        f for f in option_fields(section) if (wanted is None or f.name in wanted) and f.name not in skip
    ]
    if wanted is not None:
        unknown = wanted - {f.name for f in chosen}
        assert not unknown, f"{section.__name__} has no option field(s) {sorted(unknown)}"
    return [field_option(section, f, required=f.name in must) for f in chosen]


def with_options(*groups: Iterable[click.Option]) -> Callable[[F], F]:
    """A decorator adding the options of `groups` to a command, in the order given."""
    options = [opt for group in groups for opt in group]

    def decorate(func: F) -> F:
        # What click.option does with one option: Click reverses the collected list when it builds the
        # command, so appending these in reverse keeps them in the given order above later decorators.
        if isinstance(func, click.Command):
            func.params.extend(options)
        else:
            func.__dict__.setdefault("__click_params__", []).extend(reversed(options))
        return func

    return decorate


def from_params(section: type[T], params: dict[str, Any], **fixed: Any) -> T:
    """Build `section` from parsed options: each option field from its parameter when present (else its
    default), then `fixed` (fields that are not options, or values the caller derived)."""
    hints = typing.get_type_hints(section)
    values: dict[str, Any] = {}
    for f in option_fields(section):
        name = param_of(f)
        if name not in params:
            continue
        value = params[name]
        if isinstance(value, tuple) and typing.get_origin(_strip_optional(hints[f.name])) is list:
            value = list(value)
        values[f.name] = value
    values.update(fixed)
    return section(**values)
