"""Op declarations: ``registry`` holds the machinery; one module per family of ops."""

from mcir.ops.registry import Attr, OpDef, all_ops, defop, exists, get

__all__ = ["Attr", "OpDef", "all_ops", "defop", "exists", "get"]
