"""One config convention for every method: frozen dataclasses with ``from_dict`` / ``to_dict`` / ``replace``,
checked field types, unknown keys rejected with the valid names listed; and a name -> class registry.

A method's settings are one :class:`Config` subclass whose field defaults are *the* defaults (stated once)::

    @dataclass(frozen=True)
    class PruneConfig(Config):
        sparsity: float = 0.5
        pruner: str = "wanda"

        def validate(self) -> None:
            check_range("sparsity", self.sparsity, 0.0, 1.0, hi_open=True)

    cfg = PruneConfig.from_dict({"sparsity": 0.7})      # unknown key -> ConfigError naming the valid ones
    cfg.replace(pruner="sparsegpt").to_dict()           # JSON-able

``from_dict`` also takes strings for numeric and boolean fields (the CLI's ``--set KEY=VALUE``) and lists for
tuple fields; a value of the wrong type is an error naming the field, the value and the expected type.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from htsr.errors import ConfigError

__all__ = ["Config", "Registry", "check_choice", "check_keys", "check_range", "check_positive_int"]

C = TypeVar("C", bound="Config")
T = TypeVar("T")


def check_keys(given: Iterable[str], valid: Iterable[str], what: str) -> None:
    """Raise :class:`ConfigError` when ``given`` has a key outside ``valid``, listing the valid ones."""
    valid = list(valid)
    bad = sorted(set(given) - set(valid))
    if bad:
        raise ConfigError(f"unknown {what} {', '.join(map(repr, bad))}; valid: {', '.join(sorted(valid)) or 'none'}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; expected one of {', '.join(map(str, choices))}")


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number within the (half-)open interval."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        interval = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{name} must be a finite number in {interval}, got {value!r}")


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """``value`` as field type ``tp`` (int, float, bool, str, tuple[...], X | None, Literal, Any), or an error."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{name}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        check_choice(name, value, typing.get_args(tp))
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # `--set widths=4`: a list of one
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{name}: expected {len(args)} values, got {len(value)}")
        item = args[0] if args else Any
        items = [_coerce(name, v, args[i] if args and args[-1] is not Ellipsis else item)
                 for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    if isinstance(tp, type) and issubclass(tp, Config) and isinstance(value, Mapping):
        return tp.from_dict(value)
    raise ConfigError(f"{name}: expected {_type_name(tp)}, got {value!r}")


def _jsonable(v: Any) -> Any:
    if isinstance(v, Config):
        return v.to_dict()
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every method's settings: a frozen dataclass whose fields are the options and whose defaults are
    the method's defaults. Subclasses override :meth:`validate` for checks across fields."""

    #: what the config is called in error messages (defaults to the class name)
    label: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            v = getattr(self, f.name)
            c = _coerce(f.name, v, hints.get(f.name, Any))
            if c is not v:
                object.__setattr__(self, f.name, c)
        self.validate()

    def validate(self) -> None:
        """Checks across fields; raise :class:`~htsr.errors.ConfigError` with what was expected."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None = None, **overrides: Any) -> C:
        """A config from a mapping (plus keyword overrides); unknown keys are errors listing the valid ones."""
        merged = {**dict(data or {}), **overrides}
        check_keys(merged, cls.field_names(), f"option(s) for {cls.label or cls.__name__}")
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (tuples become lists)."""
        return {f: _jsonable(getattr(self, f)) for f in self.field_names()}

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied and validated; unknown keys are errors."""
        check_keys(changes, self.field_names(), f"option(s) for {self.label or type(self).__name__}")
        return dataclasses.replace(self, **changes)

    def diff(self) -> dict[str, Any]:
        """The fields that differ from the class defaults."""
        default = {f.name: f.default for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        return {k: v for k, v in self.to_dict().items() if k not in default or _jsonable(default[k]) != v}


class Registry(Generic[T]):
    """Names -> objects (config classes, method classes, functions), one per kind of thing, with clear errors.

    ``@REG.register("name")`` on a class or function; ``REG.get(name)`` raises :class:`ConfigError` listing
    the registered names for an unknown one.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ConfigError(f"{self.what} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.what} {name!r}; expected one of {', '.join(self._items)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def items(self):
        return self._items.items()
