"""Method options: declared once, in the signature of the method's ``__init__``, and validated here.

A method's options are the keyword parameters of its ``__init__`` after ``backbone`` and
``image_size``; their annotations (``bool``, ``int``, ``float``, ``str``, ``X | None``,
``Literal[...]``) and defaults are the declaration. :func:`option_specs` reads them, so the CLI, the
notebooks and the summary list the same options, and :func:`validate_options` turns what a user typed
(``--option whiten=no``) into values of the declared types or stops with one :class:`OptionError`
that names the option and its valid values. The shared value checks (:func:`parse_bool`,
:func:`positive_int`, :func:`fraction`, :func:`choice`) are the ones the method modules use.
"""
from __future__ import annotations

import ast
import inspect
import math
import numbers
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping

__all__ = ["BOOL_WORDS", "OptionError", "OptionSpec", "choice", "fraction", "option_specs", "parse_bool",
           "positive_int", "validate_options"]

#: The spellings of a boolean that are accepted; anything else is an error, never "true".
BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class OptionError(ValueError, TypeError):
    """A method option with an unknown name or a value of the wrong kind (the message lists the valid
    ones). A ``TypeError`` too, as Python raises for an unexpected keyword argument."""


def parse_bool(name: str, value) -> bool:
    """``value`` as a bool: a bool, 0 / 1, or one of ``true false yes no 1 0`` (any case)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()]
    raise OptionError(f"option {name!r} must be true or false (one of {', '.join(BOOL_WORDS)}), got {value!r}")


def positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum`` (integral floats and digit strings accepted, bools not)."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise OptionError(f"option {name!r} must be an integer >= {minimum}, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise OptionError(f"option {name!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def fraction(name: str, value, low_open: bool = False, high: float = 1.0) -> float:
    """``value`` as a float in ``[0, high]`` (``(0, high]`` with ``low_open``)."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (number > 0 if low_open else number >= 0) or not number <= high:
        interval = f"{'(' if low_open else '['}0, {high}]"
        raise OptionError(f"option {name!r} must be a number in {interval}, got {value!r}")
    return number


def choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in tuple(choices):
        raise OptionError(f"option {name!r} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


@dataclass(frozen=True)
class OptionSpec:
    """One declared option: its name, kind (``bool``, ``int``, ``float``, ``str`` or ``any``), default,
    whether ``None`` is allowed and, for ``Literal`` annotations, the allowed values."""

    name: str
    kind: str
    default: Any
    optional: bool
    choices: tuple | None = None

    def describe(self) -> str:
        kind = "|".join(map(str, self.choices)) if self.choices else self.kind
        return f"{self.name}={kind}{' or none' if self.optional else ''} (default {self.default!r})"


_KINDS = {bool: "bool", int: "int", float: "float", str: "str"}


def _spec(name: str, annotation, default) -> OptionSpec:
    optional = default is None
    args = typing.get_args(annotation)
    if args and type(None) in args:  # X | None, Optional[X]
        optional = True
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else Any
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        return OptionSpec(name, "str", default, optional, tuple(choices))
    kind = _KINDS.get(annotation)
    if kind is None and annotation is inspect.Parameter.empty and default is not None:
        kind = _KINDS.get(type(default))
    return OptionSpec(name, kind or "any", default, optional)


def option_specs(method_class) -> dict[str, OptionSpec]:
    """The options a method class declares (keyword parameters of ``__init__`` after ``backbone``
    and ``image_size``), in signature order."""
    init = method_class.__init__
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # an annotation that cannot be resolved: fall back to the defaults' types
        hints = {}
    specs = {}
    for name, param in list(inspect.signature(init).parameters.items())[3:]:
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        default = None if param.default is inspect.Parameter.empty else param.default
        specs[name] = _spec(name, hints.get(name, inspect.Parameter.empty), default)
    return specs


def _accepts_extra(method_class) -> bool:
    """Whether ``__init__`` takes further keyword options (``**kwargs``) that it checks itself."""
    params = list(inspect.signature(method_class.__init__).parameters.values())
    return any(p.kind is p.VAR_KEYWORD for p in params) and getattr(method_class, "extra_options", False)


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(spec: OptionSpec, value):
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        if spec.optional:
            return None
        raise OptionError(f"option {spec.name!r} cannot be none; expected {spec.describe()}")
    if spec.choices is not None:
        return choice(spec.name, value.strip() if isinstance(value, str) else value, spec.choices)
    if spec.kind == "bool":
        return parse_bool(spec.name, value)
    if spec.kind == "int":
        if isinstance(value, str):
            value = _literal(value.strip())
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"option {spec.name!r} must be an integer, got {value!r}")
        return value
    if spec.kind == "float":
        if isinstance(value, bool):
            raise OptionError(f"option {spec.name!r} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise OptionError(f"option {spec.name!r} must be a number, got {value!r}") from None
    if spec.kind == "str":
        if not isinstance(value, str):
            raise OptionError(f"option {spec.name!r} must be text, got {value!r}")
        return value.strip()
    return _literal(value) if isinstance(value, str) else value


def validate_options(method_class, options: Mapping[str, Any]) -> dict:
    """``options`` converted to the declared kinds (text from the command line included).

    Raises :class:`OptionError` for an unknown name (listing the method's options) or a value of the
    wrong kind. Methods that set ``extra_options = True`` take further keyword options (e.g. an
    activation's initial values) that their ``__init__`` checks; those pass through, text read as a
    Python literal.
    """
    specs = option_specs(method_class)
    out = {}
    for name, value in options.items():
        if name in specs:
            out[name] = _coerce(specs[name], value)
        elif _accepts_extra(method_class):
            out[name] = _literal(value) if isinstance(value, str) else value
        else:
            valid = "; ".join(spec.describe() for spec in specs.values()) or "none"
            raise OptionError(f"unknown options [{name!r}] for method {getattr(method_class, 'name', method_class)!r}; "
                              f"its options: {valid}")
    return out
