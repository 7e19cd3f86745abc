"""Probe (device): launch shapes of the one-pass row-wise FP8 quantizer (``gemm_fp8._fp8_rowwise_kernel``).

For the DiT's activation shapes ([1760, 7040 or 14080, 3072]; [1760 or 7040, 14336] with the FFN's GELU
fused, ``--gelu``), times rows per program ×
warps (device time, L2 flushed) against a device-to-device copy, and checks every variant's codes and
scales bit-equal to the default launch. Prints the default's choice first."""
import sys

import torch

from longlive_kernels.fp4.gemm_fp8 import _fp8_rowwise_kernel, _quant_config
from longlive_kernels.testing import copy_bandwidth_gbs, cuda_time_ms

copy = copy_bandwidth_gbs()
print(f"copy {copy:.0f} GB/s")
gelu = "--gelu" in sys.argv
shapes = ((1760, 14336), (7040, 14336)) if gelu else ((7040, 3072), (14080, 3072), (7040, 14336), (1760, 3072))
for rows, k in shapes:
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    nbytes = rows * k * 3 + rows * 4
    br0, bk, vec, single, w0 = _quant_config(rows, k, 2, False)
    ref_q = torch.empty(rows, k, dtype=torch.uint8, device="cuda")
    ref_s = torch.empty(rows, device="cuda")
    _fp8_rowwise_kernel[(-(-rows // br0),)](x, ref_q, ref_s, rows, k, k, BR=br0, BK=bk, VEC=vec, SINGLE_PASS=single,
                                            FAST=True, GELU=gelu, num_warps=w0, enable_fp_fusion=False)
    configs = [(br0, w0, bk, single)] + [
        (br, w, bk, single) for br in (1, 2, 4, 8) for w in (2, 4, 8, 16)
        if (br, w) != (br0, w0) and 4 <= br * bk // (32 * w) <= 128
    ] + [(br, w, c, False) for c in (1024, 2048, 4096) for br in (1, 2, 4) for w in (4, 8, 16)
         if 4 <= br * c // (32 * w) <= 64]
    for br, w, bk, single in configs:
        q = torch.empty_like(ref_q)
        s = torch.empty_like(ref_s)
        fn = lambda: _fp8_rowwise_kernel[(-(-rows // br),)](
            x, q, s, rows, k, k, BR=br, BK=bk, VEC=vec, SINGLE_PASS=single, FAST=True, GELU=gelu,
            num_warps=w, enable_fp_fusion=False)
        try:
            fn()
            same = torch.equal(q, ref_q) and torch.equal(s, ref_s)
            ms = cuda_time_ms(fn, hide_host=True)
        except Exception as e:  # noqa: BLE001
            print(f"[{rows}, {k}] rows/program {br} warps {w} BK {bk}: failed {type(e).__name__}: {str(e)[:80]}")
            continue
        gbs = nbytes / (ms * 1e-3) / 1e9
        tag = " (default)" if (br, w, bk) == (br0, w0, configs[0][2]) else ""
        print(f"[{rows}, {k}] rows/program {br} warps {w:2d} BK {bk:5d} {'1-pass' if single else '2-pass'}: {ms * 1e3:7.1f} us {gbs:6.0f} GB/s = "
              f"{gbs / copy:.2f}x copy, same={same}{tag}", flush=True)
