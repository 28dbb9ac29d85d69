"""How a config field is offered on the command line, declared on the field itself.

A section field that is also a command-line option is written `name: T = option(default, ...)`: its type,
default and docstring (the option's help text) stay the field's own, and `scaling.config.cli_options`
generates the Click option from them. Nothing here imports Click, so the sections stay plain dataclasses.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import textwrap
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

OPTION_KEY = "scaling.option"
"""The key under which `option` stores its `OptionSpec` in a field's metadata."""


@dataclass(frozen=True, kw_only=True)
class OptionSpec:
    """What the field's type, default and docstring do not say about its command-line option."""

    flag: str | None = None
    """Long flag, e.g. `--model`; None: `--` and the field name with dashes."""
    param: str | None = None
    """Key of the parsed value in the command's parameters; None: the field name."""
    choices: tuple[str, ...] | None = None
    """The only values accepted."""
    min: float | None = None
    """Smallest value accepted (numbers)."""
    max: float | None = None
    """Largest value accepted (numbers)."""
    min_open: bool = False
    """Exclude `min` itself."""
    max_open: bool = False
    """Exclude `max` itself."""
    metavar: str | None = None
    """Placeholder shown in the help, e.g. SPEC or KEY=VALUE."""
    path: str | None = None
    """'file' or 'dir' when the value names one (checked for its kind, not its existence)."""


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field that is also a command-line option (see `OptionSpec` for `spec`)."""
    metadata = {OPTION_KEY: OptionSpec(**spec)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def option_fields(cls: type) -> list[Field[Any]]:
    """The fields of `cls` declared with `option`, in declaration order."""
    return [f for f in fields(cls) if OPTION_KEY in f.metadata]


def spec_of(f: Field[Any]) -> OptionSpec:
    spec = f.metadata[OPTION_KEY]
    assert isinstance(spec, OptionSpec)
    return spec


def flag_of(f: Field[Any]) -> str:
    return spec_of(f).flag or "--" + f.name.replace("_", "-")


def param_of(f: Field[Any]) -> str:
    return spec_of(f).param or f.name


def default_of(f: Field[Any]) -> Any:
    """The field's default (a fresh one from its factory); MISSING when the field is required."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal right after the field), whitespace collapsed.

    Docstrings are not kept at run time, so they are read from the class's source, once per class.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            out[node.target.id] = " ".join(after.value.value.split())
    return out
