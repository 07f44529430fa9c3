"""The one way settings are validated: each key has a rule (value → what it must be, or None when
the value is fine), and a value that breaks its rule is a one-line error naming ``section.key``,
before any data is loaded or any directory made.

Rules live beside the settings they check: a domain's or backbone's dict of rules for the free-form
``data`` and ``model`` sections; :func:`setting` on the fields of the typed recipe sections and of
every schedule's parameters (a field without one is checked by its type). Checks that relate two
keys are written where both are known.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Optional, Sequence

from .errors import UserError

Rule = Callable[[Any], Optional[str]]  # value → what it must be (None if it is fine)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: Optional[int] = None, hi: Optional[int] = None, optional: bool = False) -> Rule:
    span = f" ≥ {lo}" if hi is None and lo is not None else f" in [{lo}, {hi}]" if lo is not None else ""
    must = f"an integer{span}{' or null' if optional else ''}"
    return lambda v: None if (optional and v is None) or (_is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)) else must


def number(lo: Optional[float] = None, hi: Optional[float] = None, *, open_lo: bool = False, open_hi: bool = False,
           optional: bool = False) -> Rule:  # fmt: skip
    left = "(" if open_lo else "["
    right = ")" if open_hi else "]"
    span = f" in {left}{lo}, {hi}{right}" if lo is not None and hi is not None else f" {'>' if open_lo else '≥'} {lo}" if lo is not None else ""
    must = f"a number{span}{' or null' if optional else ''}"

    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        if lo is not None and (v <= lo if open_lo else v < lo):
            return False
        return hi is None or (v < hi if open_hi else v <= hi)

    return lambda v: None if (optional and v is None) or ok(v) else must


def choice(options: Sequence[str], optional: bool = False) -> Rule:
    must = f"one of {', '.join(options)}{' or null' if optional else ''}"
    return lambda v: None if (optional and v is None) or v in options else must


def text(optional: bool = False) -> Rule:
    must = f"a non-empty string{' or null' if optional else ''}"
    return lambda v: None if (optional and v is None) or (isinstance(v, str) and v) else must


def flag() -> Rule:
    return lambda v: None if isinstance(v, bool) else "true or false"


def int_list(lo: int = 0, nonempty: bool = False) -> Rule:
    must = f"a list of integers ≥ {lo}{' (at least one)' if nonempty else ''}"
    return lambda v: None if isinstance(v, list) and (v or not nonempty) and all(_is_int(a) and a >= lo for a in v) else must


def anything() -> Rule:
    return lambda v: None


def because(rule: Rule, why: str) -> Rule:
    """``rule`` with the reason appended to what it asks for."""
    return lambda v: None if rule(v) is None else f"{rule(v)} ({why})"


def sigma(optional: bool = False) -> Rule:
    """A noise level σ (not ln σ) whose square float32 holds: in [1e-6, 1e6]."""
    return number(SIGMA_RANGE[0], SIGMA_RANGE[1], optional=optional)


SIGMA_RANGE = (1e-6, 1e6)  # σ's outside it underflow or overflow σ² in float32


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping", list: "a list"}


def type_rule(hint: Any) -> Rule:
    """The rule of a type annotation alone (``int``, ``float``, ``Optional[...]``, ``Union[...]``)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in options
    kinds = [typing.get_origin(t) or t for t in options if t is not type(None)]
    if not all(k in _TYPE_WORDS for k in kinds):
        return anything()
    must = " or ".join(_TYPE_WORDS[k] for k in kinds) + (" or null" if optional else "")

    def fits(v: Any, kind: type) -> bool:
        if kind is bool:
            return isinstance(v, bool)
        if kind is int:
            return _is_int(v)
        if kind is float:
            return _is_number(v)
        return isinstance(v, kind)

    return lambda v: None if (optional and v is None) or any(fits(v, k) for k in kinds) else must


def setting(default: Any, rule: Rule) -> Any:
    """A dataclass field with its default and its rule (see :func:`field_rules`)."""
    return dataclasses.field(default=default, metadata={"rule": rule})


def field_rules(cls: type) -> dict[str, Rule]:
    """Every field of a settings dataclass → its rule: the one given by :func:`setting`, else its type's."""
    hints = typing.get_type_hints(cls)
    return {f.name: f.metadata.get("rule") or type_rule(hints[f.name]) for f in dataclasses.fields(cls)}


def check_settings(section: str, values: dict[str, Any], rules: dict[str, Rule], where: str = "") -> None:
    """UserError ``[where]section.key must be ..., got ...`` for the first value that breaks its rule
    (``section`` empty: a top-level key)."""
    for key, rule in rules.items():
        if key in values:
            must = rule(values[key])
            if must:
                raise UserError(f"{where}{section + '.' if section else ''}{key} must be {must}, got {values[key]!r}")


def check_fields(section: str, obj: Any, where: str = "") -> None:
    """Check every field of a settings dataclass instance against its rule."""
    check_settings(section, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, field_rules(type(obj)), where)


# rules shared by the image domains' data sections
SPLIT_RULES: dict[str, Rule] = {
    "val_fraction": number(0, 1, open_lo=True, open_hi=True),
    "split_seed": integer(0),
    "limit": integer(1, optional=True),
}
