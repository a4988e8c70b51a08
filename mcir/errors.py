"""Errors mcir reports to its users.

Every error a user can cause (bad model file, malformed IR, unknown op, impossible
option, wrong input shape) is an ``McirError``: its message says what is wrong,
where (file, line:col, op, module path) and what to do. The CLI prints these
without a traceback and exits with status 2; any other exception is a bug in
mcir and exits with status 1.
"""

from __future__ import annotations


class McirError(Exception):
    """Base class of every error caused by user input."""


class ParseError(McirError):
    """Malformed textual IR or pipeline string; the message has line:column."""

    def __init__(
        self, message: str, *, line: int | None = None, column: int | None = None, source: str | None = None
    ) -> None:
        where = ""
        if source is not None or line is not None:
            where = f"{source or '<string>'}"
            if line is not None:
                where += f":{line}:{column or 0}"
            where += ": "
        super().__init__(where + message)
        self.line = line
        self.column = column
        self.source = source


class VerifyError(McirError):
    """A graph breaks an IR invariant (SSA order, types, shapes)."""


class UnsupportedError(McirError):
    """An op, model construct or target mcir cannot handle (yet)."""


class ModelFileError(McirError):
    """A model file is missing, corrupt, or unsafe to load."""


class CodegenError(McirError):
    """The native backend cannot lower or link a graph (e.g. no linker)."""


class RuntimeCallError(McirError):
    """Wrong inputs given to a compiled library, or the library returned an error code."""
