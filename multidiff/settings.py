"""Checks for the free-form recipe sections a domain or backbone owns (``data``, ``model``): each
key gets a rule, and a value that breaks it is a one-line error naming ``section.key``, before any
data is loaded or any directory made."""
from __future__ import annotations

import math
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


def check_settings(section: str, values: dict[str, Any], rules: dict[str, Rule]) -> None:
    """UserError ``section.key must be ..., got ...`` for the first value that breaks its rule."""
    for key, rule in rules.items():
        if key in values:
            must = rule(values[key])
            if must:
                raise UserError(f"{section}.{key} must be {must}, got {values[key]!r}")


# rules shared by the image domains' data sections
SPLIT_RULES: dict[str, Rule] = {
    "val_fraction": number(0, 1, open_lo=True, open_hi=True),
    "split_seed": integer(0),
    "limit": integer(1, optional=True),
}
