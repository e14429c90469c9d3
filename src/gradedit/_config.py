"""The checks every gradedit config dataclass shares: :class:`ConfigFields` (``from_dict`` refusing
unknown keys, ``to_dict``, ``replace``, field types and finiteness) and :func:`value_fits`.
Used by ``TrainConfig`` and ``DecomposeConfig``."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union

from .errors import ConfigError

__all__ = ["ConfigFields", "value_fits"]

C = TypeVar("C", bound="ConfigFields")


def _type_name(tp: Any) -> str:
    """``a number``, ``an int or None``, ``one of ('a', 'b')``, ``a list of str`` ... for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return f"one of {args}"
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args]
        return ", ".join(names[:-1]) + " or " + names[-1]
    if origin is list:
        return f"a list of {getattr(args[0], '__name__', args[0])}"
    if origin is dict:
        return f"a dict with {getattr(args[0], '__name__', args[0])} keys"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


_NAMES: dict[Any, str] = {type(None): "None", Any: "any value", int: "an int", float: "a number", str: "a string",
                          bool: "true or false"}


def value_fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the annotated type ``tp`` (bools are not numbers; an int is a float;
    a tuple passes for a list)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(value_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(value_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(value_fits(k, args[0]) for k in value)
    return isinstance(value, tp)


class ConfigFields:
    """Mixin of gradedit's config dataclasses: ``from_dict`` (unknown keys refused), ``to_dict``,
    ``replace``, and :meth:`check_fields` (every field of its annotated type, every float finite),
    all raising :meth:`config_error` (a :class:`~gradedit.errors.ConfigError`)."""

    #: how ``from_dict`` names unknown keys: ``unknown <KEYS_NAME> [...]; known: [...]``
    KEYS_NAME: ClassVar[str] = "option(s)"

    @classmethod
    def config_error(cls, message: str) -> ConfigError:
        """The error a bad value raises (subclasses may prefix the message or use a subclass)."""
        return ConfigError(message)

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """Build from a mapping; unknown keys raise :meth:`config_error` with the list of known ones."""
        if not isinstance(values, Mapping):
            raise cls.config_error(f"{cls.__name__} needs a mapping of its fields, got {type(values).__name__}; "
                                   "give a dict such as {'seed': 0}")
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(map(str, set(values) - set(known)))
        if unknown:
            raise cls.config_error(f"unknown {cls.KEYS_NAME} {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated like :meth:`from_dict`; unknown keys raise)."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def check_fields(self) -> None:
        """Every field holds a value of its annotated type and every float is finite, else
        :meth:`config_error` naming the field, the value and the type wanted (with the default as an example)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value, tp = getattr(self, f.name), hints[f.name]
            if not value_fits(value, tp):
                example = ("" if f.default is dataclasses.MISSING or f.default is None
                           else f", e.g. {f.default!r} (the default)")
                raise self.config_error(f"{f.name} must be {_type_name(tp)}, got {value!r} "
                                        f"({type(value).__name__}){example}")
            if isinstance(value, float) and not math.isfinite(value):
                raise self.config_error(f"{f.name} must be finite, got {value!r}")
