"""Op declarations: ``registry`` holds the machinery; one module per family of ops.

Importing any ``mcir.ops`` module runs this package first, which imports the definition
modules: they register themselves with the registry, so the registry never imports them
(the registry stays below its definitions, no import circle).
"""

from mcir.ops import elementwise, nn, quant, rnn, shape  # noqa: F401  (registration)
from mcir.ops.registry import Attr, OpDef, all_ops, defop, exists, get

__all__ = ["Attr", "OpDef", "all_ops", "defop", "exists", "get"]
