"""The one place where text a user or a run directory hands us becomes data (YAML recipes, ``--set``
values, JSON schedule and run files).

Both readers are bounded, so that legal-but-hostile text is refused with one line instead of a
traceback or an unbounded expansion later on:

- mappings must have string keys, each key at most once (YAML would keep the last duplicate
  silently; ``on:``/``yes:`` would become booleans);
- nesting depth, text length and the size of the value once YAML aliases are expanded are bounded
  (an alias tree costs nothing to load but explodes when a recipe is copied or flattened);
- JSON refuses NaN/Infinity literals.
"""
from __future__ import annotations

import functools
import json
import re
from typing import Any

from .errors import UserError

MAX_TEXT_CHARS = 4_000_000  # a schedule file with a fine table is ~100 kB; a recipe ~2 kB
MAX_DEPTH = 32  # recipes nest 4 levels (schedule.<modality>.<key>), schedule files 2
MAX_YAML_VALUES = 100_000  # values once aliases are expanded; a recipe has ~100

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@functools.lru_cache(maxsize=1)
def _bounded_loader() -> Any:
    """The YAML loader class, made on first use: the schedule library reads JSON only and does not
    need PyYAML installed."""
    import yaml
    from yaml.nodes import MappingNode, ScalarNode

    class _BoundedLoader(yaml.SafeLoader):
        """SafeLoader with depth bounds, string keys only, no duplicate keys, and YAML 1.2's reading of
        1e-3 as a float (YAML 1.1 wants 1.0e-3; users write 1e-3)."""

        def __init__(self, stream: str, what: str) -> None:
            super().__init__(stream)
            self.what, self.depth = what, 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    mark = self.peek_event().start_mark
                    raise UserError(f"{self.what} nests deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[str] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # `<<: *base` merges a mapping; its keys may be overridden here
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, ScalarNode) or key_node.tag != _STR_TAG:
                    shown = key_node.value if isinstance(key_node, ScalarNode) else "a " + key_node.id
                    raise UserError(f"{self.what}: key {shown!r} at line {line} is not a string (quote it)")
                if key_node.value in seen:
                    raise UserError(f"{self.what}: key {key_node.value!r} appears twice in one mapping (line {line})")
                seen.add(key_node.value)
            return super().construct_mapping(node, deep=deep)


    _BoundedLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )

    return _BoundedLoader


def parse_yaml(text: str, what: str = "recipe") -> Any:
    """YAML text → plain data (dicts with string keys, lists, scalars), bounded as described above.

    Raises :class:`yaml.YAMLError` for text that is not YAML (callers say where) and
    :class:`UserError` for YAML that is legal but refused."""
    _check_length(text, what)
    loader = _bounded_loader()(text, what)
    try:
        value = loader.get_single_data()
    except RecursionError:
        raise UserError(f"{what} nests too deeply") from None
    finally:
        loader.dispose()
    _check_size(value, what)
    return value


def parse_json(text: str, what: str) -> Any:
    """JSON text → data; a one-line :class:`UserError` naming ``what`` for anything malformed."""
    _check_length(text, what)
    try:
        return json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, what), parse_constant=_no_constant)
    except UserError:
        raise
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise UserError(f"{what} nests too deeply") from None
    except ValueError as exc:
        raise UserError(f"{what}: {exc}") from None


def _check_length(text: str, what: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise UserError(f"{what} is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}")


def _check_size(value: Any, what: str) -> None:
    """Count values as a copy would visit them (aliases expanded), stopping at the bound."""
    budget, stack = MAX_YAML_VALUES, [value]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            raise UserError(f"{what} expands to more than {MAX_YAML_VALUES:,} values (aliases included)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _unique_keys(pairs: list[tuple[str, Any]], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise UserError(f"{what}: key {key!r} appears twice in one object")
        out[key] = value
    return out


def _no_constant(token: str) -> Any:
    raise ValueError(f"non-finite number {token} is not allowed")
