"""Triton kernel of :mod:`peer_exchange`: copy [B, I, J] rows of D contiguous elements from up to 3
sources to up to 8 destinations each, one destination per program column. A destination may live
on another GPU (a symmetric-memory buffer mapped into this process): the stores then go over
NVLink, with no collective kernel and no staging buffer."""

from __future__ import annotations

import triton
import triton.language as tl

MAX_DESTINATIONS = 8
MAX_SOURCES = 3


@triton.jit
def _store_to(d0, d1, d2, d3, d4, d5, d6, d7, dest, off, x, mask, P: tl.constexpr):
    """Store x at ``d_dest + off``. A pointer per destination argument (not an address table):
    Triton then knows each base is 16-byte aligned and vectorizes the stores."""
    if dest == 0:
        tl.store(d0 + off, x, mask=mask)
    if P > 1:  # noqa: SIM102 - compile-time pruning (P is constexpr)
        if dest == 1:
            tl.store(d1 + off, x, mask=mask)
    if P > 2:
        if dest == 2:
            tl.store(d2 + off, x, mask=mask)
        if dest == 3:
            tl.store(d3 + off, x, mask=mask)
    if P > 4:
        if dest == 4:
            tl.store(d4 + off, x, mask=mask)
        if dest == 5:
            tl.store(d5 + off, x, mask=mask)
        if dest == 6:
            tl.store(d6 + off, x, mask=mask)
        if dest == 7:
            tl.store(d7 + off, x, mask=mask)


@triton.jit
def _rows_to_peers_kernel(
    src0, src1, src2,
    a0, a1, a2, a3, a4, a5, a6, a7,
    b0, b1, b2, b3, b4, b5, b6, b7,
    c0, c1, c2, c3, c4, c5, c6, c7,
    dst_offset, n_i, n_j, n_rows,
    s_b, s_i, s_j, s_dest,
    d_b, d_i, d_j,
    D: tl.constexpr, BLOCK_R: tl.constexpr, P: tl.constexpr, DEST_FIRST: tl.constexpr,
):
    """Program (r, dest, n) — (dest, r, n) with ``DEST_FIRST`` — : rows r·BLOCK_R … of source n (up
    to 3 sources of one shape and strides, e.g. q, k, v) for destination ``dest``; source 0 goes
    to ``a_dest``, source 1 to ``b_dest``, source 2 to ``c_dest`` (destinations of one strides).
    ``DEST_FIRST`` makes the destination the fastest-varying grid index, so that consecutive
    programs alternate between the local copy and the NVLink stores instead of running one after
    the other. Row (b, i, j) reads ``src_n[b·s_b + i·s_i + j·s_j + dest·s_dest + (0..D)]`` and
    writes ``dst[dst_offset + b·d_b + i·d_i + j·d_j + (0..D)]`` (element strides)."""
    if DEST_FIRST:
        dest = tl.program_id(0)
        block = tl.program_id(1)
    else:
        dest = tl.program_id(1)
        block = tl.program_id(0)
    which = tl.program_id(2)
    rows = block.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = (rows < n_rows)[:, None]
    j = rows % n_j
    t = rows // n_j
    i = t % n_i
    b = t // n_i
    cols = tl.arange(0, D)[None, :]
    src_off = (b * s_b + i * s_i + j * s_j + dest * s_dest)[:, None] + cols
    dst_off = (dst_offset + b * d_b + i * d_i + j * d_j)[:, None] + cols
    if which == 0:
        x = tl.load(src0 + src_off, mask=mask)
        _store_to(a0, a1, a2, a3, a4, a5, a6, a7, dest, dst_off, x, mask, P)
    elif which == 1:
        x = tl.load(src1 + src_off, mask=mask)
        _store_to(b0, b1, b2, b3, b4, b5, b6, b7, dest, dst_off, x, mask, P)
    else:
        x = tl.load(src2 + src_off, mask=mask)
        _store_to(c0, c1, c2, c3, c4, c5, c6, c7, dest, dst_off, x, mask, P)
