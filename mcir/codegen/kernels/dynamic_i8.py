"""Dynamic quantisation: ``quantize`` to ``u8 #dynamic`` and ``linear`` of such activations
with int8 (``i8 #quant``) or int4 (``i8 #int4``) weights, f32 out.

``quantize`` computes each sample's range every call (``lo = min(x, 0)``, ``hi = max(x, 0)``,
``scale = (hi - lo) / 255``, ``zp = rint(-lo / scale)``) and writes ``q = clamp(rint(x / scale)
+ zp, 0, 255)`` with the interpreter's f32 operations (a division, round-half-even by the
``1.5·2^23`` trick), so q, scale and zp are bit-identical to ``Dynamic.encode``.

``linear`` multiplies u8 activations with s8 weights by ``vpdpbusd`` (VNNI; 64 products per
instruction into 16 int32 lanes = 16 output rows) and corrects the zero point with the
weights' row sums, per group of K::

    y[m, n] = s_x[m] · Σ_g s_w[n, g] · (Σ_{k∈g} q_x[m,k] q_w[n,k] - zp[m] · Σ_{k∈g} q_w[n,k]) + b[n]

int8 weights are one group (per-channel scales); int4 weights are stored offset by 8 (0..15,
two per byte) so a nibble masked out of a byte is a valid s8 operand, and ``8 · Σ q_x`` is
subtracted per group. Weights are packed at compile time in panels of 16 rows:
``[N/16][K/4][16][4]`` bytes (int8) or ``[N/16][K/8][16][4]`` bytes of nibble pairs (int4:
the low nibbles are K group 2t, the high ones 2t + 1), then ``wsum`` i32 and ``scale`` f32,
both ``[N/16][groups][16]``. The integer sums are exact; the f32 result is within the
backend's ``1e-5 · max|reference|``. Targets without AVX-512 VNNI run the same dot product as
widened int32 multiplies (correct, not tuned).
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from mcir.codegen.emit import F32, I8, I32, Emitter, const, i64
from mcir.codegen.kernels import KernelContext, kernel
from mcir.codegen.memory_plan import align_up
from mcir.codegen.target import Target
from mcir.encodings import Codebook, Dynamic, Int4, Quant
from mcir.errors import CodegenError
from mcir.ir import Op
from mcir.types import TensorType

LANES = 16
V16F = ir.VectorType(F32, LANES)
V16I = ir.VectorType(I32, LANES)
V64B = ir.VectorType(I8, 64)
MAGIC = 12582912.0  # 1.5 * 2^23: (v + MAGIC) - MAGIC rounds |v| < 2^22 half to even
MT = 4  # activation rows sharing one weight load


# -- quantize f32 -> u8 #dynamic ----------------------------------------------------------------------


def _rint(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    m = const(v.type, MAGIC)
    return b.fsub(b.fadd(v, m), m)


@kernel("quantize", ("f32",), result="u8#dynamic")
def quantize_dynamic(k: KernelContext) -> None:
    """Per-sample range, scale and zero point, then q = clamp(rint(x / scale) + zp, 0, 255)."""
    em, b = k.em, k.em.b
    m, per = Dynamic.slices(k.result_type)
    x, out = k.args[0], k.out
    scales, zps, data = out, em.byte_offset(out, 4 * m), em.byte_offset(out, 8 * m)
    full, tail = divmod(per, LANES)

    def chunk(base: ir.Value, j: ir.Value, live: int) -> ir.Value:
        off = b.add(base, b.mul(j, i64(LANES)))
        return em.load(x, off, V16F) if live == LANES else em.masked_load(x, off, V16F, live)

    with em.loop(m, name="s") as s:
        base = b.mul(s, i64(per))
        zero = const(V16F, 0.0)  # starting at 0 puts 0 inside [lo, hi]
        with em.loop_carried(full, [zero, zero], name="r") as lp:
            v = chunk(base, lp.index, LANES)
            lp.next([em.fmin(lp.values[0], v), em.fmax(lp.values[1], v)])
        lo, hi = lp.results
        if tail:
            v = chunk(base, i64(full), tail)  # masked lanes read 0.0: harmless for min/max with 0
            lo, hi = em.fmin(lo, v), em.fmax(hi, v)
        lo = _reduce(em, "fminimum", lo)
        hi = _reduce(em, "fmaximum", hi)
        scale = b.fdiv(b.fsub(hi, lo), const(F32, 255.0))
        scale = b.select(b.fcmp_ordered(">", scale, const(F32, 0.0)), scale, const(F32, 1.0))
        zp = _clamp(em, _rint(b, b.fdiv(b.fneg(lo), scale)))
        em.store(scale, scales, s)
        em.store(b.fptosi(zp, I32), zps, s)
        sv, zv = em.splat(scale, LANES), em.splat(zp, LANES)

        def store(j: ir.Value, live: int) -> None:
            q = _clamp(em, b.fadd(_rint(b, b.fdiv(chunk(base, j, live), sv)), zv))
            q8 = b.trunc(b.fptoui(q, V16I), ir.VectorType(I8, LANES))
            off = b.add(base, b.mul(j, i64(LANES)))
            if live == LANES:
                em.store(q8, data, off)
            else:
                em.masked_store(q8, data, off, live)

        with em.loop(full, name="q") as j:
            store(j, LANES)
        if tail:
            store(i64(full), tail)


def _reduce(em: Emitter, name: str, v: ir.Value) -> ir.Value:
    fn = em.intrinsic(f"llvm.vector.reduce.{name}", [v.type], F32, [v.type])
    return em.b.call(fn, [v])


def _clamp(em: Emitter, v: ir.Value) -> ir.Value:
    return em.fmin(em.fmax(v, const(v.type, 0.0)), const(v.type, 255.0))


# -- linear: u8 #dynamic x (i8 #quant | i8 #int4) -> f32 ------------------------------------------------


class _Geometry:
    """Padded sizes of one weight: Kp (K padded), Gp (group in padded K), groups, panels."""

    def __init__(self, w: TensorType) -> None:
        self.n = w.shape[0]
        self.k = int(np.prod(w.shape[1:]))
        self.int4 = isinstance(w.encoding, Int4)  # nibbles stored as q + 8
        self.lut = isinstance(w.encoding, Codebook)  # nibbles are indices into an s8 table (vpermb)
        self.nibbles = self.int4 or self.lut
        if self.int4:
            g = w.encoding.group_size(w)
            self.groups = -(-self.k // g)
            self.gp = g if w.encoding.group else -(-self.k // 8) * 8
        else:
            self.groups = 1
            self.gp = -(-self.k // (8 if self.lut else 4)) * (8 if self.lut else 4)
        self.kp = self.groups * self.gp
        self.panels = -(-self.n // LANES)

    @property
    def code_bytes(self) -> int:
        return self.panels * self.kp * LANES // (2 if self.nibbles else 1)

    @property
    def blob_bytes(self) -> int:
        return self.code_bytes + 2 * 4 * self.panels * self.groups * LANES + (64 if self.lut else 0)


def _weights(t: TensorType, stored) -> tuple[np.ndarray, np.ndarray]:
    """(q int64[N, K], scale f32[N, groups])."""
    n = t.shape[0]
    if isinstance(t.encoding, Int4):
        return t.encoding.values(t, stored).astype(np.int64), np.asarray(stored["scale"], np.float32)
    enc: Quant = t.encoding
    data = stored["data"] if isinstance(stored, dict) else stored
    q = np.asarray(data).reshape(n, -1).astype(np.int64)
    if enc.axis is not None:
        if enc.axis != 0:
            raise CodegenError(f"dynamic int8 linear needs weights quantised along axis 0, not {enc.axis}")
        return q, np.asarray(stored["scale"], np.float32).reshape(n, 1)
    if enc.zero_point != 0:
        raise CodegenError("dynamic int8 linear needs symmetric weights (zero_point 0)")
    return q, np.full((n, 1), enc.scale, np.float32)


def int8_codebook(t: TensorType, stored) -> tuple[np.ndarray, float]:
    """A ``#codebook`` whose centroids lie on an int8 grid ``s·q`` (``cluster(activations=dynamic)``):
    (q int64[2^B], s). CodegenError otherwise: the VNNI kernel multiplies the integers q."""
    enc: Codebook = t.encoding
    if enc.scope != "layer" or enc.bits > 4:
        raise CodegenError(
            f"dynamic int8 linear reads #codebook weights with one table of <= 16 entries (scope=layer, bits<=4), "
            f"not {enc}"
        )
    c = np.asarray(stored["centroids"], np.float64)[0]
    amax = float(np.abs(c).max())
    s = np.float32(amax / 127 if amax > 0 else 1.0)
    q = np.rint(c / s)
    if np.abs(c / s - q).max() > 1e-3 or np.abs(q).max() > 127:
        raise CodegenError(
            f"{t}: its centroids are not multiples of one scale (cluster with activations=dynamic puts them on an "
            "int8 grid); run the float-activation kernel instead"
        )
    return q.astype(np.int64), float(s)


def pack_dynamic(t: TensorType, stored) -> np.ndarray:
    """The blob the dynamic linear kernel streams (see the module docstring)."""
    geo = _Geometry(t)
    table = None
    if geo.lut:
        qtab, s = int8_codebook(t, stored)
        idx = t.encoding.indices(t, stored).astype(np.int64)
        q, scale = qtab[idx], np.full((geo.n, 1), s, np.float32)
        codes_of = np.zeros((geo.panels * LANES, geo.kp), np.int64)
        codes_of[: geo.n, : geo.k] = idx
        table = np.tile(np.pad(qtab, (0, 16 - qtab.size)), 4).astype(np.int8).view(np.uint8)
    else:
        q, scale = _weights(t, stored)
    npad = geo.panels * LANES
    qp = np.zeros((npad, geo.kp), np.int64)
    gsize = t.encoding.group_size(t) if geo.int4 and t.encoding.group else geo.k
    for g in range(geo.groups):  # group g of a padded row starts at g·Gp
        lo, hi = g * gsize, min((g + 1) * gsize, geo.k)
        qp[: geo.n, g * geo.gp : g * geo.gp + hi - lo] = q[:, lo:hi]
    wsum = qp.reshape(npad, geo.groups, geo.gp).sum(axis=2)  # [Npad, groups]
    sc = np.zeros((npad, geo.groups), np.float32)
    sc[: geo.n] = scale
    tiles = qp.reshape(geo.panels, LANES, geo.kp // 4, 4).transpose(0, 2, 1, 3)  # [P][K/4][16][4]
    if geo.lut:  # the nibbles are the indices
        ti = codes_of.reshape(geo.panels, LANES, geo.kp // 4, 4).transpose(0, 2, 1, 3)
        nib = ti.reshape(geo.panels, geo.kp // 8, 2, LANES, 4)
        codes = (nib[:, :, 0] | (nib[:, :, 1] << 4)).astype(np.uint8)
    elif geo.int4:
        nib = (tiles + 8).reshape(geo.panels, geo.kp // 8, 2, LANES, 4)
        codes = (nib[:, :, 0] | (nib[:, :, 1] << 4)).astype(np.uint8)
    else:
        codes = tiles.astype(np.int8).view(np.uint8)
    parts = [
        codes.reshape(-1),
        wsum.reshape(geo.panels, LANES, geo.groups).transpose(0, 2, 1).astype(np.int32).reshape(-1).view(np.uint8),
        sc.reshape(geo.panels, LANES, geo.groups).transpose(0, 2, 1).reshape(-1).view(np.uint8),
    ] + ([table] if table is not None else [])
    blob = np.concatenate(parts)
    if blob.size != geo.blob_bytes:
        raise CodegenError(f"internal error: dynamic blob of {t} has {blob.size} bytes, expected {geo.blob_bytes}")
    return blob


def _pack(op: Op, index: int, data, target: Target):
    if index != 1:
        return None
    t = op.operands[1].type
    if isinstance(t.encoding, Codebook) and not target.has("avx512vbmi"):
        raise CodegenError(f"{op.where()}: a #codebook weight with dynamic u8 activations needs AVX-512 VBMI (vpermb)")
    try:
        return "dyn16", pack_dynamic(t, data)
    except CodegenError as e:  # the packer knows the weight, not the layer: name it
        raise CodegenError(f"{op.where()}: {e}") from None


def _rows(op: Op) -> tuple[int, int]:
    x = op.operands[0].type
    geo = _Geometry(op.operands[1].type)
    return x.numel // max(geo.k, 1), geo.kp


def _scratch(op: Op, target: Target) -> int:
    m, kp = _rows(op)
    groups = _Geometry(op.operands[1].type).groups
    return align_up(m * kp) + align_up(4 * m * groups)


def _dot(em: Emitter, vnni: bool, acc: ir.Value, x4: ir.Value, w: ir.Value) -> ir.Value:
    """acc[l] += Σ_j u8(x4[4l + j]) · s8(w[4l + j])."""
    b = em.b
    if vnni:
        fn = em.intrinsic("llvm.x86.avx512.vpdpbusd.512", [], V16I, [V16I, V64B, V64B])
        return b.call(fn, [acc, x4, w])
    v64 = ir.VectorType(I32, 64)
    prod = b.mul(b.zext(x4, v64), b.sext(w, v64))
    for j in range(4):
        part = b.shuffle_vector(
            prod, ir.Constant(v64, None), ir.Constant(V16I, [4 * lane + j for lane in range(LANES)])
        )
        acc = b.add(acc, part)
    return acc


def _linear_dynamic(k: KernelContext) -> None:
    """linear with run-time quantised u8 activations and int8/int4 weights: vpdpbusd, f32 out."""
    em, b = k.em, k.em.b
    xt, wt = k.operand_types[0], k.operand_types[1]
    geo = _Geometry(wt)
    m, kp = _rows(k.op)
    slices = xt.shape[0]
    per_slice = m // slices
    vnni = k.target.has("avx512vnni")
    xbase, w, y = k.args[0], k.args[1], k.out
    bias = k.args[2] if len(k.args) > 2 else None
    xs_scale, xs_zp, xq = xbase, em.byte_offset(xbase, 4 * slices), em.byte_offset(xbase, 8 * slices)
    xs = k.scratch
    xsum = em.byte_offset(xs, align_up(m * kp))
    wsum_ptr = em.byte_offset(w, geo.code_bytes)
    wscale_ptr = em.byte_offset(w, geo.code_bytes + 4 * geo.panels * geo.groups * LANES)
    permb = table = None
    if geo.lut:
        if not k.target.has("avx512vbmi"):
            raise CodegenError(
                f"{k.op.where()}: a #codebook weight with dynamic u8 activations needs AVX-512 VBMI (vpermb)"
            )
        permb = em.intrinsic("llvm.x86.avx512.permvar.qi.512", [], V64B, [V64B, V64B])
        table = em.load(em.byte_offset(w, geo.blob_bytes - 64), 0, V64B)

    # activations into scratch: rows padded with zeros to Kp (groups at g·Gp), and Σ q_x per group
    gsize = wt.encoding.group_size(wt) if geo.int4 and wt.encoding.group else geo.k
    with em.loop(m, name="xm") as r:
        with em.loop(kp, name="xz") as j:
            em.store(const(I8, 0), xs, b.add(b.mul(r, i64(kp)), j))
        for g in range(geo.groups):
            lo, hi = g * gsize, min((g + 1) * gsize, geo.k)
            with em.loop_carried(hi - lo, [const(I32, 0)], name="xc") as lp:
                v = em.load(xq, b.add(b.mul(r, i64(geo.k)), b.add(lp.index, i64(lo))), I8)
                em.store(v, xs, b.add(b.mul(r, i64(kp)), b.add(lp.index, i64(g * geo.gp))))
                lp.next([b.add(lp.values[0], b.zext(v, I32))])
            em.store(lp.results[0], xsum, b.add(b.mul(r, i64(geo.groups)), i64(g)))

    def bcast(row: ir.Value, kk: ir.Value) -> ir.Value:
        v = em.load(em.byte_offset(xs, b.add(b.mul(row, i64(kp)), kk)), 0, I32, align=1)
        return b.bitcast(em.splat(v, LANES), V64B)

    def tile(p: ir.Value, m0: ir.Value, mt: int) -> None:
        rows = [b.add(m0, i64(r)) for r in range(mt)]
        sl = [b.udiv(row, i64(per_slice)) if per_slice > 1 else row for row in rows]
        zp = [em.splat(em.load(xs_zp, s, I32), LANES) for s in sl]
        with em.loop_carried(geo.groups, [const(V16F, 0.0)] * mt, name="g") as lg:
            g = lg.index
            steps = geo.gp // (8 if geo.nibbles else 4)
            chunk0 = b.add(b.mul(p, i64(kp // (8 if geo.nibbles else 4))), b.mul(g, i64(steps)))
            # vpdpbusd has a latency of ~5 cycles: na independent sums per row, rotated every step
            na = {1: 4, 2: 2}.get(mt, 1)
            parts = 2 if geo.nibbles else 1
            with em.loop_carried(steps, [const(V16I, 0)] * (mt * na), name="t") as lt:
                wv = em.load(w, b.mul(b.add(chunk0, lt.index), i64(64)), V64B)
                k0 = b.add(b.mul(g, i64(geo.gp)), b.mul(lt.index, i64(8 if geo.nibbles else 4)))
                accs = list(lt.values)
                if geo.nibbles:  # low nibbles: K group 2t, high nibbles: 2t + 1
                    halves = [b.and_(wv, const(V64B, 15)), b.lshr(wv, const(V64B, 4))]
                    if geo.lut:  # 64 table lookups in one vpermb
                        halves = [b.call(permb, [table, h]) for h in halves]
                else:
                    halves = [wv]
                for r in range(mt):
                    for h, wh in enumerate(halves):
                        a = r * na + h % na
                        accs[a] = _dot(em, vnni, accs[a], bcast(rows[r], b.add(k0, i64(4 * h))), wh)
                shift = parts % na
                lt.next(
                    [v for r in range(mt) for v in accs[r * na + shift : (r + 1) * na] + accs[r * na : r * na + shift]]
                )
            sums = []
            for r in range(mt):
                part = lt.results[r * na : (r + 1) * na]
                while len(part) > 1:
                    part = [b.add(part[i], part[i + 1]) for i in range(0, len(part), 2)]
                sums.append(part[0])
            gi = b.mul(b.add(b.mul(p, i64(geo.groups)), g), i64(LANES))
            ws = em.load(wsum_ptr, gi, V16I)
            sc = em.load(wscale_ptr, gi, V16F)
            out = []
            for r in range(mt):
                c = b.sub(sums[r], b.mul(zp[r], ws))
                if geo.int4:  # the +8 offset of the stored nibbles
                    sx = em.load(xsum, b.add(b.mul(rows[r], i64(geo.groups)), g), I32)
                    c = b.sub(c, em.splat(b.mul(sx, const(I32, 8)), LANES))
                out.append(em.fma(b.sitofp(c, V16F), sc, lg.values[r]))
            lg.next(out)
        live = geo.n - LANES * (geo.panels - 1)
        for r in range(mt):
            v = b.fmul(lg.results[r], em.splat(em.load(xs_scale, sl[r], F32), LANES))
            n0 = b.mul(p, i64(LANES))
            last = b.icmp_unsigned("==", p, i64(geo.panels - 1))
            _store_panel(em, k, v, bias, y, b.add(b.mul(rows[r], i64(geo.n)), n0), n0, last, live)

    with em.loop(geo.panels, name="p") as p:
        full = m // MT
        if full:
            with em.loop(full * MT, name="m", step=MT) as m0:
                tile(p, m0, MT)
        if m % MT:
            tile(p, i64(full * MT), m % MT)


def _store_panel(em: Emitter, k: KernelContext, v, bias, y, off, n0, last, live: int) -> None:
    """Add the bias, apply the epilogue and store 16 outputs (``live`` of them in the last panel)."""
    b = em.b
    if live == LANES:
        if bias is not None:
            v = b.fadd(v, em.load(bias, n0, V16F))
        em.store(k.apply_epilogue(v), y, off)
        return
    with b.if_else(last) as (then, otherwise):
        with then:
            u = b.fadd(v, em.masked_load(bias, n0, V16F, live)) if bias is not None else v
            em.masked_store(k.apply_epilogue(u), y, off, live)
        with otherwise:
            u = b.fadd(v, em.load(bias, n0, V16F)) if bias is not None else v
            em.store(k.apply_epilogue(u), y, off)


for _w in ("i8#quant", "i8#int4", "f32#codebook"):
    kernel(
        "linear", ("u8#dynamic", _w, "f32?"), pack=_pack, scratch=_scratch, epilogue=True, result="f32", constant=(1,)
    )(_linear_dynamic)
