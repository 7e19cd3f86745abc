"""Probe (issue 6): device time of the quantized all-to-all's pack and unpack kernels on one GPU.

The SP=2 wire payload of one chunk's K ([1, 3520, 24, 128] bf16 per rank, NVFP4 given scale or
FP8 rows): quantize + pack into the per-destination buffer, unpack to an NVFP4Tensor's data +
scales or to bf16, against a device-to-device copy of the same bf16 tensor (L2 flushed, host
hidden behind a GPU spin, median of 30), for each (elements per program, warps) of the sweep.

Usage::

    python tools/probe_a2a_kernels.py
"""

from __future__ import annotations

import itertools
import sys
from functools import partial

import torch

from longlive_kernels._backend import has_cuda_extension
from longlive_kernels.comm import quantized_all_to_all_ops as ops
from longlive_kernels.comm.quantized_all_to_all_ops import _pack_triton, _unpack_triton
from longlive_kernels.comm.reference import payload_layout
from longlive_kernels.testing import cuda_time_ms

SWEEP = [(4096, 4), (2048, 4), (8192, 8)]


def _us(fn) -> float:
    """Device time of ``fn`` in µs (L2 flushed, host hidden, median of 30)."""
    return 1e3 * cuda_time_ms(fn, warmup=3, iters=30, hide_host=True)


def main() -> int:
    dev = torch.device("cuda")
    p, b, s, h, d = 2, 1, 3520, 24, 128
    x = torch.randn(b, s, h, d, device=dev, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    gs = torch.tensor([x.abs().max().item() / (6 * 448)], device=dev)
    copy = _us(lambda: y.copy_(x))
    print(f"# {torch.cuda.get_device_name()}: bf16 copy of {x.numel() * 2 / 1e6:.1f} MB: {copy:.1f} us")
    print("| elements/program | warps | kernel | format | us | x copy time |")
    print("|---:|---:|---|---|---:|---:|")
    for (ops._ELEMENTS, ops._NUM_WARPS), fmt in itertools.product(SWEEP, ("nvfp4", "fp8")):
        cfg = f"| {ops._ELEMENTS} | {ops._NUM_WARPS} "
        chunk = [b, s, h // p, d]
        lay = payload_layout(fmt, 1, chunk)
        buf = torch.zeros(p, lay.chunk_bytes, dtype=torch.uint8, device=dev)
        args = (lay.data_offset(0), lay.scale_offset(0), lay.header_word(0))
        pack = _us(partial(_pack_triton, x, buf, gs, p, 2, fmt, "static6", *args))
        print(cfg + f"| pack (seq→head) | {fmt} | {pack:.1f} | {pack / copy:.2f} |")
        out_shape = (b, s * p, h // p, d)
        deq = torch.empty(out_shape, dtype=torch.bfloat16, device=dev)
        un = _us(partial(_unpack_triton, buf, deq, None, p, 1, fmt, True, d, *args))
        print(cfg + f"| unpack → bf16 | {fmt} | {un:.1f} | {un / copy:.2f} |")
        if fmt == "nvfp4":
            data = torch.empty((*out_shape[:3], d // 2), dtype=torch.uint8, device=dev)
            sc = torch.empty((*out_shape[:3], d // 16), dtype=torch.float8_e4m3fn, device=dev)
            un = _us(partial(_unpack_triton, buf, data, sc, p, 1, fmt, False, d, *args))
            print(cfg + f"| unpack → NVFP4Tensor | {fmt} | {un:.1f} | {un / copy:.2f} |")
            if has_cuda_extension() and (ops._ELEMENTS, ops._NUM_WARPS) == SWEEP[0]:
                ref = buf.clone()
                pack = _us(partial(ops._pack_cuda, x, buf, gs, p, 2, "static6", *args))
                print(f"| – | – | pack, CUDA quantize per chunk | {fmt} | {pack:.1f} | {pack / copy:.2f} |")
                print(f"# CUDA pack bytes equal Triton's: {torch.equal(ref, buf)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
