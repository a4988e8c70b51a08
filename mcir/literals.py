"""The text of numbers and attribute values, shared by the printer and by encodings' ``#name<...>``.

A leaf module (it imports nothing from mcir) so that types and encodings can print their
parameters without importing the graph printer.
"""

from __future__ import annotations

import json
import math
from typing import Any


def format_float(v: float) -> str:
    """Shortest text that parses back to the same double; always has a '.' or exponent."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(float(v))


def format_attr(v: Any) -> str:
    """Text of an attribute value: 3, 0.5, true, none, "str", [1, 2]."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")
