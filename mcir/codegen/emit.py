"""A thin layer over llvmlite's IRBuilder for writing kernels: counted loops with
loop-carried values, typed pointer arithmetic, constants that splat to vectors,
and the intrinsics the kernels use (fma, masked loads/stores, min/max).

Kernels are written against ``Emitter`` so that the same code builds scalar IR (for
LLVM's loop vectoriser) or explicit vector IR (for the GEMM micro-kernels).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import llvmlite.ir as ir

from mcir.dtypes import DType
from mcir.errors import CodegenError

F32 = ir.FloatType()
F64 = ir.DoubleType()
I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()

# fast-math flags for sums whose order we choose freely (GEMM, reductions): lets LLVM
# vectorise reductions and fuse multiply-adds; no nnan/ninf, so masks with -inf stay right
REASSOC = ("reassoc", "contract")

_STORAGE = {
    "f32": F32,
    "i64": I64,
    "i32": I32,
    "i16": I16,
    "i8": I8,
    "u8": I8,
    "bool": I8,  # bool is one byte holding 0 or 1, as in numpy and C
}


def storage_type(dt: DType) -> ir.Type:
    """The LLVM type of one stored element of ``dt``."""
    try:
        return _STORAGE[dt.name]
    except KeyError:
        raise CodegenError(
            f"dtype {dt} has no native storage in mcir's backend yet (supported: {', '.join(_STORAGE)})"
        ) from None


def is_signed(dt: DType) -> bool:
    return dt.kind == "int"


def vec(elem: ir.Type, lanes: int) -> ir.Type:
    return elem if lanes == 1 else ir.VectorType(elem, lanes)


def const(ty: ir.Type, value: float | int | bool) -> ir.Constant:
    """A constant of scalar or vector type ``ty`` (vectors get the value in every lane)."""
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [ir.Constant(ty.element, value)] * ty.count)
    return ir.Constant(ty, value)


def i64(value: int) -> ir.Constant:
    return ir.Constant(I64, int(value))


class Emitter:
    """Builds kernel IR at the builder's insertion point."""

    def __init__(self, builder: ir.IRBuilder, module: ir.Module) -> None:
        self.b = builder
        self.module = module

    # -- pointers and memory ----------------------------------------------------------
    def gep(self, ptr: ir.Value, index: ir.Value | int, elem: ir.Type) -> ir.Value:
        """``ptr + index`` elements of type ``elem``."""
        if isinstance(index, int):
            if index == 0:
                return ptr
            index = i64(index)
        return self.b.gep(ptr, [index], inbounds=True, source_etype=elem)

    def byte_offset(self, ptr: ir.Value, offset: int | ir.Value) -> ir.Value:
        return self.gep(ptr, offset, I8)

    def load(self, ptr: ir.Value, index: ir.Value | int, ty: ir.Type, align: int | None = None) -> ir.Value:
        """Load a scalar or vector at ``ptr[index]`` (index counts scalar elements).

        Vector loads get ``align`` of one element unless told otherwise: LLVM would
        otherwise assume the vector's natural alignment and emit aligned moves that
        fault on user buffers (numpy guarantees 16 bytes, not 64).
        """
        elem = ty.element if isinstance(ty, ir.VectorType) else ty
        p = self.gep(ptr, index, elem)
        return self.b.load(p, typ=ty, align=align or _align(elem))

    def store(self, value: ir.Value, ptr: ir.Value, index: ir.Value | int, align: int | None = None) -> None:
        ty = value.type
        elem = ty.element if isinstance(ty, ir.VectorType) else ty
        self.b.store(value, self.gep(ptr, index, elem), align=align or _align(elem))

    def batch_offsets(self, i: ir.Value, batch: tuple[int, ...], strides: list[list[int]]) -> list[ir.Value]:
        """Element offsets of several operands for flat batch index ``i``: ``i`` is unravelled over
        ``batch`` (row-major) and each operand's per-axis ``strides`` (0 where it broadcasts) applied."""
        b = self.b
        offs = [ir.Constant(I64, 0)] * len(strides)
        rem = i
        for d in range(len(batch) - 1, -1, -1):
            idx = b.urem(rem, ir.Constant(I64, batch[d])) if d else rem
            rem = b.udiv(rem, ir.Constant(I64, batch[d])) if d else rem
            offs = [b.add(o, b.mul(idx, ir.Constant(I64, st[d]))) for o, st in zip(offs, strides)]
        return offs

    def in_range(self, v: ir.Value, hi: int) -> ir.Value:
        """``0 <= v < hi`` for an i64 index (a bounds test, e.g. a window position inside the input)."""
        b = self.b
        return b.and_(b.icmp_signed(">=", v, ir.Constant(I64, 0)), b.icmp_signed("<", v, ir.Constant(I64, hi)))

    def i64_table(self, values: list[int], name: str) -> ir.GlobalVariable:
        """A small internal constant i64 array (per-position window bounds, counts, divisors)."""
        ty = ir.ArrayType(I64, len(values))
        gv = ir.GlobalVariable(self.module, ty, self.module.get_unique_name(name))
        gv.linkage = "internal"
        gv.global_constant = True
        gv.initializer = ir.Constant(ty, values)
        return gv

    def masked_store(self, value: ir.Value, ptr: ir.Value, index: ir.Value | int, lanes: int) -> None:
        """Store the first ``lanes`` lanes of a vector (a partial tile at a matrix edge)."""
        ty = value.type
        if lanes == 1:
            # a scalar store: LLVM 22 miscompiles a one-lane masked store of a truncated vector
            # (it writes the untruncated i32, so a u8 result clobbered 3 more bytes)
            self.b.store(self.b.extract_element(value, ir.Constant(I32, 0)), self.gep(ptr, index, ty.element))
            return
        mask = ir.Constant(ir.VectorType(I1, ty.count), [ir.Constant(I1, int(i < lanes)) for i in range(ty.count)])
        fn = self.intrinsic("llvm.masked.store", [ty, PTR], VOID, [ty, PTR, I32, mask.type])
        self.b.call(fn, [value, self.gep(ptr, index, ty.element), ir.Constant(I32, _align(ty.element)), mask])

    def masked_load(
        self, ptr: ir.Value, index: ir.Value | int, ty: ir.VectorType, lanes: int, fill: float = 0.0
    ) -> ir.Value:
        """Load the first ``lanes`` lanes of a vector (float or integer), ``fill`` elsewhere (no read past
        the end)."""
        mask = ir.Constant(ir.VectorType(I1, ty.count), [ir.Constant(I1, int(i < lanes)) for i in range(ty.count)])
        fn = self.intrinsic("llvm.masked.load", [ty, PTR], ty, [PTR, I32, mask.type, ty])
        passthru = ir.Constant(ty, None) if fill == 0 else const(ty, fill)  # None: zeros of any element type
        return self.b.call(fn, [self.gep(ptr, index, ty.element), ir.Constant(I32, _align(ty.element)), mask, passthru])

    # -- arithmetic ---------------------------------------------------------------------
    def intrinsic(self, name: str, overloads: Sequence[ir.Type], ret: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
        """Declare (once) the LLVM intrinsic ``name`` overloaded on ``overloads``."""
        full = name + "".join("." + _mangle(t) for t in overloads)
        fn = self.module.globals.get(full)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, list(args)), full)
        return fn

    def call_unary(self, name: str, x: ir.Value) -> ir.Value:
        """``llvm.NAME`` on a float scalar or vector (fabs, floor, sqrt, rint...)."""
        return self.b.call(self.intrinsic(f"llvm.{name}", [x.type], x.type, [x.type]), [x])

    def call_binary(self, name: str, x: ir.Value, y: ir.Value) -> ir.Value:
        return self.b.call(self.intrinsic(f"llvm.{name}", [x.type], x.type, [x.type, x.type]), [x, y])

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        """a * b + c: one fused instruction where the CPU has FMA, else a multiply and an add.

        ``llvm.fmuladd``, not ``llvm.fma``: on a CPU without FMA (x86-64-v2, generic ARM) the
        latter becomes a call to libm's ``fmaf``, and the object must stay freestanding.
        """
        t = a.type
        return self.b.call(self.intrinsic("llvm.fmuladd", [t], t, [t, t, t]), [a, b, c])

    def prefetch(self, ptr: ir.Value, level: int = 2, write: bool = False) -> None:
        """Prefetch the cache line at ``ptr`` for reading (``level`` 3: into L1, 2: L2, 1: L3), or with
        ``write`` for writing (``prefetchw`` on x86: the line arrives owned, ready for the store).

        A hint only: it never faults, but the kernels keep ``ptr`` inside their buffers anyway."""
        fn = self.intrinsic("llvm.prefetch", [PTR], VOID, [PTR, I32, I32, I32])
        self.b.call(fn, [ptr, ir.Constant(I32, int(write)), ir.Constant(I32, level), ir.Constant(I32, 1)])

    def splat(self, x: ir.Value, lanes: int) -> ir.Value:
        """A vector with ``x`` in every lane."""
        if lanes == 1:
            return x
        vt = ir.VectorType(x.type, lanes)
        v = self.b.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(I32, 0))
        return self.b.shuffle_vector(
            v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(I32, lanes), [0] * lanes)
        )

    def hsum(self, v: ir.Value) -> ir.Value:
        """Horizontal sum of a float vector (any order)."""
        if not isinstance(v.type, ir.VectorType):
            return v
        fn = self.intrinsic("llvm.vector.reduce.fadd", [v.type], v.type.element, [v.type.element, v.type])
        return self.b.call(fn, [ir.Constant(v.type.element, -0.0), v], fastmath=REASSOC)

    def fmax(self, a: ir.Value, b: ir.Value) -> ir.Value:
        """max(a, b), NaN if either is NaN (numpy's maximum)."""
        return self.call_binary("maximum", a, b)

    def fmin(self, a: ir.Value, b: ir.Value) -> ir.Value:
        """min(a, b), NaN if either is NaN (numpy's minimum)."""
        return self.call_binary("minimum", a, b)

    # -- control flow -------------------------------------------------------------------
    @contextmanager
    def loop(
        self, count: int | ir.Value, name: str = "i", start: int | ir.Value = 0, step: int = 1
    ) -> Iterator[ir.Value]:
        """``for (i = start; i < count; i += step)`` with an i64 counter."""
        with self.loop_carried(count, [], name=name, start=start, step=step) as lp:
            yield lp.index
            lp.next([])

    def loop_carried(
        self, count: int | ir.Value, init: Sequence[ir.Value], name: str = "i", start: int | ir.Value = 0, step: int = 1
    ) -> CarriedLoop:
        """A counted loop whose body updates values carried to the next iteration.

        Usage::

            with em.loop_carried(K, [zero, zero], name="k") as lp:
                a, b = lp.values
                lp.next([a2, b2])
            a_final, b_final = lp.results
        """
        return CarriedLoop(self, count, init, name, start, step)


class CarriedLoop:
    """See ``Emitter.loop_carried``."""

    def __init__(self, em: Emitter, count, init, name, start, step) -> None:
        self.em = em
        self.count = i64(count) if isinstance(count, int) else count
        self.init = list(init)
        self.name = name
        self.start = i64(start) if isinstance(start, int) else start
        self.step = step
        self._next: list[ir.Value] | None = None

    def __enter__(self) -> CarriedLoop:
        b = self.em.b
        pre = b.block
        self.head = b.append_basic_block(f"{self.name}.head")
        body = b.append_basic_block(f"{self.name}.body")
        self.exit = b.append_basic_block(f"{self.name}.end")
        b.branch(self.head)
        b.position_at_end(self.head)
        self.index = b.phi(I64, self.name)
        self.index.add_incoming(self.start, pre)
        self.values = []
        for k, v in enumerate(self.init):
            phi = b.phi(v.type, f"{self.name}.c{k}")
            phi.add_incoming(v, pre)
            self.values.append(phi)
        b.cbranch(b.icmp_signed("<", self.index, self.count), body, self.exit)
        b.position_at_end(body)
        return self

    def next(self, values: Sequence[ir.Value]) -> None:
        """The carried values for the next iteration (call once, at the end of the body)."""
        if len(values) != len(self.init):
            raise CodegenError("internal error: loop_carried.next got the wrong number of values")
        self._next = list(values)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return
        b = self.em.b
        if self._next is None:
            raise CodegenError("internal error: loop body did not call next()")
        latch = b.block
        self.index.add_incoming(b.add(self.index, i64(self.step), flags=("nsw", "nuw")), latch)
        for phi, v in zip(self.values, self._next):
            phi.add_incoming(v, latch)
        b.branch(self.head)
        b.position_at_end(self.exit)
        # the header dominates the exit, so its phis are the final values
        self.results = self.values


def _align(elem: ir.Type) -> int:
    if isinstance(elem, ir.IntType):
        return max(1, elem.width // 8)
    if isinstance(elem, ir.DoubleType):
        return 8
    return 4


def _mangle(t: ir.Type) -> str:
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{_mangle(t.element)}"
    if isinstance(t, ir.PointerType):
        return "p0"
    if isinstance(t, ir.FloatType):
        return "f32"
    if isinstance(t, ir.DoubleType):
        return "f64"
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    raise CodegenError(f"internal error: cannot mangle intrinsic type {t}")
