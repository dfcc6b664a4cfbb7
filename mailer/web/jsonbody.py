"""Reading JSON request bodies without letting a hostile one crash the handler."""

from __future__ import annotations

import json
from typing import Any

# Deeper than any real API body; a deeper one is an attack or a bug.
MAX_DEPTH = 64


class BadJSON(ValueError):
    """The body is not JSON this server will read; the message says why."""


class TooDeep(BadJSON):
    pass


def _depth(value: Any, limit: int) -> int:
    # Iterative, so a deep document cannot exhaust the stack here either.
    deepest, stack = 0, [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            items = current.values() if isinstance(current, dict) else current
            stack.extend((item, depth + 1) for item in items)
    return deepest


def parse_json(raw: bytes | bytearray, *, max_depth: int = MAX_DEPTH) -> Any:
    """The decoded body. Raises BadJSON for invalid text, invalid UTF-8, or
    nesting deeper than ``max_depth`` (which json.loads answers with a
    RecursionError, an error no handler expects)."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise TooDeep(f"The JSON is nested too deeply (more than {max_depth} levels).") from None
    except (ValueError, UnicodeDecodeError):
        raise BadJSON("The body is not valid JSON.") from None
    if _depth(data, max_depth) > max_depth:
        raise TooDeep(f"The JSON is nested too deeply (more than {max_depth} levels).")
    return data
