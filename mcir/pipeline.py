"""Pipeline strings: ``'fold,prune(sparsity=0.8,granularity=channel),quant8'``.

Parsed with lark into a list of ``PipelineItem`` (pass reference, options, position).
Option values are typed: ints, floats, bools, quoted or bare strings, ``N:M`` pairs,
lists ``[a, b]`` and call-like values ``percentile(99.99)`` (kept as canonical text).
Errors point at the position in the string with a caret line::

    in pipeline, column 7: unknown option 'sparsty' for pass 'prune'; valid options: sparsity, threshold, ...
      prune(sparsty=0.8)
            ^^^^^^^
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import lark

from mcir.errors import ParseError

GRAMMAR = r"""
pipeline: item ("," item)*
item: (NAME | REF) [options]
options: "(" [opt ("," opt)*] ")"
opt: NAME "=" value
?value: NM                                   -> nm
      | SIGNED_INT                           -> int
      | SIGNED_FLOAT                         -> float
      | STRING                               -> string
      | NAME "(" [value ("," value)*] ")"    -> call
      | WORD                                 -> word
      | NAME                                 -> word
      | "[" [value ("," value)*] "]"         -> list

NM.3: /\d+:\d+/
REF.2: /[A-Za-z0-9_.\/~\-]+:[A-Za-z_][A-Za-z0-9_]*/
NAME: /[A-Za-z_][A-Za-z0-9_\-]*/
WORD: /[A-Za-z0-9_.*+?^$|\\\-]+/
STRING: /'[^']*'/ | /"(\\.|[^"\\])*"/
SIGNED_INT.2: /[-+]?\d+(?![.\deE:])/
SIGNED_FLOAT.2: /[-+]?(\d+\.\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|\d+[eE][-+]?\d+)/

%import common.WS
%ignore WS
"""


@dataclass(frozen=True)
class NM:
    """An N:M structured-sparsity pattern: N non-zeros in every M consecutive weights."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class OptionValue:
    value: Any
    column: int
    text: str


@dataclass(frozen=True)
class PipelineItem:
    """One pass in a pipeline: its reference (name, ``file.py:name`` or ``pkg.mod:name``) and options."""

    ref: str
    options: dict[str, OptionValue]
    column: int


@lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    return lark.Lark(GRAMMAR, start="pipeline", parser="lalr", propagate_positions=True, maybe_placeholders=True)


def caret(text: str, column: int, length: int = 1) -> str:
    """The pipeline text with a caret line under ``column`` (1-based)."""
    return f"\n  {text}\n  {' ' * (column - 1)}{'^' * max(1, length)}"


def pipeline_error(text: str, message: str, column: int, length: int = 1) -> ParseError:
    err = ParseError(f"in pipeline, column {column}: {message}{caret(text, column, length)}")
    err.line, err.column = 1, column
    return err


def parse_pipeline(text: str) -> list[PipelineItem]:
    """Parse a pipeline string; ParseError with a caret at the problem otherwise."""
    if not text.strip():
        return []
    depth, quote, opened = 0, "", 0
    for i, ch in enumerate(text, 1):
        if quote:  # brackets inside quoted strings (regexes) do not count
            quote = "" if ch == quote else quote
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([":
            depth, opened = depth + 1, i
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise pipeline_error(text, f"unbalanced '{ch}': nothing to close", i)
    if depth > 0:
        raise pipeline_error(text, "unbalanced parentheses: a '(' or '[' is never closed", opened)
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        col = getattr(e, "column", 1) or 1
        if isinstance(e, lark.exceptions.UnexpectedToken):
            what = "end of pipeline" if e.token.type == "$END" else repr(str(e.token))
            raise pipeline_error(text, f"unexpected {what}", col, len(str(e.token)) or 1) from None
        if isinstance(e, lark.exceptions.UnexpectedCharacters):
            raise pipeline_error(text, f"unexpected character {text[e.pos_in_stream]!r}", col) from None
        raise pipeline_error(text, "unexpected end of pipeline", len(text)) from None
    items = []
    for node in tree.children:
        ref_tok, opts = node.children
        options: dict[str, OptionValue] = {}
        if opts is not None:
            for opt in opts.children:
                if opt is None:
                    continue
                key, val = opt.children
                if str(key) in options:
                    raise pipeline_error(text, f"option '{key}' given twice", key.column, len(key))
                meta = val.meta
                column = key.column if meta.empty else meta.column
                raw = "" if meta.empty else text[meta.start_pos : meta.end_pos]
                options[str(key)] = OptionValue(_value(val), column, raw)
        items.append(PipelineItem(str(ref_tok), options, ref_tok.column))
    return items


def _value(node: lark.Tree) -> Any:
    kind = node.data
    ch = [c for c in node.children if c is not None]
    if kind == "nm":
        n, m = str(ch[0]).split(":")
        return NM(int(n), int(m))
    if kind == "int":
        return int(ch[0])
    if kind == "float":
        return float(ch[0])
    if kind == "string":
        return str(ch[0])[1:-1]
    if kind == "word":
        word = str(ch[0])
        return {"true": True, "false": False, "none": None}.get(word, word)
    if kind == "call":
        args = ",".join(_canonical(_value(c)) for c in ch[1:])
        return f"{ch[0]}({args})"
    if kind == "list":
        return [_value(c) for c in ch]
    raise ValueError(f"unknown pipeline value {kind}")


def _canonical(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ",".join(_canonical(x) for x in v) + "]"
    return str(v)
