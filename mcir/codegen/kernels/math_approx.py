"""mcir's own transcendental functions, so the emitted object needs no libm.

Each function builds branch-free IR (selects, integer bit tricks, polynomials) on a
float scalar or vector, so LLVM's loop vectoriser turns the scalar form into AVX-512
/ AVX2 / NEON code and the GEMM epilogues can call it on explicit vectors. Rounding
uses the 1.5*2^23 trick instead of ``llvm.rint``, which becomes a call to ``rintf``
on CPUs without SSE4.1.

Maximum errors measured on 2^20-point grids against float64 numpy (the tests in
``tests/codegen/test_math_approx.py`` assert about twice these):

=========  =======================  ==============================================
function   inputs                   measured max error
=========  =======================  ==============================================
exp        [-103.9, 88.72]          1.0 ulp (relative 8.2e-8) for normal results;
                                    0 below -103.97, inf above 88.72
log        [1e-37, 3.4e38]          7.6e-8 relative (3.9e-8 absolute near 1)
tanh       [-12, 12]                7.7e-8 absolute; 6.4e-8 relative for |x| < 0.5
sigmoid    [-12, 12]                8.9e-8 absolute
erf        [-12, 12]                2.9e-7 absolute; 1.7e-7 relative for |x| < 0.5
=========  =======================  ==============================================

Special values follow IEEE/numpy: NaN propagates, exp(-inf) = 0, log(0) = -inf,
log(x < 0) = NaN, tanh/erf(+-inf) = +-1. exp computes inputs below -103.97 (result 0) as exp(0)
before selecting 0: scaling them down would pass through denormals, which cost a microcode
assist per lane on x86 (a padding-masked softmax row of BERT-tiny ran 2.9x slower).
"""

from __future__ import annotations

import llvmlite.ir as ir

from mcir.codegen.emit import F32, I32, Emitter, const, vec

LOG2E = 1.4426950408889634
LN2_HI = 0.693359375  # ln 2 split so that n * LN2_HI is exact for |n| < 2^9
LN2_LO = -2.12194440e-4
ROUND_MAGIC = 12582912.0  # 1.5 * 2^23: adding and subtracting it rounds to nearest integer


def _c(x: ir.Value, v: float) -> ir.Constant:
    return const(x.type, v)


def _int_type(x: ir.Value) -> ir.Type:
    return vec(I32, x.type.count) if isinstance(x.type, ir.VectorType) else I32


def _poly(em: Emitter, x: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
    """Horner: coeffs[0] * x^(n-1) + ... + coeffs[-1]."""
    acc = _c(x, coeffs[0])
    for c in coeffs[1:]:
        acc = em.fma(acc, x, _c(x, c))
    return acc


def rint(em: Emitter, x: ir.Value) -> ir.Value:
    """Round to nearest even, valid for |x| < 2^22 (enough for exponent arguments)."""
    b = em.b
    return b.fsub(b.fadd(x, _c(x, ROUND_MAGIC)), _c(x, ROUND_MAGIC))


def _pow2i(em: Emitter, n: ir.Value) -> ir.Value:
    """2^n as a float for integer n (i32) in [-126, 127]."""
    b = em.b
    bits = b.shl(b.add(n, const(n.type, 127)), const(n.type, 23))
    return b.bitcast(bits, vec(F32, n.type.count) if isinstance(n.type, ir.VectorType) else F32)


def exp(em: Emitter, x: ir.Value) -> ir.Value:
    """e^x: range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, scale by 2^n."""
    b = em.b
    xc = em.fmin(em.fmax(x, _c(x, -104.0)), _c(x, 88.8))
    # inputs whose result is 0 anyway (the -inf of masked attention scores) are computed as exp(0):
    # scaling down to 2^-150 would make denormals, which cost a microcode assist per lane on x86
    xc = b.select(b.fcmp_ordered("<", x, _c(x, -103.972)), _c(x, 0.0), xc)
    n = rint(em, b.fmul(xc, _c(x, LOG2E)))
    r = em.fma(n, _c(x, -LN2_HI), xc)
    r = em.fma(n, _c(x, -LN2_LO), r)
    p = _poly(
        em, r, (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
    )
    r2 = b.fmul(r, r)
    y = b.fadd(em.fma(p, r2, r), _c(x, 1.0))
    # 2^n in two halves so that n in [-150, 128] never leaves the normal range
    ni = b.fptosi(n, _int_type(x))
    n1 = b.ashr(ni, const(ni.type, 1))
    n2 = b.sub(ni, n1)
    y = b.fmul(b.fmul(y, _pow2i(em, n1)), _pow2i(em, n2))
    y = b.select(b.fcmp_ordered(">", x, _c(x, 88.72283)), _c(x, float("inf")), y)
    y = b.select(b.fcmp_ordered("<", x, _c(x, -103.972)), _c(x, 0.0), y)
    return b.select(b.fcmp_unordered("uno", x, x), x, y)


def log(em: Emitter, x: ir.Value) -> ir.Value:
    """ln x: x = m 2^e with m in [sqrt(1/2), sqrt 2), polynomial in m - 1 (Cephes logf)."""
    b = em.b
    it = _int_type(x)
    # scale subnormals into the normal range first
    tiny = b.fcmp_ordered("<", x, _c(x, 1.17549435e-38))
    xs = b.select(tiny, b.fmul(x, _c(x, 8388608.0)), x)
    bits = b.bitcast(xs, it)
    e = b.sub(b.ashr(bits, const(it, 23)), const(it, 126))
    e = b.select(tiny, b.sub(e, const(it, 23)), e)
    m = b.bitcast(b.or_(b.and_(bits, const(it, 0x007FFFFF)), const(it, 0x3F000000)), x.type)  # in [0.5, 1)
    small = b.fcmp_ordered("<", m, _c(x, 0.70710678118654752))
    e = b.select(small, b.sub(e, const(it, 1)), e)
    m = b.select(small, b.fadd(m, m), m)
    f = b.fsub(m, _c(x, 1.0))
    ef = b.sitofp(e, x.type)
    z = b.fmul(f, f)
    p = _poly(
        em,
        f,
        (
            7.0376836292e-2,
            -1.1514610310e-1,
            1.1676998740e-1,
            -1.2420140846e-1,
            1.4249322787e-1,
            -1.6668057665e-1,
            2.0000714765e-1,
            -2.4999993993e-1,
            3.3333331174e-1,
        ),
    )
    y = b.fmul(b.fmul(p, z), f)
    y = em.fma(ef, _c(x, LN2_LO), y)
    y = em.fma(z, _c(x, -0.5), y)
    y = b.fadd(f, y)
    y = em.fma(ef, _c(x, LN2_HI), y)
    y = b.select(b.fcmp_ordered("==", x, _c(x, 0.0)), _c(x, float("-inf")), y)
    y = b.select(b.fcmp_ordered("==", x, _c(x, float("inf"))), x, y)
    return b.select(b.fcmp_unordered("<", x, _c(x, 0.0)), _c(x, float("nan")), y)  # negative or NaN


def tanh(em: Emitter, x: ir.Value) -> ir.Value:
    """tanh x: an odd polynomial for |x| < 0.625, else 1 - 2 / (e^{2|x|} + 1) with the sign of x."""
    b = em.b
    ax = em.call_unary("fabs", x)
    z = b.fmul(x, x)
    p = _poly(em, z, (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1))
    small = em.fma(b.fmul(p, z), x, x)
    e = exp(em, b.fadd(ax, ax))
    big = b.fsub(_c(x, 1.0), b.fdiv(_c(x, 2.0), b.fadd(e, _c(x, 1.0))))
    big = em.call_binary("copysign", big, x)
    return b.select(b.fcmp_ordered("<", ax, _c(x, 0.625)), small, big)


def sigmoid(em: Emitter, x: ir.Value) -> ir.Value:
    """1 / (1 + e^-x); saturates cleanly to 0 and 1."""
    b = em.b
    return b.fdiv(_c(x, 1.0), b.fadd(_c(x, 1.0), exp(em, b.fneg(x))))


# erf(x) = 2/sqrt(pi) (x - x^3/3 + x^5/10 - ...): Taylor coefficients in x^2, highest first
_ERF_TAYLOR = tuple(
    reversed(
        (
            1.1283791670955126,
            -0.37612638903183754,
            0.11283791670955126,
            -0.026866170645131252,
            0.005223977625442188,
            -0.0008548327023450852,
            0.00012055332981789664,
            -1.4925650358406251e-05,
        )
    )
)
# Abramowitz & Stegun 7.1.26: erf x = 1 - t (a1 + t(a2 + ...)) e^{-x^2}, t = 1 / (1 + p x)
_AS_P = 0.3275911
_AS_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)


def erf(em: Emitter, x: ir.Value) -> ir.Value:
    """erf x: Taylor series for |x| < 0.5 (relative accuracy near 0), A&S 7.1.26 beyond."""
    b = em.b
    ax = em.call_unary("fabs", x)
    z = b.fmul(x, x)
    small = b.fmul(_poly(em, z, _ERF_TAYLOR), x)
    t = b.fdiv(_c(x, 1.0), em.fma(ax, _c(x, _AS_P), _c(x, 1.0)))
    poly = b.fmul(_poly(em, t, _AS_A), t)
    big = b.fsub(_c(x, 1.0), b.fmul(poly, exp(em, b.fneg(z))))
    big = em.call_binary("copysign", big, x)
    return b.select(b.fcmp_ordered("<", ax, _c(x, 0.5)), small, big)
