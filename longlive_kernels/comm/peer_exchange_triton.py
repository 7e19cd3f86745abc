"""Triton kernel of :mod:`peer_exchange`: copy [B, I, J] rows of D contiguous elements from one
source to up to 8 destinations, one destination per program column. A destination may live on
another GPU (a symmetric-memory buffer mapped into this process): the stores then go over NVLink,
with no collective kernel and no staging buffer."""

from __future__ import annotations

import triton
import triton.language as tl

MAX_DESTINATIONS = 8


@triton.jit
def _store_to(dst, off, x, mask):
    tl.store(dst + off, x, mask=mask)


@triton.jit
def _rows_to_peers_kernel(
    src0, src1, src2, dst0, dst1, dst2, dst3, dst4, dst5, dst6, dst7,
    dst_offset, n_i, n_j, n_rows,
    s_b, s_i, s_j, s_dest,
    d_b, d_i, d_j, d_src,
    D: tl.constexpr, BLOCK_R: tl.constexpr, P: tl.constexpr, DEST_FIRST: tl.constexpr,
):
    """Program (r, dest, n) — (dest, r, n) with ``DEST_FIRST`` — : rows r·BLOCK_R … of source n (up
    to 3 sources of one shape and strides, e.g. q, k, v) for destination ``dest``. ``DEST_FIRST``
    makes the destination the fastest-varying grid index, so that consecutive programs alternate
    between the local copy and the NVLink stores instead of running one after the other.
    Row (b, i, j) reads ``src_n[b·s_b + i·s_i + j·s_j + dest·s_dest + (0..D)]`` and writes
    ``dst_dest[n·d_src + dst_offset + b·d_b + i·d_i + j·d_j + (0..D)]`` (element strides)."""
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
    dst_off = (which * d_src + dst_offset + b * d_b + i * d_i + j * d_j)[:, None] + cols
    if which == 0:
        x = tl.load(src0 + src_off, mask=mask)
    elif which == 1:
        x = tl.load(src1 + src_off, mask=mask)
    else:
        x = tl.load(src2 + src_off, mask=mask)
    # a pointer per destination argument (not an address table): Triton then knows each base is
    # 16-byte aligned and vectorizes the stores
    if dest == 0:
        _store_to(dst0, dst_off, x, mask)
    if P > 1:  # noqa: SIM102 - compile-time pruning (P is constexpr)
        if dest == 1:
            _store_to(dst1, dst_off, x, mask)
    if P > 2:
        if dest == 2:
            _store_to(dst2, dst_off, x, mask)
        if dest == 3:
            _store_to(dst3, dst_off, x, mask)
    if P > 4:
        if dest == 4:
            _store_to(dst4, dst_off, x, mask)
        if dest == 5:
            _store_to(dst5, dst_off, x, mask)
        if dest == 6:
            _store_to(dst6, dst_off, x, mask)
        if dest == 7:
            _store_to(dst7, dst_off, x, mask)
