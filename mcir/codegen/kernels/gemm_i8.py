"""INT8 GEMM/GEMV: u8 x s8 -> s32 register-blocked micro-kernels over pre-packed panels,
with the zero-point correction, the bias and the requantisation fused.

``C[M,N] = requant( offset[n] + sum_k A[m,k] * B[k,n] )``

* **Dot instruction** (``DotIsa``, from the target): AVX-512 VNNI ``vpdpbusd`` (one
  int32 lane sums 4 consecutive u8 x s8 products: 64 MACs per zmm instruction; 256-bit
  with AVX-VNNI or AVX512VL), else ``vpmaddwd`` on operands widened to int16 (one lane
  sums 2 products; exact: |u8 x s8| + |u8 x s8| < 2^31, unlike ``vpmaddubsw`` whose int16
  sums saturate), else a portable vector multiply-add on int32 (non-x86 triples).
  LLVM never produces ``vpdpbusd`` from a scalar loop, hence the explicit intrinsics.
* **B panels** ``[ceil(N/NR)][ceil(K/G)][NR][G]`` (G = products per int32 lane, NR =
  nv vectors of L int32 lanes), zero padded: one vector load per (K group, vector) in
  exactly the order the micro-kernel streams them. Weights are packed at compile time;
  im2col (``conv_i8``) writes activations straight into this layout at run time.
* **A** is read in place, one G-byte group per row broadcast to every lane (a partial
  last group of a row is assembled byte by byte so no load crosses the end of the row).
* **Micro-tile** ``mr x nv`` accumulators (4 x 4 zmm for a batch GEMM), panels outer,
  row tiles inner so a panel is reused from cache by every row tile; batch-1 GEMV
  splits K over ``ku`` accumulator sets to cover the instruction latency and is bound
  by the weight stream, which the panel layout makes one linear read.
* **Zero points and bias** are folded at compile time into one int32 per output
  channel, ``offset = bias - z_x * sum_k w[n,k]``, which initialises the accumulators:
  ``sum_k (x - z_x) w = sum_k x w - z_x sum_k w`` exactly. With the requantisation
  parameters they form the op's *channel table*, a constant carried by the bias operand
  (appended to the weights without a bias), so ops sharing weights share the panels.
* **Requantisation** (u8/i8 results) in fixed point: ``M = s_x s_w[n] / s_y`` is stored as
  ``M0 * 2^-shift`` with ``M0`` a 31-bit integer, and
  ``q = clamp(((acc * M0 + 2^(shift-1)) >> shift) + z_y)`` in 64-bit arithmetic: round
  half up (towards +inf), where the interpreter rounds the float value half to even, so
  results agree within 1 LSB (they are equal except at ties and where the reference's own
  f32 rounding crosses one). f32 results are ``float(acc) * (s_x s_w[n])``.
* **u8 x u8 matmul** (attention): B packed at run time as s8 ``b - 128``, with row and
  column zero-point sums (see ``_matmul_u8``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I8, I16, I32, I64, Emitter, const, i64
from mcir.codegen.kernels import KernelContext, gemm_amx, kernel
from mcir.codegen.kernels.gemm_f32 import _matmul_dims, batch_strides  # matmul's batch broadcasting, as for f32
from mcir.codegen.memory_plan import ALIGN, align_up, view_offset, view_root
from mcir.codegen.parallel import MIN_PARALLEL_MACS, parallel_for
from mcir.codegen.target import Target
from mcir.encodings import Quant
from mcir.encodings.quant import bias_accumulator_units
from mcir.errors import CodegenError
from mcir.ir import Op

# -- the dot-product instruction of a target ------------------------------------------------


@dataclass(frozen=True)
class DotIsa:
    """How one instruction accumulates int8 products into int32 lanes."""

    kind: str  # "vnni" (vpdpbusd), "madd" (vpmaddwd on int16), "generic" (int32 multiply-add)
    lanes: int  # int32 lanes per accumulator vector
    group: int  # consecutive K elements summed into one lane per instruction

    @property
    def key(self) -> str:
        return f"{self.kind}{self.lanes}x{self.group}"


def dot_isa(target: Target, a_signed: bool = False, b_signed: bool = True) -> DotIsa:
    """The best dot instruction of ``target`` for A/B operands of the given signedness.

    VNNI multiplies an unsigned byte by a signed one, so it needs exactly one signed
    operand; u8 x u8 (or s8 x s8) products use the int16 path.
    """
    mixed = a_signed != b_signed
    if target.is_x86:
        bits = target.vector_bits
        if mixed and bits == 512 and target.has("avx512vnni"):
            return DotIsa("vnni", 16, 4)
        if mixed and bits >= 256 and (target.has("avxvnni") or (target.has("avx512vnni") and target.has("avx512vl"))):
            return DotIsa("vnni", 8, 4)
        if bits == 512 and target.has("avx512bw"):
            return DotIsa("madd", 16, 2)
        if bits >= 256 and target.has("avx2"):
            return DotIsa("madd", 8, 2)
        return DotIsa("madd", 4, 2)  # SSE2 is part of x86-64
    return DotIsa("generic", max(4, target.vector_bits // 32), 1)


def isa_name(target: Target) -> str:
    """The dot instruction an int8 kernel uses on ``target`` (u8 activations, i8 weights), for the kernel table."""
    isa = dot_isa(target)
    name = {"vnni": "vpdpbusd", "madd": "vpmaddwd", "generic": "int32 mul-add"}[isa.kind] + f" x{isa.lanes}"
    if gemm_amx.amx_applies(gemm_amx.TILE_ROWS, target):
        return f"AMX tdpbusd for M >= {gemm_amx.TILE_ROWS}, else {name}"
    return name


#: int8 kernels write f32 or per-tensor quantised u8/i8 (``result_requant``)
INT8_RESULT = "u8#quant|i8#quant|f32"


def _vnni_fn(em: Emitter, lanes: int) -> ir.Function:
    acc = ir.VectorType(I32, lanes)
    byt = ir.VectorType(I8, 4 * lanes)
    name = "llvm.x86.avx512.vpdpbusd.512" if lanes == 16 else "llvm.x86.avx512.vpdpbusd.256"
    fn = em.module.globals.get(name)
    if fn is None:
        fn = ir.Function(em.module, ir.FunctionType(acc, [acc, byt, byt]), name)
    return fn


def _madd_fn(em: Emitter, lanes: int) -> ir.Function:
    names = {16: "llvm.x86.avx512.pmaddw.d.512", 8: "llvm.x86.avx2.pmadd.wd", 4: "llvm.x86.sse2.pmadd.wd"}
    name = names[lanes]
    fn = em.module.globals.get(name)
    if fn is None:
        half = ir.VectorType(I16, 2 * lanes)
        fn = ir.Function(em.module, ir.FunctionType(ir.VectorType(I32, lanes), [half, half]), name)
    return fn


# -- tiling -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntTiling:
    """Register blocking of one int8 GEMM."""

    mr: int  # rows of C per micro-tile
    nv: int  # accumulator vectors per micro-tile row
    ku: int  # independent accumulator sets along K (batch-1 latency hiding)
    isa: DotIsa

    @property
    def nr(self) -> int:
        return self.nv * self.isa.lanes


def panel_vectors(n: int, isa: DotIsa, target: Target) -> int:
    """Vectors per B panel for N columns (depends on N and the target only)."""
    nv_max = 4 if target.vector_registers >= 32 else 2
    return max(1, min(nv_max, math.ceil(n / isa.lanes)))


def choose_tiling(m: int, n: int, isa: DotIsa, target: Target) -> IntTiling:
    """Blocking for an M x N int8 product on ``target``."""
    nv = panel_vectors(n, isa, target)
    # accumulators that fit beside the B vectors (widened copies for madd), one A broadcast and a temporary
    budget = target.vector_registers - nv * (2 if isa.kind == "madd" else 1) - 2
    if m == 1:
        return IntTiling(1, nv, max(1, min(4, 8 // nv)), isa)
    mr = max(1, min(m, budget // nv, 8))
    if m < 8 * mr:
        # few row tiles: prefer a row count dividing M (a ragged last tile is a whole extra pass)
        lowest = min(mr, max(3, mr // 2))
        mr = min(range(mr, lowest - 1, -1), key=lambda r: (-(-m // r) * r - m, -r))
    return IntTiling(mr, nv, 1, isa)


# -- packing ------------------------------------------------------------------------------------


def pack_panels(w_nk: np.ndarray, nr: int, group: int) -> np.ndarray:
    """``W[N,K]`` (row n = output column n of C) as zero-padded panels ``[ceil(N/NR)][ceil(K/G)][NR][G]``."""
    n, k = w_nk.shape
    p, kg = math.ceil(n / nr), math.ceil(k / group)
    padded = np.zeros((p * nr, kg * group), w_nk.dtype)
    padded[:n, :k] = w_nk
    return np.ascontiguousarray(padded.reshape(p, nr, kg, group).transpose(0, 2, 1, 3))


def panel_bytes(n: int, k: int, nr: int, group: int) -> int:
    return math.ceil(n / nr) * math.ceil(k / group) * nr * group


def fixed_point(multiplier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``M ≈ M0 * 2^-shift`` per channel: M0 in [2^30, 2^31), shift in [1, 62] (M0 = 0 for M < 2^-32)."""
    m = np.asarray(multiplier, np.float64)
    if np.any(~np.isfinite(m)) or np.any(m < 0) or np.any(m >= 2.0**30):
        raise CodegenError(f"requantisation multiplier out of range (need 0 <= M < 2^30): {m.max():g}")
    frac, exp = np.frexp(m)  # m = frac * 2^exp, frac in [0.5, 1)
    m0 = np.rint(frac * 2.0**31).astype(np.int64)
    carry = m0 == 2**31
    m0[carry] //= 2
    exp = exp + carry
    shift = 31 - exp
    tiny = shift > 62  # |acc * M| < 0.5 for any int32 acc: the result is the zero point
    m0[tiny] = 0
    shift[tiny] = 1
    return m0.astype(np.int32), shift.astype(np.int32)


@dataclass(frozen=True)
class Requant:
    """What the epilogue does with an int32 accumulator of one output channel."""

    out: str  # "f32", "u8" or "i8"
    zero_point: int = 0
    lo: int = 0
    hi: int = 0


def result_requant(op: Op) -> Requant:
    """The epilogue for ``op``'s result type: f32, or a per-tensor quantised u8/i8."""
    t = op.result.type
    if t.encoding is None and t.dtype.name == "f32":
        return Requant("f32")
    enc = t.encoding
    if isinstance(enc, Quant) and enc.axis is None and t.dtype.name in ("u8", "i8"):
        info = np.iinfo(t.dtype.np)
        return Requant(t.dtype.name, enc.zero_point, int(info.min), int(info.max))
    raise CodegenError(
        f"{op.where()}: int8 kernels write f32 or per-tensor quantised u8/i8 results, not {t}; "
        "quantise the result per tensor (the quant8 pass does) or dequantize it"
    )


def activation_quant(op: Op, index: int = 0) -> Quant:
    """The per-tensor quantisation of activation operand ``index``; CodegenError otherwise."""
    t = op.operands[index].type
    enc = t.encoding
    if not isinstance(enc, Quant) or enc.axis is not None:
        raise CodegenError(f"{op.where()}: int8 kernels need per-tensor quantised activations, got {t}")
    return enc


def const_data(op: Op, index: int, what: str):
    """The stored data of constant operand ``index`` (through views: reshapes, or slices of raw arrays)."""
    v = op.operands[index]
    root = view_root(v)
    if not root.is_constant or root.producer.data is None:
        raise CodegenError(f"{op.where()}: the {what} of an int8 layer must be a constant with data (got %{v.name})")
    stored = root.producer.data
    if isinstance(stored, dict):
        if root.type.numel != v.type.numel:
            raise CodegenError(f"{op.where()}: the {what} %{v.name} is a slice of an encoded constant")
        return stored
    flat = np.ascontiguousarray(stored).reshape(-1).view(np.uint8)
    offset = view_offset(v)
    return flat[offset : offset + v.type.nbytes].view(stored.dtype).reshape(v.type.shape)


def weight_data(op: Op, stored=None) -> tuple[np.ndarray, np.ndarray]:
    """(int8 data reshaped [N, -1], f32 scale per output channel N) of the quantised weight (operand 1)."""
    t = op.operands[1].type
    enc = t.encoding
    if not isinstance(enc, Quant) or t.dtype.name != "i8" or enc.zero_point != 0:
        raise CodegenError(f"{op.where()}: int8 weights must be symmetric i8 #quant (zero point 0), got {t}")
    if stored is None:
        stored = const_data(op, 1, "weight")
    data = np.asarray(stored["data"] if isinstance(stored, dict) else stored).reshape(t.shape)
    n = t.shape[0]
    if enc.axis is None:
        scale = np.full(n, enc.scale, np.float32)
    elif enc.axis % t.rank == 0:
        scale = np.asarray(stored["scale"], np.float32).reshape(n)
    else:
        raise CodegenError(f"{op.where()}: int8 weights quantised along axis {enc.axis}; kernels need axis 0")
    return data.reshape(n, -1).astype(np.int8), scale


def bias_accumulator(op: Op, index: int, acc_scale: np.ndarray) -> np.ndarray:
    """The bias operand in accumulator units (int64 per output channel; zeros without a bias):
    ``mcir.encodings.quant.bias_accumulator_units``, the rounding the interpreter applies too."""
    n = acc_scale.shape[0]
    if len(op.operands) <= index:
        return np.zeros(n, np.int64)
    return bias_accumulator_units(op.operands[index].type, const_data(op, index, "bias"), acc_scale)


def channel_table(offset: np.ndarray, acc_scale: np.ndarray, rq: Requant, out_scale: float, count: int) -> np.ndarray:
    """Per-output-channel epilogue table, three int32 arrays of ``count`` (zero padded) bytes-packed:
    ``offset``, then ``scale`` (f32 bits) and zeros for f32 results, or ``M0`` and ``shift_word``."""
    n = offset.shape[0]
    if np.any(offset > 2**31 - 1) or np.any(offset < -(2**31)):
        raise CodegenError("int8 layer: bias plus zero-point correction does not fit in int32")
    tab = np.zeros((3, count), np.int32)
    tab[0, :n] = offset
    if rq.out == "f32":
        tab[1, :n] = acc_scale.astype(np.float32).view(np.int32)
    else:
        m0, shift = fixed_point(acc_scale.astype(np.float64) / out_scale)
        tab[1, :n], tab[2, :n] = m0, shift_word(shift, rq.zero_point)
        tab[2, n:] = shift_word(np.ones(count - n, np.int32), rq.zero_point)
    return tab.reshape(-1)


def shift_word(shift: np.ndarray, zero_point: int) -> np.ndarray:
    """The requantisation's third table word: ``shift`` (1..62) in the low byte, the result's zero point
    above it, so the code reads both from data and layers differing only in scales and zero points share
    one kernel function (``requantize`` takes them apart)."""
    return (np.asarray(shift, np.int32) | np.int32(zero_point << 8)).astype(np.int32)


def blob(*parts: np.ndarray) -> np.ndarray:
    """Concatenate arrays as bytes, each part starting 64-byte aligned."""
    out = bytearray()
    for p in parts:
        out += b"\0" * (align_up(len(out), ALIGN) - len(out))
        out += np.ascontiguousarray(p).tobytes()
    return np.frombuffer(bytes(out), np.uint8)


def digest(*parts: np.ndarray) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(np.ascontiguousarray(p).tobytes())
    return h.hexdigest()[:12]


# -- the GEMM --------------------------------------------------------------------------------


@dataclass
class IntGemm:
    """One product ``C = epilogue(table.offset + A @ B)``: pointers, strides, signedness, epilogue.

    A rows are ``a_rs`` bytes apart; with ``a_kpad`` every row holds whole G-byte groups
    (zero padded past K), else the last partial group is read byte by byte. The channel
    table (see ``channel_table``) is indexed by column, or by row when ``per_row``.
    """

    m: int
    n: int
    k: int
    a: ir.Value
    a_rs: int
    a_signed: bool
    b_packed: ir.Value
    b_signed: bool
    c: ir.Value
    c_rs: int  # elements between rows of C
    table: ir.Value
    table_count: int
    rq: Requant
    per_row: bool = False
    a_kpad: bool = False
    epilogue: Callable[[Emitter, ir.Value], ir.Value] | None = None
    row_offset: ir.Value | None = None  # int32 per row, added to the accumulators too (runtime sums)
    uniform: tuple[int, int] | None = None  # (scale bits or M0, shift) of every channel, instead of the table
    a_wide: bool = False  # A already widened to int16 (the int16 path; see ``widen_a``)


def widened_bytes(m: int, k: int, isa: DotIsa) -> int:
    """Scratch for A widened to int16 (only the ``vpmaddwd`` path widens)."""
    return m * align_up(4 * math.ceil(k / 2)) if isa.kind == "madd" else 0


def widen_a(em: Emitter, g: IntGemm, dst: ir.Value) -> IntGemm:
    """For the int16 path: A's rows widened once to int16 (K padded to pairs with 0), so the
    micro-kernel broadcasts each K pair with one 4-byte load instead of rebuilding it from two
    bytes for every panel it passes. Returns the GEMM reading the widened rows."""
    b = em.b
    pairs = math.ceil(g.k / 2)
    row = align_up(4 * pairs)
    with em.loop(g.m, name="wr") as r, em.loop(2 * pairs, name="wk") as kk:
        inside = b.icmp_signed("<", kk, i64(g.k))
        at = b.select(inside, b.add(b.mul(r, i64(g.a_rs)), kk), i64(0))
        v = _ext(b, em.load(g.a, at, I8), I16, g.a_signed)
        em.store(b.select(inside, v, ir.Constant(I16, 0)), dst, b.add(b.mul(r, i64(row // 2)), kk))
    return replace(g, a=dst, a_rs=row, a_kpad=True, a_wide=True)


def emit_gemm(em: Emitter, g: IntGemm, t: IntTiling, panel_range: tuple[ir.Value, ir.Value] | None = None) -> None:
    """Panels outer, row tiles inner; static edge tiles for the last rows and columns.

    ``panel_range`` = (lo, hi) restricts it to panels ``[lo, hi)`` (one task of a threaded GEMM);
    integer arithmetic per element is the same for any split."""
    lanes = t.isa.lanes
    p_full, n_tail = divmod(g.n, t.nr)
    m_main = g.m - g.m % t.mr
    m_tail = g.m % t.mr

    def rows(panel: ir.Value, nv: int, last: int) -> None:
        if m_main:
            with em.loop(m_main, name="r", step=t.mr) as row:
                _tile(em, g, t, row, t.mr, panel, nv, last)
        if m_tail:
            _tile(em, g, t, i64(m_main), m_tail, panel, nv, last)

    b = em.b
    lo, hi = panel_range if panel_range is not None else (i64(0), i64(p_full + (n_tail > 0)))
    if p_full:
        end = b.select(b.icmp_signed("<", hi, i64(p_full)), hi, i64(p_full))
        with em.loop(end, name="p", start=lo) as p:
            rows(p, t.nv, lanes)
    if n_tail:
        nv_t = math.ceil(n_tail / lanes)
        with b.if_then(b.icmp_signed(">", hi, i64(p_full))):
            rows(i64(p_full), nv_t, n_tail - (nv_t - 1) * lanes)


def _tile(em: Emitter, g: IntGemm, t: IntTiling, row: ir.Value, mr: int, panel: ir.Value, nv: int, last: int) -> None:
    """One ``mr x nv``-vector tile of C over all of K."""
    b = em.b
    isa = t.isa
    lanes, group = isa.lanes, isa.group
    vi32 = ir.VectorType(I32, lanes)
    kg_total = math.ceil(g.k / group)
    full = kg_total if g.a_kpad else g.k // group
    b_pan = em.byte_offset(g.b_packed, b.mul(panel, i64(kg_total * t.nr * group)))
    a_row = em.byte_offset(g.a, b.mul(row, i64(g.a_rs)))
    col0 = b.mul(panel, i64(t.nr))
    tab_off = [em.byte_offset(g.table, 4 * g.table_count * i) for i in range(3)]

    def chan_vec(arr: int, r: int, j: int, ty: ir.Type) -> ir.Value:
        """A table entry for row r / vector j of the tile: per column a vector, per row a splat."""
        if arr and g.uniform is not None:
            bits = const(ir.VectorType(I32, lanes), g.uniform[arr - 1])
            return b.bitcast(bits, ir.VectorType(ty, lanes)) if ty == F32 else bits
        if g.per_row:
            return em.splat(em.load(tab_off[arr], b.add(row, i64(r)), ty), lanes)
        return em.load(tab_off[arr], b.add(col0, i64(j * lanes)), ir.VectorType(ty, lanes), align=4)

    n_acc = mr * nv
    init = [chan_vec(0, r, j, I32) for r in range(mr) for j in range(nv)]
    if g.row_offset is not None:
        rows_off = [em.splat(em.load(g.row_offset, b.add(row, i64(r)), I32), lanes) for r in range(mr)]
        init = [b.add(v, rows_off[i // nv]) for i, v in enumerate(init)]
    zero = const(vi32, 0)

    def load_b(kg: ir.Value, j: int) -> ir.Value:
        off = b.add(b.mul(kg, i64(t.nr * group)), i64(j * lanes * group))
        width = lanes * group
        v = em.load(b_pan, off, ir.VectorType(I8, width), align=min(ALIGN, width))
        if isa.kind == "madd":
            return _ext(b, v, ir.VectorType(I16, width), g.b_signed)
        if isa.kind == "generic":
            return _ext(b, v, vi32, g.b_signed)
        return v

    def load_a(r: int, kg: ir.Value | None, tail: int = 0) -> ir.Value:
        """Row r's K group ``kg`` broadcast to every lane, in the form the dot instruction takes."""
        if g.a_wide:  # a pair of int16 already
            base = b.add(i64(r * g.a_rs), b.mul(kg, i64(4)) if kg is not None else i64(full * 4))
            return b.bitcast(
                em.splat(b.load(em.byte_offset(a_row, base), typ=I32, align=4), lanes), ir.VectorType(I16, 2 * lanes)
            )
        base = b.add(i64(r * g.a_rs), b.mul(kg, i64(group)) if kg is not None else i64(full * group))
        if tail:  # the last, partial group of the row: assemble it from single bytes
            word = ir.Constant(I32, 0)
            for i in range(tail):
                byte = em.load(a_row, b.add(base, i64(i)), I8)
                if isa.kind == "madd":
                    byte = b.zext(_ext(b, byte, I16, g.a_signed), I32)
                    word = b.or_(word, b.shl(byte, ir.Constant(I32, 16 * i)))
                else:
                    word = b.or_(word, b.shl(b.zext(byte, I32), ir.Constant(I32, 8 * i)))
            raw = word
        elif group == 4:
            raw = b.load(em.byte_offset(a_row, base), typ=I32, align=1)
        elif group == 2:
            pair = b.load(em.byte_offset(a_row, base), typ=ir.VectorType(I8, 2), align=1)
            raw = b.bitcast(_ext(b, pair, ir.VectorType(I16, 2), g.a_signed), I32)
        else:
            raw = _ext(b, em.load(a_row, base, I8), I32, g.a_signed)
        v = em.splat(raw, lanes)
        if isa.kind == "vnni":
            return b.bitcast(v, ir.VectorType(I8, 4 * lanes))
        if isa.kind == "madd":
            return b.bitcast(v, ir.VectorType(I16, 2 * lanes))
        return v

    def dot(acc: ir.Value, av: ir.Value, bv: ir.Value) -> ir.Value:
        if isa.kind == "vnni":
            u, s = (bv, av) if g.a_signed else (av, bv)
            return b.call(_vnni_fn(em, lanes), [acc, u, s])
        if isa.kind == "madd":
            return b.add(acc, b.call(_madd_fn(em, lanes), [av, bv]))
        return b.add(acc, b.mul(av, bv))

    def step(kg: ir.Value | None, accs: list[ir.Value], tail: int = 0) -> list[ir.Value]:
        bv = [load_b(kg if kg is not None else i64(full), j) for j in range(nv)]
        out = list(accs)
        for r in range(mr):
            av = load_a(r, kg, tail)
            for j in range(nv):
                out[r * nv + j] = dot(accs[r * nv + j], av, bv[j])
        return out

    ku = min(t.ku, max(1, full))
    k_main = full - full % ku
    sets = [list(init)] + [[zero] * n_acc for _ in range(ku - 1)]
    if k_main:
        with em.loop_carried(k_main, [a for s in sets for a in s], name="k", step=ku) as lp:
            flat = list(lp.values)
            new: list[ir.Value] = []
            for u in range(ku):
                new += step(b.add(lp.index, i64(u)), flat[u * n_acc : (u + 1) * n_acc])
            lp.next(new)
        sets = [list(lp.results[u * n_acc : (u + 1) * n_acc]) for u in range(ku)]
    for kk in range(k_main, full):
        sets[0] = step(i64(kk), sets[0])
    if full < kg_total:
        sets[0] = step(None, sets[0], tail=g.k - full * group)
    acc = sets[0]
    for s in sets[1:]:
        acc = [b.add(x, y) for x, y in zip(acc, s)]

    for r in range(mr):
        c_off = b.add(b.mul(b.add(row, i64(r)), i64(g.c_rs)), col0)
        for j in range(nv):
            valid = lanes if j < nv - 1 else last
            off = b.add(c_off, i64(j * lanes))
            v = acc[r * nv + j]
            if g.rq.out == "f32":
                y = b.fmul(b.sitofp(v, ir.VectorType(F32, lanes)), chan_vec(1, r, j, F32))
                if g.epilogue is not None:
                    y = g.epilogue(em, y)
            else:
                y = requantize(em, v, chan_vec(1, r, j, I32), chan_vec(2, r, j, I32), g.rq)
            if valid == lanes:
                em.store(y, g.c, off)
            else:
                em.masked_store(y, g.c, off, valid)


def _ext(b: ir.IRBuilder, v: ir.Value, ty: ir.Type, signed: bool) -> ir.Value:
    return b.sext(v, ty) if signed else b.zext(v, ty)


def requantize(em: Emitter, acc: ir.Value, m0: ir.Value, word: ir.Value, rq: Requant) -> ir.Value:
    """``clamp(((acc * m0 + 2^(shift-1)) >> shift) + zero_point, lo, hi)`` as i8 (scalar or lanes; see module
    doc); ``word`` is the table's ``shift_word``: the shift in its low byte, the zero point above it."""
    b = em.b
    v64, v32, v8 = (_like(acc.type, t) for t in (I64, I32, I8))
    prod = b.mul(b.sext(acc, v64), b.sext(m0, v64))
    sh = b.zext(b.and_(word, const(v32, 0xFF)), v64)
    zp = b.sext(b.ashr(word, const(v32, 8)), v64)
    rnd = b.shl(const(v64, 1), b.sub(sh, const(v64, 1)))
    y = b.ashr(b.add(prod, rnd), sh)
    # clamp in 64 bits (a large multiplier can push y past int32), then add the zero point
    lo, hi = b.sub(const(v64, rq.lo), zp), b.sub(const(v64, rq.hi), zp)
    y = b.select(b.icmp_signed("<", y, lo), lo, y)
    y = b.select(b.icmp_signed(">", y, hi), hi, y)
    return b.trunc(b.add(y, zp), v8)


def _like(ty: ir.Type, elem: ir.Type) -> ir.Type:
    """``elem``, as a vector with as many lanes as ``ty`` if ``ty`` is a vector."""
    return ir.VectorType(elem, ty.count) if isinstance(ty, ir.VectorType) else elem


# -- linear -------------------------------------------------------------------------------------


def _linear_dims(op: Op) -> tuple[int, int, int]:
    x, w = op.operands[0].type, op.operands[1].type
    n, k = w.shape
    return x.numel // k, n, k


def _linear_plan(op: Op, target: Target) -> IntTiling:
    m, n, _ = _linear_dims(op)
    return choose_tiling(m, n, dot_isa(target, a_signed=False, b_signed=True), target)


def layer_table(op: Op, count: int, weights=None) -> np.ndarray:
    """The channel table of an int8 linear/conv2d: folded bias and zero-point offsets, scales or
    fixed-point multipliers (see ``channel_table``), ``count`` entries per array."""
    xq = activation_quant(op)
    rq = result_requant(op)
    w, sw = weight_data(op, weights)
    acc_scale = (np.float64(xq.scale) * sw.astype(np.float64)).astype(np.float32)
    offset = bias_accumulator(op, 2, acc_scale) - np.int64(xq.zero_point) * w.astype(np.int64).sum(axis=1)
    # the int32 accumulators start at offset and add at most 255·Σ|w| per channel: refuse a bias that
    # can overflow them (wrapping would be a silent wrong answer; the interpreter computes exactly)
    w64 = w.astype(np.int64).reshape(w.shape[0], -1)
    reach = np.abs(offset) + 255 * np.abs(w64).sum(axis=1)
    if np.any(reach > 2**31 - 1):
        n = int(np.argmax(reach > 2**31 - 1))
        raise CodegenError(
            f"{op.where()}: int8 layer: channel {n}'s bias ({int(offset[n])} in accumulator units) can overflow "
            "the int32 accumulator; requantise the bias (the quantize pass keeps it in range)"
        )
    out_scale = op.result.type.encoding.scale if rq.out != "f32" else 1.0
    return channel_table(offset, acc_scale, rq, out_scale, count)


def pack_weights_and_table(op: Op, index: int, data, layout: str, pack: Callable[[np.ndarray], np.ndarray], count: int):
    """The pack hook of int8 layers: weights (operand 1) in the kernel's layout, shared by every
    op with the same weights; the per-op channel table rides on the bias (operand 2), or is
    appended to the weights when there is no bias."""
    if index == 1:
        panels = pack(weight_data(op, data)[0])
        if len(op.operands) > 2:
            return layout, panels
        table = layer_table(op, count, data)
        return f"{layout}+{digest(table)}", blob(panels, table)
    if index == 2:
        table = layer_table(op, count)
        return f"i8table:{digest(table)}", table
    return None


def table_pointer(k: KernelContext, weight_bytes: int) -> ir.Value:
    """Where the channel table of this op lives (see ``pack_weights_and_table``)."""
    if len(k.args) > 2:
        return k.args[2]
    return k.em.byte_offset(k.args[1], align_up(weight_bytes, ALIGN))


def _pack_linear(op: Op, index: int, data, target: Target):
    m, n, _ = _linear_dims(op)
    t = _linear_plan(op, target)
    if gemm_amx.amx_applies(m, target):
        count = math.ceil(n / gemm_amx.TILE_COLS) * gemm_amx.TILE_COLS
        return pack_weights_and_table(op, index, data, "i8amx", gemm_amx.pack_weights, count)
    count = math.ceil(n / t.nr) * t.nr
    layout = f"i8panels:{t.isa.key}:nr{t.nr}"
    return pack_weights_and_table(op, index, data, layout, lambda w: pack_panels(w, t.nr, t.isa.group), count)


def _linear_scratch(op: Op, target: Target) -> int:
    m, n, k = _linear_dims(op)
    if gemm_amx.amx_applies(m, target):
        return gemm_amx.scratch_bytes(m, n, k)
    return widened_bytes(m, k, _linear_plan(op, target).isa)


def _amx_fallback(em: Emitter, g: IntGemm, lo: ir.Value, hi: ir.Value) -> None:
    """VNNI over the AMX weight layout (16-column panels, K padded to 64): the AMX kernel's path
    when Linux refuses the tile permission."""
    emit_gemm(em, g, IntTiling(min(g.m, 8), 1, 1, DotIsa("vnni", 16, 4)), (lo, hi))


def _linear_i8(k: KernelContext) -> None:
    """y = x @ W^T + b on u8 activations and int8 weights (VNNI / int16 / portable dot)."""
    m, n, kk = _linear_dims(k.op)
    t = _linear_plan(k.op, k.target)
    rq = result_requant(k.op)
    activation_quant(k.op)
    if gemm_amx.amx_applies(m, k.target):  # batched, on a CPU with AMX tiles
        count = math.ceil(n / gemm_amx.TILE_COLS) * gemm_amx.TILE_COLS
        table = table_pointer(k, gemm_amx.weight_bytes(n, kk))
        gemm = IntGemm(m, n, kk, k.args[0], kk, False, k.args[1], True, k.out, n, table, count, rq, epilogue=k.epilogue)
        gemm_amx.emit_linear(k.em, gemm, k.scratch, requantize, _amx_fallback)
        return
    count = math.ceil(n / t.nr) * t.nr
    table = table_pointer(k, panel_bytes(n, kk, t.nr, t.isa.group))
    gemm = IntGemm(m, n, kk, k.args[0], kk, False, k.args[1], True, k.out, n, table, count, rq, epilogue=k.epilogue)
    if t.isa.kind == "madd":
        gemm = widen_a(k.em, gemm, k.scratch)  # on the calling thread, before the split

    def body(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value) -> None:
        emit_gemm(em, replace(gemm, a=p[0], b_packed=p[1], c=p[2], table=p[3]), t, (lo, hi))

    pointers = [gemm.a, gemm.b_packed, gemm.c, gemm.table]
    parallel_for(k.em, f"linear_i8_{m}x{n}x{kk}", math.ceil(n / t.nr), m * n * kk, pointers, body)


kernel(
    "linear",
    ("u8#quant", "i8#quant", "i32#quant|f32?"),
    result=INT8_RESULT,
    constant=(1, 2),
    pack=_pack_linear,
    scratch=_linear_scratch,
    epilogue=True,
    variant=isa_name,
    scales_in_data=True,  # x's scale, s_w and the result's scale are all in the channel table
)(_linear_i8)


# -- matmul of two quantised activations (attention, quantize(attention=true)) ---------------------------


def _matmul_plan(op: Op, target: Target) -> tuple[tuple[int, ...], int, int, int, IntTiling]:
    batch, m, n, k = _matmul_dims(op)
    # B is stored as s8 (b - 128) so VNNI's u8 x s8 product applies
    return batch, m, n, k, choose_tiling(m, n, dot_isa(target, a_signed=False, b_signed=True), target)


# Scratch copies for concurrent tasks of a batched matmul
MATMUL_SLOTS = 8


def _matmul_slot_bytes(op: Op, target: Target) -> int:
    _, m, n, k, t = _matmul_plan(op, target)
    count = math.ceil(n / t.nr) * t.nr
    return align_up(
        align_up(panel_bytes(n, k, t.nr, t.isa.group))
        + align_up(4 * count)
        + align_up(4 * m)
        + widened_bytes(m, k, t.isa)
    )


def _matmul_slots(op: Op, target: Target) -> int:
    """Scratch copies (packed B, offsets, widened A): one per task when the batch is split, else one."""
    batch, m, n, k, _ = _matmul_plan(op, target)
    total = math.prod(batch) if batch else 1
    return min(MATMUL_SLOTS, total) if total > 1 and total * m * n * k >= MIN_PARALLEL_MACS else 1


def _matmul_scratch(op: Op, target: Target) -> int:
    return _matmul_slots(op, target) * _matmul_slot_bytes(op, target)


def _matmul_u8(k: KernelContext) -> None:
    """y = a @ b for u8 activations a, b (batch broadcasting), exact int32 accumulation.

    ``sum (a - za)(b - zb) = sum a (b - 128) + (128 - zb) rowsum(a) - za colsum(b) + K za zb``:
    B is packed at run time as s8 ``b - 128`` (so the u8 x s8 dot instruction applies) while its
    column sums are taken; A's row sums give the per-row term.

    Threads: batch indices are split through the parallel hook, each task with its own scratch
    copy (B packed per index; a B shared by the whole batch is packed once, before the split).
    """
    em = k.em
    batch, m, n, kk, t = _matmul_plan(k.op, k.target)
    qa, qb = activation_quant(k.op, 0), activation_quant(k.op, 1)
    rq = result_requant(k.op)
    sa = batch_strides(k.op.operands[0].type.shape, batch)
    sb = batch_strides(k.op.operands[1].type.shape, batch)
    b_rs = n if len(k.op.operands[1].type.shape) >= 2 else 1
    grp = t.isa.group
    count = math.ceil(n / t.nr) * t.nr
    slot_bytes = _matmul_slot_bytes(k.op, k.target)
    scale = np.float64(qa.scale) * np.float64(qb.scale)
    if rq.out == "f32":
        uniform = (int(np.array([scale], np.float32).view(np.int32)[0]), 0)
    else:
        m0, shift = fixed_point(np.array([scale / k.op.result.type.encoding.scale]))
        uniform = (int(m0[0]), int(shift_word(shift, rq.zero_point)[0]))
    out_size = 4 if rq.out == "f32" else 1
    kg_total = math.ceil(kk / grp)

    def layout(em: Emitter, slot_base: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(packed B, column offsets, row offsets) of one scratch copy."""
        col_off = em.byte_offset(slot_base, align_up(panel_bytes(n, kk, t.nr, grp)))
        return slot_base, col_off, em.byte_offset(col_off, align_up(4 * count))

    def pack_b(em: Emitter, src: ir.Value, packed: ir.Value, col_off: ir.Value) -> None:
        """Panels of s8 (b - 128), zero padded, and the column offsets -za*colsum + K*za*zb."""
        b = em.b
        base = kk * qa.zero_point * qb.zero_point
        with em.loop(count, name="cz") as j:
            em.store(ir.Constant(I32, base), col_off, j)
        with em.loop(kk, name="ck") as r, em.loop(n, name="cn") as c:
            v = b.zext(em.load(src, b.add(b.mul(r, i64(b_rs)), c), I8), I32)
            prev = em.load(col_off, c, I32)
            em.store(b.sub(prev, b.mul(v, ir.Constant(I32, qa.zero_point))), col_off, c)
        with em.loop(count // t.nr, name="bp") as p, em.loop(kg_total, name="bk") as kg:
            dst0 = b.add(b.mul(p, i64(kg_total * t.nr * grp)), b.mul(kg, i64(t.nr * grp)))
            with em.loop(t.nr, name="bl") as lane:
                col = b.add(b.mul(p, i64(t.nr)), lane)
                for u in range(grp):
                    row = b.add(b.mul(kg, i64(grp)), i64(u))
                    inside = b.and_(b.icmp_signed("<", col, i64(n)), b.icmp_signed("<", row, i64(kk)))
                    at = b.select(inside, b.add(b.mul(row, i64(b_rs)), col), i64(0))
                    v = b.xor(em.load(src, at, I8), ir.Constant(I8, 0x80))
                    em.store(
                        b.select(inside, v, ir.Constant(I8, 0)),
                        packed,
                        b.add(dst0, b.add(b.mul(lane, i64(grp)), i64(u))),
                    )

    def one(em: Emitter, a: ir.Value, out: ir.Value, packed: ir.Value, col_off: ir.Value, row_off: ir.Value) -> None:
        """One product into ``out`` with B already packed (``packed``, ``col_off``)."""
        b = em.b
        coef = 128 - qb.zero_point
        with em.loop(m, name="ra") as r:
            with em.loop_carried(kk, [ir.Constant(I32, 0)], name="rk") as lp:
                v = b.zext(em.load(a, b.add(b.mul(r, i64(kk)), lp.index), I8), I32)
                lp.next([b.add(lp.values[0], v)])
            em.store(b.mul(lp.results[0], ir.Constant(I32, coef)), row_off, r)
        gemm = IntGemm(
            m, n, kk, a, kk, False, packed, True, out, n, col_off, count, rq,
            epilogue=k.epilogue, row_offset=row_off, uniform=uniform,
        )  # fmt: skip
        if t.isa.kind == "madd":
            gemm = widen_a(em, gemm, em.byte_offset(row_off, align_up(4 * m)))
        emit_gemm(em, gemm, t)

    if not batch:
        packed, col_off, row_off = layout(em, k.scratch)
        pack_b(em, k.args[1], packed, col_off)
        one(em, k.args[0], k.out, packed, col_off, row_off)
        return
    shared_b = not any(sb)
    if shared_b:  # packed once, into copy 0, and read by every task
        pack_b(em, k.args[1], *layout(em, k.scratch)[:2])
    total = math.prod(batch)

    def products(em: Emitter, p: list[ir.Value], lo: ir.Value, hi: ir.Value, slot: ir.Value) -> None:
        """Batch indices ``[lo, hi)`` in scratch copy ``slot`` (B's packing in copy 0 when shared)."""
        b = em.b
        a_ptr, b_ptr, out_ptr, scratch = p
        mine = layout(em, em.byte_offset(scratch, b.mul(slot, i64(slot_bytes))))
        packed, col_off = layout(em, scratch)[:2] if shared_b else mine[:2]
        with em.loop(hi, name="bt", start=lo) as i:
            a_off, b_off = em.batch_offsets(i, batch, [sa, sb])
            out = em.byte_offset(out_ptr, b.mul(i, i64(m * n * out_size)))
            if not shared_b:
                pack_b(em, em.byte_offset(b_ptr, b_off), packed, col_off)
            one(em, em.byte_offset(a_ptr, a_off), out, packed, col_off, mine[2])

    macs = total * m * n * kk
    slots = _matmul_slots(k.op, k.target)
    parallel_for(em, "matmul_u8", total, macs, [k.args[0], k.args[1], k.out, k.scratch], products, slots=slots)


kernel("matmul", ("u8#quant", "u8#quant"), result=INT8_RESULT, scratch=_matmul_scratch, epilogue=True)(_matmul_u8)
