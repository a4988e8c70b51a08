"""Parse the textual IR (``mcir/grammar.lark``) back into a ``Graph``.

Errors are ``ParseError``s carrying ``file:line:column``, the offending token and what
was expected; semantic errors found while building (an undefined value, an unknown op,
a declared type that disagrees with inference) point at the op's line too.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import lark
import numpy as np

from mcir import dtypes
from mcir.encodings import ENCODINGS
from mcir.errors import McirError, ParseError
from mcir.ir import Graph, Location, Op
from mcir.ops import registry
from mcir.types import TensorType
from mcir.verifier import verify as verify_graph

# what the user would type, for "expected ..." messages
_TERMINAL_TEXT = {
    "VALUE": "a value name like %x",
    "GLOBAL": "a graph name like @main",
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a quoted string",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "MORETHAN": "'>'",
    "LESSTHAN": "'<'",
    "__ANON_0": "'->'",
    "HASH": "'#'",
    "RETURN": "'return'",
    "CONST": "'const'",
    "GRAPH": "'graph'",
    "DENSE": "'dense'",
    "LOC": "'loc'",
    "TRUE": "'true'",
    "FALSE": "'false'",
    "NONE": "'none'",
    "$END": "end of input",
}


MAX_LIST_DEPTH = 32


@lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _expected(names: set[str]) -> str:
    texts = sorted({_TERMINAL_TEXT.get(n, n.lower()) for n in names})
    if len(texts) > 6:
        texts = texts[:6] + ["..."]
    return ", ".join(texts)


def parse(text: str, *, source: str | None = None, verify: bool = True) -> Graph:
    """Parse IR text into a Graph. ``source`` names the file in error messages.

    Constants printed without data (``%w = const : f32[…]``) have ``data = None`` until
    weights are attached (``mcir.load`` does that from the safetensors file).
    """
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedCharacters as e:
        bad = text[e.pos_in_stream : e.pos_in_stream + 1] if e.pos_in_stream is not None else "?"
        raise ParseError(
            f"unexpected character {bad!r}; expected {_expected(set(e.allowed or ()))}",
            line=e.line,
            column=e.column,
            source=source,
        ) from None
    except lark.exceptions.UnexpectedToken as e:
        tok = "end of input" if e.token.type == "$END" else repr(str(e.token))
        raise ParseError(
            f"unexpected {tok}; expected {_expected(set(e.expected or ()))}",
            line=e.line,
            column=e.column,
            source=source,
        ) from None
    except lark.exceptions.UnexpectedEOF as e:
        raise ParseError(
            f"unexpected end of input; expected {_expected(set(e.expected or ()))}",
            line=e.line if e.line > 0 else text.count("\n") + 1,
            column=e.column,
            source=source,
        ) from None
    graph = _Builder(source).build(tree.children[0])
    if verify:
        verify_graph(graph)
    return graph


def parse_file(path: str | Path, *, verify: bool = True) -> Graph:
    """Parse an ``.mcir`` text file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise McirError(f"cannot read IR file {p}: {e.strerror}") from None
    except UnicodeDecodeError:
        from mcir.file_kind import file_kind

        raise McirError(f"{p}: {file_kind(p).what}, not mcir IR text (which is UTF-8)") from None
    return parse(text, source=str(p), verify=verify)


class _Builder:
    """Walks the parse tree and builds the graph, reporting errors at their position."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.graph = Graph()

    def error(self, node: Any, message: str) -> ParseError:
        line = getattr(node, "line", None) or getattr(getattr(node, "meta", None), "line", None)
        col = getattr(node, "column", None) or getattr(getattr(node, "meta", None), "column", None)
        return ParseError(message, line=line, column=col, source=self.source)

    def build(self, tree: lark.Tree) -> Graph:
        name_tok, *rest = tree.children
        g = self.graph
        g.name = str(name_tok)[1:]
        params, out_types, ops, ret = [], [], [], None
        for child in rest:
            if child is None:
                continue
            if child.data == "param":
                params.append(child)
            elif child.data == "type":
                out_types.append(child)
            elif child.data in ("const_op", "compute_op"):
                ops.append(child)
            elif child.data == "ret":
                ret = child
        for p in params:
            tok, ty = p.children
            name = str(tok)[1:]
            if g.has_value(name):
                raise self.error(tok, f"value %{name} is defined twice")
            g.add_input(name, self.computed_type(ty, graph_input=True))
        for node in ops:
            self.op(node)
        outs = []
        for tok in ret.children:
            if tok is None:
                continue
            outs.append(self.use(tok))
        if not outs:  # the verifier would say so too, but without a position
            raise self.error(ret, "the graph returns nothing; return at least one value")
        g.set_outputs(outs)
        declared = [self.type(t) for t in out_types]
        if declared != [v.type for v in outs]:
            got = ", ".join(str(v.type) for v in outs)
            want = ", ".join(str(t) for t in declared)
            raise self.error(ret, f"return types ({got}) do not match the graph signature ({want})")
        return g

    def use(self, tok: lark.Token):
        name = str(tok)[1:]
        if not self.graph.has_value(name):
            raise self.error(tok, f"use of undefined value %{name}")
        return self.graph.value(name)

    def define(self, tok: lark.Token) -> str:
        name = str(tok)[1:]
        if self.graph.has_value(name):
            raise self.error(tok, f"value %{name} is defined twice")
        return name

    def loc(self, node: lark.Tree | None) -> Location:
        if node is None:
            return Location()
        module, source = (self.string(t) for t in node.children)
        return Location(module, source)

    def string(self, tok: lark.Token) -> str:
        """The text of a STRING token; the grammar admits any backslash pair, JSON fewer."""
        try:
            return json.loads(str(tok))
        except json.JSONDecodeError as e:
            why = f"{e.msg.removesuffix(' at')} at offset {e.pos}"
            raise self.error(tok, f"malformed string {str(tok)[:40]!r}: {why}; strings use JSON escapes") from None

    def op(self, node: lark.Tree) -> None:
        ch = node.children
        if node.data == "const_op":
            res_tok, dense, ty, loc = ch
            name = self.define(res_tok)
            t = self.type(ty)
            if dense is not None and t.encoding is not None and t.encoding.needs_components:
                parts = ", ".join(t.encoding.components(t))
                raise self.error(dense, f"a constant of type {t} cannot be inline: its {parts} are in the weights file")
            data = self.dense(dense, t) if dense is not None else None
            op = Op("const", (), {}, name, t, loc=self.loc(loc), data=data)
            self.graph.insert(op)
            return
        res_tok, name_tok, *mid = ch
        *operand_toks, attrs_node, ty, loc = mid
        name = self.define(res_tok)
        kind = str(name_tok)
        try:
            opdef = registry.get(kind)
        except McirError as e:
            raise self.error(name_tok, str(e)) from None
        operands = [self.use(t) for t in operand_toks if t is not None]
        where = f"op '{kind}' (%{name})"
        attrs = self.attrs(attrs_node) if attrs_node is not None else {}
        t = self.computed_type(ty)
        try:
            attrs = opdef.complete_attrs(attrs, where)
            inferred = opdef.infer_type([v.type for v in operands], attrs, where)
        except McirError as e:
            raise self.error(name_tok, str(e)) from None
        if inferred != t.logical:
            raise self.error(ty, f"{where} is declared {t} but its operands give {inferred}")
        op = Op(kind, operands, attrs, name, t, loc=self.loc(loc))
        self.graph.insert(op)

    def computed_type(self, node: lark.Tree, graph_input: bool = False) -> TensorType:
        """The type of a graph input or op result: encodings with components are for constants only,
        except those an op computes at run time (binary activations), and never for inputs."""
        t = self.type(node)
        if t.encoding is not None and t.encoding.needs_components and (graph_input or not t.encoding.computed):
            raise self.error(node, f"only a constant can have the type {t} (its components live in the weights file)")
        return t

    def type(self, node: lark.Tree) -> TensorType:
        dtype_tok, *rest = node.children
        enc_node = rest[-1] if rest and isinstance(rest[-1], lark.Tree) else None
        dims = [self.integer(d) for d in rest if isinstance(d, lark.Token)]
        try:
            dtype = dtypes.by_name(str(dtype_tok))
        except McirError as e:
            raise self.error(dtype_tok, str(e)) from None
        encoding = None
        if enc_node is not None:
            ename_tok, *kvs = enc_node.children
            cls = ENCODINGS.get(str(ename_tok))
            if cls is None:
                raise self.error(ename_tok, f"unknown encoding #{ename_tok}; known: {', '.join(ENCODINGS)}")
            params = dict(self.kv(kv) for kv in kvs if kv is not None)
            try:
                encoding = cls.from_params(params)
            except McirError as e:
                raise self.error(ename_tok, str(e)) from None
        try:
            return TensorType(tuple(dims), dtype, encoding)
        except McirError as e:
            raise self.error(dtype_tok, str(e)) from None

    def attrs(self, node: lark.Tree) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kv in node.children:
            if kv is None:
                continue
            key, value = self.kv(kv)
            if key in out:
                raise self.error(kv, f"attribute '{key}' is given twice")
            out[key] = value
        return out

    def kv(self, node: lark.Tree) -> tuple[str, Any]:
        key, value = node.children
        return str(key), self.value(value)

    def integer(self, tok: lark.Token) -> int:
        try:
            return int(tok)
        except ValueError:  # beyond sys.get_int_max_str_digits() (4300 by default)
            raise self.error(tok, f"integer {str(tok)[:12]}... has too many digits ({len(tok)})") from None

    def value(self, node: Any, depth: int = 0) -> Any:
        kind = node.data
        if kind == "int":
            return self.integer(node.children[0])
        if kind == "float":
            return float(node.children[0])
        if kind == "true":
            return True
        if kind == "false":
            return False
        if kind == "none":
            return None
        if kind == "string":
            return self.string(node.children[0])
        if kind == "list":
            if depth >= MAX_LIST_DEPTH:  # the recursion below would hit Python's limit
                raise self.error(node, f"lists nested deeper than {MAX_LIST_DEPTH} levels")
            return [self.value(c, depth + 1) for c in node.children if c is not None]
        raise self.error(node, f"unexpected value {kind}")

    def dense(self, node: lark.Tree, t: TensorType) -> np.ndarray:
        values = [self.value(c) for c in node.children if c is not None]
        if len(values) != t.numel:
            raise self.error(node, f"dense constant has {len(values)} elements but its type {t} needs {t.numel}")
        try:
            return np.array(values, dtype=t.dtype.np).reshape(t.shape)
        except (OverflowError, ValueError, McirError) as e:
            raise self.error(node, f"dense constant does not fit {t}: {e}") from None
