"""Sparse f32 kernels: ``linear`` and ``conv2d`` with ``#csr`` / ``#nm`` f32 weights.

``y = x @ W^T + b`` where W keeps only its non-zeros. The IR's storage is repacked at
compile time (``sparse_pack``) into the layout the kernel streams:

* **batch-1 GEMV on AVX-512 / AVX2** (``window`` layout): 64 rows at a time share one
  window of 32 columns of x (two vector loads); per 16 rows, one index vector (u8 offsets
  into the window), one ``vpermi2ps`` that brings each lane its x, one FMA (AVX2: 32 rows,
  16 columns, 8 lanes, two ``vpermps`` and a blend). At 90 % sparsity
  the weight stream is ~0.9 bytes per dense weight (dense f32: 4) and a window serves
  about 40 non-zeros, so the kernel runs 3-4x faster than the dense GEMV it replaces
  (measurements in ``mcir.analysis.sparse_cost`` and ``docs/benchmarks.md``).
* **batched** (``rows`` layout, CSR): x is transposed into scratch, ``x^T[K][M]``, and
  each non-zero ``W[n, k]`` is broadcast against row k of x^T, so one load of the weight
  serves every column of the batch (two FMAs per non-zero for 32 columns); the
  ``y^T[N][M]`` result is transposed back in 16 x 16 register tiles. A 1x1 convolution
  is exactly this product with x^T = the image itself (``[C][H*W]``) and y^T = the
  output image, so it needs no transposes. Targets without AVX2 (x86-64-v2, aarch64) also
  use this kernel for batch 1 (correct everywhere, tuned for AVX-512).

Convolutions of any kernel size, stride, padding and dilation (groups=1) are the same
product per image with X^T built by im2col into scratch (``emit_patches``, ``[C*kh*kw][OH*OW]``
in f32); grouped convolutions with sparse weights raise a CodegenError. Results match the
interpreter within the backend's f32 contract (sums in a different order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir

from mcir.codegen.emit import F32, I8, I32, I64, Emitter, const, i64, vec
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.kernels import sparse_pack as sp
from mcir.codegen.kernels.conv import geometry, tap_range
from mcir.codegen.memory_plan import align_up
from mcir.codegen.target import Target
from mcir.errors import CodegenError
from mcir.ir import Op

SPARSE_F32 = "f32#csr|f32#nm"

#: rows of x from which the batched kernel beats one window GEMV per row: 1024 x 1024 at 10 %
#: density, one GEMV 9.3 us per row, the batched kernel ~56 us for up to 32 rows (bench, Zen 4)
BATCH_MIN = 6


@dataclass(frozen=True)
class WindowShape:
    """Geometry of the ``window`` GEMV on a target: lanes per vector, window width, row vectors per
    window, and the permute that fetches x (``vpermi2ps`` on AVX-512, two ``vpermps`` on AVX2)."""

    lanes: int
    width: int
    group: int
    isa: str

    @property
    def rows(self) -> int:
        return self.lanes * self.group

    @property
    def key(self) -> str:
        return f"window{self.lanes}x{self.width}x{self.group}"

    def permute(self, em: Emitter, lo: ir.Value, hi: ir.Value, index: ir.Value) -> ir.Value:
        """Lane i of the result is ``(lo ++ hi)[index[i]]`` (index < 2 * lanes)."""
        vt, it = lo.type, index.type
        if self.isa == "avx512":
            fn = em.intrinsic("llvm.x86.avx512.vpermi2var.ps.512", [], vt, [vt, it, vt])
            return em.b.call(fn, [lo, index, hi])
        fn = em.intrinsic("llvm.x86.avx2.permps", [], vt, [vt, it])  # uses the low 3 bits
        upper = em.b.icmp_unsigned("!=", em.b.and_(index, const(it, self.lanes)), const(it, 0))
        return em.b.select(upper, em.b.call(fn, [hi, index]), em.b.call(fn, [lo, index]))


def window_shape(target: Target) -> WindowShape | None:
    """The window GEMV needs a variable permute of f32 vectors: AVX-512F (16 lanes, a window of
    32 columns) or AVX2 (8 lanes, 16 columns); None elsewhere (the batched kernel serves)."""
    if not target.is_x86:
        return None
    if target.vector_bits == 512 and target.has("avx512f"):
        return WindowShape(16, 32, 4, "avx512")
    if target.vector_bits >= 256 and target.has("avx2"):
        return WindowShape(8, 16, 4, "avx2")
    return None


def lanes_of(target: Target) -> int:
    """f32 lanes the batched kernels vectorise over (a power of two)."""
    return max(4, target.f32_lanes)


# -- shapes of the two ops --------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    """One sparse product ``Y^T[N][M] = W[N][K] @ X^T[K][M]``, repeated ``images`` times.

    ``linear``: images 1, X = x viewed as [M, K]. ``conv2d`` 1x1: one product per image with
    M = H*W pixels, X^T = the image [C][H*W] and Y^T = the output image [O][H*W].
    """

    m: int
    n: int
    k: int
    images: int
    conv: bool
    #: elements of one input image (C*H*W) for a convolution
    x_image: int = 0
    #: the conv's geometry (``conv.geometry``) when X^T is built by im2col; None when the image is X^T
    patches: dict[str, int] | None = None
    #: output rows whose patches are built and multiplied at a time (``patch_rows``)
    block_rows: int = 0

    @property
    def block_columns(self) -> int:
        """Columns of one block of patches (output pixels of ``block_rows`` output rows)."""
        return self.block_rows * self.patches["ow"] if self.patches is not None else self.m


#: bytes of f32 patches one block may take: the block stays in L2 while every non-zero streams its
#: row. One block for the whole image put rows OH*OW*4 bytes apart (12.5 KB for 56x56), so each
#: non-zero's load hit another page and the 3x3 conv at 10 % density ran ~5x slower (measured)
PATCH_BLOCK_BYTES = 256 * 1024


def patch_rows(k: int, oh: int, ow: int) -> int:
    """Output rows per block of patches: as many as fit ``PATCH_BLOCK_BYTES`` (at least one)."""
    return max(1, min(oh, PATCH_BLOCK_BYTES // (4 * k * ow)))


def product(op: Op) -> Product:
    """The product an op computes; CodegenError for grouped convolutions.

    A convolution is ``Y^T[O][OH*OW] = W[O][C*kh*kw] @ X^T[C*kh*kw][OH*OW]`` per image, with
    the rows of W in torch's (c, i, j) order. A 1x1, stride-1, unpadded convolution reads the
    image as X^T; every other one builds X^T by im2col (``emit_patches``).
    """
    w = op.operands[1].type
    n, k = sp.rows_of(w)
    if op.name == "linear":
        return Product(op.operands[0].type.numel // max(k, 1), n, k, 1, False)
    g = geometry(op)
    if g["groups"] != 1:
        raise CodegenError(
            f"no native kernel for {op.where()}: sparse convolution weights need groups=1 (got groups "
            f"{g['groups']}); prune it with storage=dense or run it with mcir.interpret"
        )
    pointwise = (g["kh"], g["kw"], g["sh"], g["sw"], g["ph"], g["pw"]) == (1, 1, 1, 1, 0, 0)
    if pointwise:
        return Product(g["oh"] * g["ow"], n, k, g["n"], True, g["c"] * g["h"] * g["w"])
    rows = patch_rows(k, g["oh"], g["ow"])
    return Product(g["oh"] * g["ow"], n, k, g["n"], True, g["c"] * g["h"] * g["w"], g, rows)


def _variant(target: Target) -> str:
    """The code paths ``target`` gets, for the kernel table."""
    shape = window_shape(target)
    return f"batch 1: window {shape.isa}; batched: csr" if shape is not None else "csr"


def uses_window(p: Product, target: Target) -> bool:
    return not p.conv and p.m < BATCH_MIN and window_shape(target) is not None


# -- compile-time packing and scratch ---------------------------------------------------------------


def _pack_f32(op: Op, index: int, data, target: Target):
    if index != 1:
        return None
    p = product(op)
    w = sp.dense_f32(op.operands[1].type, data)
    shape = window_shape(target)
    if uses_window(p, target):
        return shape.key, sp.pack_window(w, shape.lanes, shape.width, shape.group)
    return "rows", sp.pack_rows(w)


def _scratch_f32(op: Op, target: Target) -> int:
    p = product(op)
    if uses_window(p, target):
        return align_up((p.k + window_shape(target).width) * 4)
    if p.conv:
        return align_up(p.k * p.block_columns * 4) if p.patches is not None else 0
    mpad = _round(p.m, lanes_of(target))
    return align_up(p.k * mpad * 4) + align_up(p.n * mpad * 4)


def _round(m: int, lanes: int) -> int:
    return max(lanes, -(-m // lanes) * lanes)


# -- emission helpers (shared with sparse_i8) ----------------------------------------------------------


def field(em: Emitter, blob: ir.Value, i: int) -> ir.Value:
    """Header field ``i`` of a packed layout (i64)."""
    return em.load(blob, i, I64, align=8)


def part_ptr(em: Emitter, blob: ir.Value, i: int) -> ir.Value:
    """Pointer to the part whose byte offset is header field ``i``."""
    return em.byte_offset(blob, field(em, blob, i))


def tiles(em: Emitter, count: int, size: int, body: Callable[[ir.Value, int], None], name: str) -> None:
    """``body(start, width)`` for consecutive tiles of ``size`` covering ``range(count)``: a loop over
    the full tiles, then the partial last one (its width is static, so edges get static masks)."""
    full, rest = divmod(count, size)
    if full == 1:
        body(i64(0), size)
    elif full > 1:
        with em.loop(full, name=name) as t:
            body(em.b.mul(t, i64(size)), size)
    if rest:
        body(i64(full * size), rest)


def load_part(em: Emitter, ptr: ir.Value, index: ir.Value, ty: ir.VectorType, lanes: int) -> ir.Value:
    """A vector load of ``lanes`` valid lanes (zeros beyond): full or masked."""
    return em.load(ptr, index, ty) if lanes >= ty.count else em.masked_load(ptr, index, ty, lanes)


def store_part(em: Emitter, v: ir.Value, ptr: ir.Value, index: ir.Value, lanes: int) -> None:
    """Store the first ``lanes`` lanes of ``v``: full, masked, or a single scalar."""
    if lanes >= v.type.count:
        em.store(v, ptr, index)
    elif lanes == 1:
        # LLVM 22 miscompiles a one-lane llvm.masked.store of a truncated vector (it stores the
        # untruncated i32 lane: 4 bytes for a u8 result), so store the scalar
        em.store(em.b.extract_element(v, ir.Constant(I32, 0)), ptr, index)
    else:
        em.masked_store(v, ptr, index, lanes)


def transpose(em: Emitter, rows: list[ir.Value]) -> list[ir.Value]:
    """Transpose an L x L tile held as L vectors (L a power of two): log2(L) rounds of two-input
    shuffles that swap the off-diagonal b x b blocks (b = L/2, ..., 1)."""
    n = len(rows)
    rows = list(rows)
    half = n // 2
    while half:
        lo = [k if not k & half else n + k - half for k in range(n)]
        hi = [k + half if not k & half else n + k for k in range(n)]
        for i in range(n):
            if i & half:
                continue
            a, c = rows[i], rows[i + half]
            rows[i] = em.b.shuffle_vector(a, c, ir.Constant(ir.VectorType(I32, n), lo))
            rows[i + half] = em.b.shuffle_vector(a, c, ir.Constant(ir.VectorType(I32, n), hi))
        half //= 2
    return rows


def copy_padded(em: Emitter, src: ir.Value, dst: ir.Value, count: int, pad: int, elem: ir.Type, lanes: int) -> None:
    """``dst[0:count] = src[0:count]``, ``dst[count:count+pad] = 0`` (vector loop, masked edge)."""
    vt = vec(elem, lanes)

    def body(start: ir.Value, width: int) -> None:
        store_part(em, load_part(em, src, start, vt, width), dst, start, width)

    tiles(em, count, lanes, body, "cp")
    zero = ir.Constant(vt, None)

    def zeros(start: ir.Value, width: int) -> None:
        store_part(em, zero, dst, em.b.add(start, i64(count)), width)

    tiles(em, pad, lanes, zeros, "cz")


def transpose_in(
    em: Emitter, src: ir.Value, rows: int, cols: int, dst: ir.Value, ld: int, lanes: int, load_row=None
) -> None:
    """``dst[c * ld + r] = src[r * cols + c]`` for a row-major [rows][cols] source, in L x L tiles.

    ``dst`` rows are ``ld >= round_up(rows, L)`` wide; lanes past ``rows`` are zero. ``load_row(em,
    ptr, index, lanes)`` loads ``lanes`` source elements as an f32-or-i32 vector of L lanes.
    """
    vt = vec(F32, lanes)
    load_row = load_row or (lambda em, p, i, n: load_part(em, p, i, vt, n))

    def tile(r0: ir.Value, nr: int) -> None:
        def inner(c0: ir.Value, nc: int) -> None:
            b = em.b
            block = []
            for i in range(lanes):
                if i < nr:
                    block.append(load_row(em, src, b.add(b.mul(b.add(r0, i64(i)), i64(cols)), c0), nc))
                else:
                    block.append(None)
            zero = ir.Constant(next(v for v in block if v is not None).type, None)
            out = transpose(em, [v if v is not None else zero for v in block])
            for j in range(nc):
                em.store(out[j], dst, b.add(b.mul(b.add(c0, i64(j)), i64(ld)), r0))

        tiles(em, cols, lanes, inner, "tc")

    tiles(em, rows, lanes, tile, "tr")


def transpose_out(
    em: Emitter, yt: ir.Value, ld: int, m: int, n: int, lanes: int, store: Callable[[ir.Value, ir.Value, int], None]
) -> None:
    """``y[M][N]`` from ``yt[N][ld]`` (f32) in L x L tiles: ``store(vector, index, live)`` writes
    ``y[r][c0 : c0 + live]`` (index = r * N + c0) for every row r of every tile."""
    b = em.b
    vt = vec(F32, lanes)

    def m_tile(m0: ir.Value, nm: int) -> None:
        def n_tile(n0: ir.Value, nn: int) -> None:
            block = [
                em.load(yt, b.add(b.mul(b.add(n0, i64(i)), i64(ld)), m0), vt) if i < nn else ir.Constant(vt, None)
                for i in range(lanes)
            ]
            cols = transpose(em, block)
            for j in range(nm):
                store(cols[j], b.add(b.mul(b.add(m0, i64(j)), i64(n)), n0), nn)

        tiles(em, n, lanes, n_tile, "tn")

    tiles(em, m, lanes, m_tile, "tm")


# -- im2col for sparse convolutions ---------------------------------------------------------------------


def emit_patches(
    em: Emitter,
    x: ir.Value,
    g: dict[str, int],
    dst: ir.Value,
    ld: int,
    elem: ir.Type,
    to_f32: Callable[[ir.Value], ir.Value],
    fill: float,
    oy0: ir.Value | int = 0,
    rows: int | None = None,
) -> None:
    """X^T of output rows ``[oy0, oy0 + rows)`` of one image as f32: ``dst[kidx * ld + p] =
    x[c, iy, ix]`` for kidx = (c, i, j) and p = (oy - oy0) * OW + ox, ``fill`` where the tap falls
    in the padding; columns ``[rows * OW, ld)`` are 0.

    ``x`` holds the image's ``elem`` values (f32, or u8 converted by ``to_f32``). For an int8
    conv, ``fill`` is the input zero point: a padding tap then decodes to the real 0, which is
    what the compile-time folding of ``z_x * sum(W)`` into each row's offset assumes. Which
    output columns of a tap read inside the image is static (``tap_range``), so the copy is a
    unit- (or stride-) step loop without per-element tests, edges filled apart.
    """
    b = em.b
    rows = g["oh"] if rows is None else rows
    ow, sw, m = g["ow"], g["sw"], rows * g["ow"]
    oy0 = i64(oy0) if isinstance(oy0, int) else oy0
    pad = const(F32, fill)

    def run(lo: int, hi: int, at: ir.Value, value: Callable[[ir.Value], ir.Value]) -> None:
        if hi > lo:
            with em.loop(hi, name="px", start=lo) as ox:
                em.store(value(ox), dst, b.add(at, ox))

    with em.loop(g["c"], name="pc") as c, em.loop(g["kh"], name="pi") as i, em.loop(rows, name="py") as r:
        oy = b.add(oy0, r)
        iy = b.add(b.mul(oy, i64(g["sh"])), b.sub(b.mul(i, i64(g["dh"])), i64(g["ph"])))
        src = b.mul(b.add(b.mul(c, i64(g["h"])), iy), i64(g["w"]))
        for j in range(g["kw"]):
            kidx = b.add(b.mul(b.add(b.mul(c, i64(g["kh"])), i), i64(g["kw"])), i64(j))
            at = b.add(b.mul(kidx, i64(ld)), b.mul(r, i64(ow)))
            off = j * g["dw"] - g["pw"]
            lo, hi = tap_range(ow, sw, off, g["w"])

            def tap(ox: ir.Value, off: int = off) -> ir.Value:
                return to_f32(em.load(x, b.add(src, b.add(b.mul(ox, i64(sw)), i64(off))), elem))

            with b.if_else(em.in_range(iy, g["h"])) as (inside, outside):
                with inside:
                    run(0, lo, at, lambda ox: pad)
                    run(lo, hi, at, tap)
                    run(hi, ow, at, lambda ox: pad)
                with outside:
                    run(0, ow, at, lambda ox: pad)
    if ld > m:
        zero = const(F32, 0.0)
        with em.loop(g["c"] * g["kh"] * g["kw"], name="pz") as r:
            run(m, ld, b.mul(r, i64(ld)), lambda ox: zero)


# -- the batched product (rows layout) -----------------------------------------------------------------


def emit_rows_product(
    em: Emitter,
    blob: ir.Value,
    n: int,
    xt: ir.Value,
    ldx: int,
    yt: ir.Value,
    ldy: int,
    m: int,
    lanes: int,
    bias: ir.Value | None,
    epilogue: Callable[[Emitter, ir.Value], ir.Value] | None,
) -> None:
    """``yt[r*ldy + c] = epilogue(sum_e vals[e] * xt[cols[e]*ldx + c] + bias[r])`` for c < m."""
    b = em.b
    rowptr = part_ptr(em, blob, 0)
    cols = part_ptr(em, blob, 1)
    vals = part_ptr(em, blob, 2)
    vt = vec(F32, lanes)
    chunk = 2 * lanes  # columns of one register tile: 2 vectors x 2 accumulator sets

    def columns(c0: ir.Value, width: int) -> None:
        nv = -(-width // lanes)
        widths = [min(lanes, width - j * lanes) for j in range(nv)]
        with em.loop(n, name="row") as r:
            e0 = b.sext(em.load(rowptr, r, I32), I64)
            e1 = b.sext(em.load(rowptr, b.add(r, i64(1)), I32), I64)
            zero = const(vt, 0.0)
            with em.loop_carried(e1, [zero] * (2 * nv), name="e", start=e0) as lp:
                accs = list(lp.values)
                e = lp.index
                v = em.splat(em.load(vals, e, F32), lanes)
                row = b.add(b.mul(b.sext(em.load(cols, e, I32), I64), i64(ldx)), c0)
                new = [
                    em.fma(v, load_part(em, xt, b.add(row, i64(j * lanes)), vt, widths[j]), accs[j]) for j in range(nv)
                ]
                # two accumulator sets, swapped every non-zero: twice the FMAs in flight
                lp.next(accs[nv:] + new)
            acc = lp.results
            out = b.add(b.mul(r, i64(ldy)), c0)
            for j in range(nv):
                y = b.fadd(acc[j], acc[nv + j], flags=("reassoc", "contract"))
                if bias is not None:
                    y = b.fadd(y, em.splat(em.load(bias, r, F32), lanes))
                if epilogue is not None:
                    y = epilogue(em, y)
                store_part(em, y, yt, b.add(out, i64(j * lanes)), widths[j])

    tiles(em, m, chunk, columns, "mc")


# -- the window GEMV -------------------------------------------------------------------------------------


def emit_window_gemv(
    em: Emitter,
    blob: ir.Value,
    shape: WindowShape,
    n: int,
    xs: ir.Value,
    finish: Callable[[ir.Value, ir.Value, int], None],
    first_part: int = 1,
    values: ir.Type = F32,
    run: int | None = None,
) -> None:
    """``finish(acc, row, live)`` for every ``lanes`` rows of ``W @ xs`` from a window blob whose
    parts start at header field ``first_part``; ``xs`` holds x (f32) followed by zeros.

    ``values`` is the stored value type (f32, or i8 converted to f32). With ``run``, windows are
    summed in f32 for ``run`` windows at a time and then added to int32 accumulators: exact for
    integer operands whose ``run`` products stay below 2^24 in sum; ``acc`` is then int32.
    """
    b = em.b
    lanes, group = shape.lanes, shape.group
    vt, it, bt = vec(F32, lanes), vec(I32, lanes), vec(I8, lanes)
    wins = part_ptr(em, blob, first_part)
    starts = part_ptr(em, blob, first_part + 1)
    index = part_ptr(em, blob, first_part + 2)
    vals = part_ptr(em, blob, first_part + 3)
    nacc = 2  # accumulators per vector of rows, rotated every window: covers the FMA latency

    def windows(w0: ir.Value, w1: ir.Value) -> list[ir.Value]:
        """f32 sums of windows [w0, w1), one vector per row vector of the group."""
        zero = const(vt, 0.0)
        with em.loop_carried(w1, [zero] * (group * nacc), name="w", start=w0) as lp:
            accs = list(lp.values)
            w = lp.index
            c = b.sext(em.load(starts, w, I32), I64)
            lo = em.load(xs, c, vt)
            hi = em.load(xs, b.add(c, i64(lanes)), vt)
            base = b.mul(w, i64(shape.rows))
            nxt = []
            for s in range(group):
                off = b.add(base, i64(s * lanes))
                xv = shape.permute(em, lo, hi, b.zext(em.load(index, off, bt, align=1), it))
                if values == F32:
                    wv = em.load(vals, off, vt, align=4 * lanes)
                else:
                    wv = b.sitofp(em.load(vals, off, bt, align=lanes), vt)
                a = accs[s * nacc : (s + 1) * nacc]
                nxt += a[1:] + [em.fma(wv, xv, a[0])]
            lp.next(nxt)
        sums = []
        for s in range(group):
            v = lp.results[s * nacc]
            for extra in lp.results[s * nacc + 1 : (s + 1) * nacc]:
                v = b.fadd(v, extra, flags=("reassoc", "contract"))
            sums.append(v)
        return sums

    def one_group(g: ir.Value, valid: int) -> None:
        w0 = em.load(wins, g, I64, align=8)
        w1 = em.load(wins, b.add(g, i64(1)), I64, align=8)
        if run is None:
            acc = windows(w0, w1)
        else:
            runs = b.udiv(b.add(b.sub(w1, w0), i64(run - 1)), i64(run))
            with em.loop_carried(runs, [ir.Constant(it, None)] * group, name="run") as lr:
                r0 = b.add(w0, b.mul(lr.index, i64(run)))
                r1 = b.add(r0, i64(run))
                sums = windows(r0, b.select(b.icmp_signed("<", r1, w1), r1, w1))
                lr.next([b.add(a, b.fptosi(v, it)) for a, v in zip(lr.values, sums)])
            acc = lr.results
        for s in range(group):
            live = min(lanes, valid - s * lanes)
            if live <= 0:
                break
            finish(acc[s], b.add(b.mul(g, i64(shape.rows)), i64(s * lanes)), live)

    full, rest = divmod(n, shape.rows)
    if full:
        with em.loop(full, name="grp") as g:
            one_group(g, shape.rows)
    if rest:
        one_group(i64(full), rest)


# -- the generators ---------------------------------------------------------------------------------------


def _sparse_f32(k: KernelContext) -> None:
    _sparse_f32_product(k)
    p = product(k.op)
    if p.conv:
        nan_samples_with_non_finite_input(k.em, k.args[0], k.out, p.images, p.x_image, p.n * p.m)
    else:
        nan_samples_with_non_finite_input(k.em, k.args[0], k.out, p.m, p.k, p.n)


def nan_samples_with_non_finite_input(
    em: Emitter, x: ir.Value, out: ir.Value, samples: int, x_per: int, y_per: int
) -> None:
    """Set every result of a sample (a row of x, an image) whose input holds an inf or NaN to NaN.

    A sparse kernel skips the absent weights, but not uniformly (a window's padding entries multiply
    0 by some x), so 0·inf would give NaN in some outputs and ±inf in others depending on the packing.
    The defined result (docs/ir.md, the interpreter does the same) is NaN for the whole sample. The
    check is one integer max over the input's exponent bits (vectorised), a few % of the product.
    """
    b = em.b
    exp_mask = const(I32, 0x7F800000)
    with em.loop(samples, name="nf.s") as s:
        xs = em.gep(x, b.mul(s, i64(x_per)), F32)
        with em.loop_carried(x_per, [const(I32, 0)], name="nf.k") as lp:
            bits = b.and_(b.bitcast(em.load(xs, lp.index, F32), I32), exp_mask)
            (hi,) = lp.values
            lp.next([b.select(b.icmp_unsigned(">", bits, hi), bits, hi)])
        (worst,) = lp.results
        with b.if_then(b.icmp_unsigned("==", worst, exp_mask)):
            ys = em.gep(out, b.mul(s, i64(y_per)), F32)
            with em.loop(y_per, name="nf.y") as j:
                em.store(const(F32, float("nan")), ys, j)


def _sparse_f32_product(k: KernelContext) -> None:
    em, b = k.em, k.em.b
    p = product(k.op)
    bias = k.args[2] if len(k.args) > 2 else None
    x, w, out = k.args[0], k.args[1], k.out
    shape = window_shape(k.target)
    if uses_window(p, k.target):
        xs = k.scratch
        vt = vec(F32, shape.lanes)
        for r in range(p.m):
            copy_padded(em, em.gep(x, i64(r * p.k), F32), xs, p.k, shape.width, F32, shape.lanes)
            y = em.gep(out, i64(r * p.n), F32)

            def finish(v: ir.Value, row: ir.Value, live: int, y=y) -> None:
                if bias is not None:
                    v = b.fadd(v, load_part(em, bias, row, vt, live))
                store_part(em, k.apply_epilogue(v), y, row, live)

            emit_window_gemv(em, w, shape, p.n, xs, finish)
        return
    lanes = lanes_of(k.target)
    if p.conv:
        hw = p.m
        with em.loop(p.images, name="img") as img:
            xi = em.gep(x, b.mul(img, i64(p.x_image)), F32)
            yi = em.gep(out, b.mul(img, i64(p.n * hw)), F32)
            if p.patches is None:
                emit_rows_product(em, w, p.n, xi, hw, yi, hw, hw, lanes, bias, k.epilogue)
            else:
                ow, ld = p.patches["ow"], p.block_columns

                def block(oy0: ir.Value, rows: int, xi=xi, yi=yi) -> None:
                    emit_patches(em, xi, p.patches, k.scratch, ld, F32, lambda v: v, 0.0, oy0, rows)
                    yb = em.gep(yi, b.mul(oy0, i64(ow)), F32)
                    emit_rows_product(em, w, p.n, k.scratch, ld, yb, hw, rows * ow, lanes, bias, k.epilogue)

                tiles(em, p.patches["oh"], p.block_rows, block, "blk")
        return
    mpad = _round(p.m, lanes)
    xt = k.scratch
    yt = em.byte_offset(k.scratch, align_up(p.k * mpad * 4))
    transpose_in(em, x, p.m, p.k, xt, mpad, lanes)
    emit_rows_product(em, w, p.n, xt, mpad, yt, mpad, p.m, lanes, bias, k.epilogue)
    transpose_out(em, yt, mpad, p.m, p.n, lanes, lambda v, index, live: store_part(em, v, out, index, live))


def _doc(fn: Callable[[KernelContext], None], text: str) -> Callable[[KernelContext], None]:
    def gen(k: KernelContext) -> None:
        fn(k)

    gen.__name__ = fn.__name__ + "_" + text.split()[0]
    gen.__doc__ = text
    return gen


kernel(
    "linear",
    ("f32", SPARSE_F32, "f32?"),
    constant=(1,),
    variant=_variant,
    pack=_pack_f32,
    scratch=_scratch_f32,
    epilogue=True,
)(_doc(_sparse_f32, "linear y = x @ W^T + b with a #csr/#nm f32 weight: window GEMV (batch 1) or batched CSR"))
kernel(
    "conv2d",
    ("f32", SPARSE_F32, "f32?"),
    constant=(1,),
    variant=_variant,
    pack=_pack_f32,
    scratch=_scratch_f32,
    epilogue=True,
)(_doc(_sparse_f32, "conv2d with a #csr/#nm f32 weight: per image, im2col (unless 1x1) and one batched sparse product"))
