"""Compile-time layouts of sparse weights for the native sparse kernels (numpy only).

The IR stores a pruned weight canonically (``#csr`` values/indices/rowptr, ``#nm``
values/index); the kernels in ``sparse.py`` stream other layouts, built here once at
compile time. Each layout is one byte blob: a 128-byte header of little-endian i64 fields
(counts and byte offsets of the parts), then the parts at 64-byte aligned offsets. Kernel
functions are shared by every weight of the same *type*, while layouts depend on the
sparsity *pattern*, so kernels read counts and offsets from the header at run time.

``window`` (f32, batch-1 GEMV)
    Rows in groups of ``group`` x ``lanes`` (4 x 16 on AVX-512). A *window* is a start
    column ``c`` plus, for every row of the group, at most one non-zero whose column lies
    in ``[c, c + width)``: its value (f32) and its offset from ``c`` (u8). One vector of x,
    ``x[c : c + width]``, serves all 64 rows, and ``vpermi2ps`` moves each lane's x to
    meet its weight, so a window costs two x loads for the group, and per 16 rows one
    index load, one permute and one FMA. Windows are chosen greedily: ``c`` is the
    lowest column any row still needs, and every row whose next column fits takes it.
    Per window: ``c`` (i32); per row: offset (u8) and value (f32).

``rows`` (f32, batched: ``linear`` with several rows of x, 1x1 ``conv2d``)
    Plain CSR: ``rowptr`` i32[N+1], ``cols`` i32[nnz], ``vals`` f32[nnz]. The batched
    kernel broadcasts each value against a row of x^T (all batch columns at once).

``gap`` (int8, compact: the library's bytes are what issue #6 measures)
    Rows sorted by length, in blocks of 16 (one i32 lane each, as ``vpdpbusd`` sums 4
    u8 x s8 products per lane). A *slot* holds 4 entries of every row of the block: the
    value (i8) and the gap to the row's previous position (5 bits, 0..31; the position
    starts at -1). Gaps larger than 31 take extra entries of value 0 and gap 31
    ("escapes"); a row that has run out pads with (0, 0). A slot costs 64 values + 40
    bytes of gaps + 1 byte: 13 bits per entry, about 1.75 bytes per non-zero at 90 %
    sparsity (CSR with i32 indices: 5). Each slot also carries ``delta``, the advance of
    a window start ``R`` (u8; R starts at 0); the packer makes every position looked
    up in the slot lie in ``[R, R + 256)``, stalling (0, 0) a row that runs ahead, so
    the vector kernel finds x with two 128-byte ``vpermt2b`` tables loaded from ``x + R``.
    A row's position relative to R fits a byte, so the kernel keeps all of it in bytes.
    Per row (sorted order): original row index (u16), ``offset`` (i32: integer bias
    minus the zero-point correction), ``mult`` (f32: the accumulator's scale) and
    ``fbias`` (f32: a bias that could not be folded into ``offset``, else 0). Positions
    relative to R are kept modulo 256 (bytes); they are exact for every real entry.
"""

from __future__ import annotations

import math

import numpy as np

from mcir import dtypes
from mcir.encodings import NM, Csr
from mcir.errors import CodegenError
from mcir.types import TensorType

HEADER = 128  # bytes: 16 little-endian i64 fields
ALIGN = 64

#: gap layout: entries per row per slot (one int32 lane of vpdpbusd), rows per block
GAP_PER_LANE = 4
GAP_LANES = 16
GAP_BITS = 5
GAP_MAX = (1 << GAP_BITS) - 1
GAP_WINDOW = 256  # bytes of x one slot may look up: two 128-byte vpermt2b tables
GAP_SLOT_BYTES = GAP_LANES * GAP_PER_LANE * GAP_BITS // 8  # 40


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def make_blob(fields: list[int], parts: list[np.ndarray], tail: int = ALIGN) -> np.ndarray:
    """``HEADER`` bytes of fields (the offsets of ``parts`` are appended to ``fields``) then the parts.

    ``tail`` zero bytes follow every part: vector loads of the last element may read a
    whole vector (the gap layout's 40-byte slots are loaded 64 bytes at a time).
    """
    offsets = []
    pos = HEADER
    for p in parts:
        offsets.append(pos)
        pos = _align(pos + p.nbytes + tail)
    header = list(fields) + offsets
    if len(header) > HEADER // 8:
        raise CodegenError("internal error: sparse layout header overflow")
    out = np.zeros(pos, np.uint8)
    out[: 8 * len(header)] = np.asarray(header, "<i8").view(np.uint8)
    for off, p in zip(offsets, parts):
        raw = np.ascontiguousarray(p).reshape(-1).view(np.uint8)
        out[off : off + raw.size] = raw
    return out


def header_field(blob: np.ndarray, i: int) -> int:
    """Field ``i`` of a blob's header (for tests and reports)."""
    return int(blob[8 * i : 8 * i + 8].view("<i8")[0])


def part(blob: np.ndarray, field: int, dtype, count: int) -> np.ndarray:
    """The part whose byte offset is header field ``field``, as ``count`` elements of ``dtype``."""
    off = header_field(blob, field)
    return blob[off : off + count * np.dtype(dtype).itemsize].view(dtype)


# -- dense views of the IR's encodings ------------------------------------------------------------


def rows_of(t: TensorType) -> tuple[int, int]:
    """(N rows, K columns) of a weight viewed as a matrix, as the encodings see it."""
    return t.shape[0], math.prod(t.shape[1:])


def dense_f32(t: TensorType, stored) -> np.ndarray:
    """The weight as a dense f32 [N, K] matrix (zeros where nothing is stored)."""
    n, k = rows_of(t)
    return np.asarray(t.decode(stored), np.float32).reshape(n, k)


def dense_int8(t: TensorType, stored) -> tuple[np.ndarray, np.ndarray]:
    """An i8 sparse weight as (q int8 [N, K], per-row scale f32 [N]): weight = scale[n] * q[n, k]."""
    n, k = rows_of(t)
    enc = t.encoding
    q = np.zeros((n, k), np.int8)
    if isinstance(enc, Csr):
        rowptr = np.asarray(stored["rowptr"], np.int64)
        rows = np.repeat(np.arange(n), np.diff(rowptr))
        q[rows, np.asarray(stored["indices"], np.int64)] = np.asarray(stored["values"], np.int8)
    elif isinstance(enc, NM):
        groups = k // enc.m
        vals = np.asarray(stored["values"], np.int8).reshape(n, groups, enc.n)
        index = np.asarray(stored["index"], np.int64).reshape(n, groups, enc.n)
        q3 = np.zeros((n, groups, enc.m), np.int8)
        # slots of a group with fewer than n non-zeros hold value 0 (and any index): add, not put
        np.add.at(q3, (np.arange(n)[:, None, None], np.arange(groups)[None, :, None], index), vals)
        q = q3.reshape(n, k)
    else:
        raise CodegenError(f"internal error: {t} is not a sparse int8 weight")
    if t.dtype != dtypes.i8:
        raise CodegenError(f"internal error: {t} does not store int8 values")
    return q, np.asarray(stored["scale"], np.float32)


# -- window layout (f32 GEMV) ---------------------------------------------------------------------


def pack_window(
    w: np.ndarray,
    lanes: int,
    width: int,
    group: int,
    fields: tuple[int, ...] = (),
    rows: tuple[np.ndarray, ...] = (),
) -> np.ndarray:
    """The ``window`` layout of a dense [N, K] matrix (its zeros are dropped; values keep w's dtype:
    f32, or int8 for the int8 kernels on targets without VBMI).

    Header: [groups, *fields, wins(i64[groups+1]), c(i32[windows]), idx(u8[windows][group][lanes]),
    vals([windows][group][lanes]), *rows]: field 0, the extra fields, then the part offsets
    (fields 1..4 without extras). ``rows`` are per-row arrays (original order) appended as parts.
    """
    n, k = w.shape
    rpg = lanes * group
    ngroups = -(-n // rpg)
    big = np.iinfo(np.int64).max // 2
    wins = [0]
    cs: list[int] = []
    idx: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    r = np.arange(rpg)
    for gi in range(ngroups):
        block = np.zeros((rpg, k), w.dtype)
        part_rows = w[gi * rpg : (gi + 1) * rpg]
        block[: len(part_rows)] = part_rows
        mask = block != 0
        counts = mask.sum(axis=1)
        longest = int(counts.max()) if k else 0
        if longest:
            # column of each row's j-th non-zero (increasing), then a sentinel past the end
            order = np.argsort(~mask, axis=1, kind="stable")[:, :longest]
            cols = np.where(np.arange(longest) < counts[:, None], order, big)
            cols = np.concatenate([cols, np.full((rpg, 1), big)], axis=1)
            ptr = np.zeros(rpg, np.int64)
            nxt = cols[:, 0]
            while True:
                c = int(nxt.min())
                if c >= big:
                    break
                take = nxt < c + width
                safe = np.where(take, nxt, 0)
                cs.append(c)
                idx.append(np.where(take, safe - c, 0).astype(np.uint8))
                vals.append(np.where(take, block[r, safe], 0).astype(w.dtype))
                ptr += take
                nxt = cols[r, ptr]
        wins.append(len(cs))
    c_arr = np.asarray(cs, np.int32)
    idx_arr = np.asarray(idx, np.uint8).reshape(-1, group, lanes)
    val_arr = np.asarray(vals, w.dtype).reshape(-1, group, lanes)
    return make_blob([ngroups, *fields], [np.asarray(wins, np.int64), c_arr, idx_arr, val_arr, *rows])


def unpack_window(
    blob: np.ndarray, n: int, k: int, lanes: int, group: int, dtype=np.float32, extra_fields: int = 0
) -> np.ndarray:
    """Dense [N, K] matrix back from a ``window`` blob (tests)."""
    ngroups = header_field(blob, 0)
    first = 1 + extra_fields
    wins = part(blob, first, np.int64, ngroups + 1)
    total = int(wins[-1])
    cs = part(blob, first + 1, np.int32, total)
    idx = part(blob, first + 2, np.uint8, total * group * lanes).reshape(total, group * lanes)
    vals = part(blob, first + 3, dtype, total * group * lanes).reshape(total, group * lanes)
    out = np.zeros((ngroups * group * lanes, max(k, 1) + 256), dtype)
    for gi in range(ngroups):
        for wi in range(int(wins[gi]), int(wins[gi + 1])):
            rows = gi * group * lanes + np.arange(group * lanes)
            np.add.at(out, (rows, cs[wi] + idx[wi].astype(np.int64)), vals[wi])
    return out[:n, :k]


# -- rows layout (f32, batched) --------------------------------------------------------------------


def pack_rows(w: np.ndarray) -> np.ndarray:
    """The ``rows`` (CSR) layout of a dense [N, K] f32 matrix: header [rowptr, cols, vals] (fields 0..2)."""
    mask = w != 0
    rows, cols = np.nonzero(mask)
    rowptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
    return make_blob([], [rowptr, cols.astype(np.int32), w[rows, cols].astype(np.float32)])


def unpack_rows(blob: np.ndarray, n: int, k: int) -> np.ndarray:
    """Dense [N, K] matrix back from a ``rows`` blob (tests)."""
    rowptr = part(blob, 0, np.int32, n + 1).astype(np.int64)
    nnz = int(rowptr[-1])
    cols = part(blob, 1, np.int32, nnz)
    vals = part(blob, 2, np.float32, nnz)
    out = np.zeros((n, k), np.float32)
    out[np.repeat(np.arange(n), np.diff(rowptr)), cols] = vals
    return out


# -- gap layout (int8, compact) --------------------------------------------------------------------


def gap_entries(cols: np.ndarray) -> int:
    """Entries a row with non-zeros at ``cols`` (increasing) needs, escapes included."""
    if cols.size == 0:
        return 0
    gaps = np.diff(np.concatenate([[-1], cols]))
    return int(cols.size + ((gaps - 1) // GAP_MAX).sum())


def _pack_gap_block(row_cols: list[list[int]], row_vals: list[list[int]]) -> tuple[list[int], list[list[int]], list]:
    """Slots of one block of 16 rows: (deltas, gap fields per slot, values per slot)."""
    lanes = len(row_cols)
    cur = [-1] * lanes
    ptr = [0] * lanes
    ends = [len(c) for c in row_cols]
    r_start = 0
    deltas: list[int] = []
    gaps: list[list[int]] = []
    values: list[list[int]] = []
    while True:
        active = [lane for lane in range(lanes) if ptr[lane] < ends[lane]]
        if not active:
            break
        # the window start follows the slowest row: every row stays within [R - 1, R + 255]
        target = min(cur[lane] + 1 for lane in active)
        delta = min(target - r_start, 255)
        r_start += delta
        limit = r_start + GAP_WINDOW
        g_slot = [0] * (lanes * GAP_PER_LANE)
        v_slot = [0] * (lanes * GAP_PER_LANE)
        for lane in range(lanes):
            cols, vals = row_cols[lane], row_vals[lane]
            for t in range(GAP_PER_LANE):
                f = lane * GAP_PER_LANE + t
                p = ptr[lane]
                if p >= ends[lane]:
                    break  # finished: pad with (0, 0)
                col = cols[p]
                gap = col - cur[lane]
                if gap <= GAP_MAX:
                    if col >= limit:
                        break  # ahead of the window: stall with (0, 0) until it catches up
                    g_slot[f], v_slot[f] = gap, vals[p]
                    cur[lane] = col
                    ptr[lane] = p + 1
                else:
                    # escape: value 0, advance 31 (its look-up may fall anywhere: it multiplies 0)
                    g_slot[f] = GAP_MAX
                    cur[lane] += GAP_MAX
        deltas.append(delta)
        gaps.append(g_slot)
        values.append(v_slot)
    return deltas, gaps, values


def pack_gap(q: np.ndarray, offset: np.ndarray, mult: np.ndarray, fbias: np.ndarray) -> np.ndarray:
    """The ``gap`` layout of an int8 [N, K] matrix with per-row constants (original row order).

    Header: [blocks, has_fbias, block_slots(i32[blocks+1]), delta(u8[slots]),
    gaps(u8[slots][40]), vals(i8[slots][64]), perm(u16[blocks*16]), offset(i32), mult(f32),
    fbias(f32, only when has_fbias) (per sorted row)]: fields 0, 1, then the offsets in 2..9.
    """
    n = q.shape[0]
    if n > 0xFFFF:
        raise CodegenError(f"sparse int8 weights with more than 65535 rows ({n}) are not supported")
    cols_of = [np.nonzero(q[i])[0] for i in range(n)]
    length = np.array([gap_entries(c) for c in cols_of], np.int64)
    order = np.argsort(-length, kind="stable")  # similar lengths share a block: little padding
    nblocks = -(-n // GAP_LANES)
    perm = np.full(nblocks * GAP_LANES, 0xFFFF, np.uint16)
    perm[:n] = order
    block_slots = [0]
    deltas: list[int] = []
    gaps: list[list[int]] = []
    values: list[list[int]] = []
    for b in range(nblocks):
        rows = [int(i) for i in order[b * GAP_LANES : (b + 1) * GAP_LANES]]
        row_cols = [cols_of[i].tolist() for i in rows] + [[]] * (GAP_LANES - len(rows))
        row_vals = [q[i, cols_of[i]].astype(np.int64).tolist() for i in rows] + [[]] * (GAP_LANES - len(rows))
        d, g, v = _pack_gap_block(row_cols, row_vals)
        deltas += d
        gaps += g
        values += v
        block_slots.append(len(deltas))
    nslots = len(deltas)
    fields = np.asarray(gaps, np.uint64).reshape(nslots, GAP_LANES * GAP_PER_LANE)
    has_fbias = bool(np.any(np.asarray(fbias) != 0))
    bits = ((fields[:, :, None] >> np.arange(GAP_BITS, dtype=np.uint64)) & 1).astype(np.uint8)
    bits = bits.reshape(nslots, GAP_LANES * GAP_PER_LANE * GAP_BITS)
    gap_bytes = np.packbits(bits, axis=1, bitorder="little").reshape(nslots, GAP_SLOT_BYTES)

    def sorted_rows(a: np.ndarray, dtype) -> np.ndarray:
        out = np.zeros(nblocks * GAP_LANES, dtype)
        out[:n] = np.asarray(a)[order]
        return out

    return make_blob(
        [nblocks, int(has_fbias)],
        [
            np.asarray(block_slots, np.int32),
            np.asarray(deltas, np.uint8),
            gap_bytes,
            np.asarray(values, np.int8).reshape(nslots, GAP_LANES * GAP_PER_LANE),
            perm,
            sorted_rows(offset, np.int32),
            sorted_rows(mult, np.float32),
            sorted_rows(fbias, np.float32) if has_fbias else np.zeros(0, np.float32),
        ],
    )


def unpack_gap(blob: np.ndarray, n: int, k: int) -> np.ndarray:
    """Dense int8 [N, K] matrix back from a ``gap`` blob, checking the window invariant (tests)."""
    nblocks = header_field(blob, 0)
    block_slots = part(blob, 2, np.int32, nblocks + 1)
    nslots = int(block_slots[-1])
    deltas = part(blob, 3, np.uint8, nslots)
    gap_bytes = part(blob, 4, np.uint8, nslots * GAP_SLOT_BYTES).reshape(nslots, GAP_SLOT_BYTES)
    vals = part(blob, 5, np.int8, nslots * 64).reshape(nslots, GAP_LANES, GAP_PER_LANE)
    perm = part(blob, 6, np.uint16, nblocks * GAP_LANES)
    bits = np.unpackbits(gap_bytes, axis=1, bitorder="little").reshape(nslots, 64, GAP_BITS)
    gaps = (bits.astype(np.int64) << np.arange(GAP_BITS)).sum(axis=2).reshape(nslots, GAP_LANES, GAP_PER_LANE)
    out = np.zeros((n, k), np.int64)
    for b in range(nblocks):
        cur = np.full(GAP_LANES, -1, np.int64)
        r_start = 0
        for s in range(int(block_slots[b]), int(block_slots[b + 1])):
            r_start += int(deltas[s])
            for t in range(GAP_PER_LANE):
                cur = cur + gaps[s, :, t]
                real = vals[s, :, t] != 0
                assert np.all((cur[real] >= r_start) & (cur[real] < r_start + GAP_WINDOW)), "window invariant"
                for lane in np.nonzero(real)[0]:
                    out[perm[b * GAP_LANES + lane], cur[lane]] += vals[s, lane, t]
    return out.astype(np.int8)
