"""A faster ``__init__`` for the frozen, slotted dataclasses made on every message.

Rules of this file:

1. Why: a frozen dataclass's generated ``__init__`` sets each field with
   ``object.__setattr__``, a generic attribute lookup per field. A call parses
   and builds some ninety of these values (URIs, name-addrs, Vias, timer
   actions, transaction keys); with eight fields a ``SipUri`` cost about as
   much to build as to match its regular expression. Here each field is set
   through its slot's own descriptor, bound once per class: the same slots
   end up holding the same values, in some 40 % fewer instructions.
2. Only what the generated ``__init__`` would do: positional-or-keyword
   parameters in field order with the fields' own default objects (a field
   with a default factory calls it when its argument is left out), fields
   with ``init=False`` set from their default or factory. A class with a
   ``__post_init__`` or keyword-only fields is refused at import, not half
   handled.
3. Everything else stays the dataclass's: ``__setattr__`` still raises,
   ``__eq__``, ``__hash__``, ``__repr__``, ``replace`` and pickling are
   untouched (``replace`` calls the new ``__init__`` with keywords).
4. It is called after the class statement (``slot_init(Cls)``), not used as a
   decorator, in the modules setup.py compiles: mypyc builds a class under a
   decorator it does not know as a plain Python class (no fixed layout, every
   attribute looked up). A compiled frozen dataclass still gets its
   ``__init__`` from ``dataclasses`` (mypyc calls the type's ``tp_init``), the
   same ``object.__setattr__`` per field, so it is given this one too: its
   fields are native attributes whose descriptors set them directly. mypyc's
   own ``__setstate__`` sets attributes through the frozen ``__setattr__``
   and would refuse to unpickle; such a class gets one that sets them as the
   ``__init__`` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["slot_init"]

_T = TypeVar("_T", bound=type)


class _Unset:
    def __repr__(self) -> str:
        return "<factory>"


_UNSET = _Unset()


def slot_init(cls: _T) -> _T:
    """Give a frozen ``slots=True`` dataclass an ``__init__`` that fills its slots directly."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    native = "__mypyc_attrs__" in cls.__dict__  # compiled by mypyc: fixed layout, no __slots__
    if not params.frozen or not (native or "__slots__" in cls.__dict__):
        raise TypeError(f"{cls.__name__}: slot_init is for frozen dataclasses with slots=True")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: a __post_init__ is not supported")
    # An argument left out where the field has a default factory (dataclasses'
    # own sentinel does the same).
    names: dict[str, Any] = {"_unset": _UNSET}
    args: list[str] = []
    body: list[str] = []
    for f in dataclasses.fields(cls):
        if f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: keyword-only fields are not supported")
        name = f.name
        names[f"_set_{name}"] = getattr(cls, name).__set__
        has_default = f.default is not dataclasses.MISSING
        has_factory = f.default_factory is not dataclasses.MISSING
        names[f"_default_{name}"] = f.default
        names[f"_factory_{name}"] = f.default_factory
        if f.init and has_factory:
            args.append(f"{name}=_unset")
            body.append(f"_set_{name}(self, _factory_{name}() if {name} is _unset else {name})")
        elif f.init:
            args.append(f"{name}=_default_{name}" if has_default else name)
            body.append(f"_set_{name}(self, {name})")
        elif has_default:
            body.append(f"_set_{name}(self, _default_{name})")
        elif has_factory:
            body.append(f"_set_{name}(self, _factory_{name}())")
    source = f"def __init__(self, {', '.join(args)}):\n    " + "\n    ".join(body or ["pass"])
    exec(source, names)  # built from the field names only, as dataclasses does
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__dict__["__init__"].__doc__
    cls.__init__ = init  # type: ignore[misc]
    if native:
        cls.__setstate__ = _native_setstate  # type: ignore[attr-defined]
    return cls


def _native_setstate(self: object, state: dict[str, Any]) -> None:
    # The attributes mypyc's __getstate__ saved, set past the frozen __setattr__.
    for name, value in state.items():
        object.__setattr__(self, name, value)
