"""Probe (device): where the time of ``fp4_kv_attention(..., compute="fp8")`` goes, kernel by kernel.

Lq 7040 over 3 context chunks + the current chunk from its slot (Lk 28160), 24 heads × 128, H100/H200;
and the DiT's call (the current chunk passed in bf16, q/K amax bounds, E4M3 output).
Prints torch.profiler's CUDA time per kernel (averaged over the profiled calls) next to cuDNN BF16 SDPA.

``--cast-sweep``: also times the amax of q and the scale-and-cast passes over launch shapes.

``--decode-sweep``: also times the FP4 → FP8 (and → bf16) window decode for several launch shapes
(rows per program × warps), device time with L2 flushed, as a fraction of copy bandwidth."""
import sys

import torch

sys.path.insert(0, "bench/attention")
from bench_kv_cache import _filled, fp8_layout, q_codes

from longlive_kernels.attention import fp4_kv_attention
from longlive_kernels.attention.fp4_kv_attention_sdpa import sdpa_bshd
from longlive_kernels.attention.kv_cache_ops import _dequantize_triton, dequantize_fp8_into
from longlive_kernels.testing import copy_bandwidth_gbs, cuda_time_ms

N = 10
cache, k, v = _filled(3)
q = torch.randn(1, 7040, 24, 128, device="cuda", dtype=torch.bfloat16)
kk, vv = cache.dequantize(0, include_current=True)
qa, ka = q.abs().amax().item(), k.abs().amax().item()
qs, q8, q8h = q_codes(q, qa)
runs = {
    "fp8 path": lambda: fp4_kv_attention(q, cache, 0, compute="fp8"),
    # the DiT's call: current chunk in bf16, q/K scales from the caller's bounds, O left in E4M3
    "fp8 path, the DiT's call": lambda: fp4_kv_attention(q, cache, 0, current_k=k, current_v=v, compute="fp8",
                                                         q_amax=qa, current_k_amax=ka, out_fp8=True),
    # since the 28th session: q arrives as E4M3 codes written by the fused qk-norm + RoPE (token- or
    # head-major, the FP8 workspace in the same layout)
    "fp8 path, the DiT's call with q codes (head-major, the default)": fp8_layout(lambda: fp4_kv_attention(
        q8h, cache, 0, current_k=k, current_v=v, compute="fp8", q_scale=qs, current_k_amax=ka, out_fp8=True), True),
    "fp8 path, the DiT's call with q codes, token-major": fp8_layout(lambda: fp4_kv_attention(
        q8, cache, 0, current_k=k, current_v=v, compute="fp8", q_scale=qs, current_k_amax=ka, out_fp8=True), False),
    "cuDNN bf16": lambda: sdpa_bshd(q, kk, vv, 128 ** -0.5),
}
for name, fn in runs.items():
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(N):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time_total for e in events) / N / 1e3
    print(f"{name}: {total:.3f} ms of kernels per call")
    for e in sorted(events, key=lambda e: -e.device_time_total):
        print(f"  {e.device_time_total / N:9.1f} us  x{e.count // N:<3d} {e.key[:110]}")

if "--decode-sweep" in sys.argv:
    copy = copy_bandwidth_gbs()
    lay = (cache.data[0], cache.scale[0], cache.global_scale[0], cache.table, 4)
    gs_max = cache.global_scale[0].amax().item()
    inv = torch.full((2,), 448.0 / (6 * 448 * gs_max), device="cuda")  # the FP8 path's descale rule
    fp4_bytes = cache.data[0].numel() + cache.scale[0].numel()  # 4 slots of K and V = the decoded chunks
    # the CUDA table decode (items per thread) against the Triton kernel, bit for bit
    ok, ov = _dequantize_triton(*lay, torch.float8_e4m3fn, inv_scale=inv)
    want = (ok.clone(), ov.clone())
    nbytes = fp4_bytes + 2 * ok.numel()
    for items in (1, 2, 4):
        fn = lambda items=items: dequantize_fp8_into(*lay[:4], ok, ov, inv, backend="cuda", items_per_thread=items)
        ok.zero_(), ov.zero_()
        fn()
        same = torch.equal(ok.view(torch.uint8), want[0].view(torch.uint8)) and torch.equal(
            ov.view(torch.uint8), want[1].view(torch.uint8))
        ms = cuda_time_ms(fn, hide_host=True)
        gbs = nbytes / (ms * 1e-3) / 1e9
        print(f"decode -> float8_e4m3fn CUDA table: items {items}: {ms * 1e3:6.1f} us {gbs:6.0f} GB/s = "
              f"{gbs / copy:.2f}x copy ({copy:.0f}) same_as_triton={same}", flush=True)
    for dtype in (torch.float8_e4m3fn, torch.bfloat16):
        ok, ov = _dequantize_triton(*lay, dtype, inv_scale=inv if dtype != torch.bfloat16 else None)
        nbytes = fp4_bytes + 2 * ok.numel() * ok.element_size()
        want = ok.clone()
        for br in (32, 64, 128):
            for warps in (4, 8):
                fn = lambda: _dequantize_triton(*lay, dtype, ok, ov, inv if dtype != torch.bfloat16 else None,
                                                rows_per_program=br, num_warps=warps)
                fn()
                same = torch.equal(ok.view(torch.uint8), want.view(torch.uint8))
                ms = cuda_time_ms(fn, hide_host=True)
                gbs = nbytes / (ms * 1e-3) / 1e9
                print(f"decode -> {str(dtype)[6:]}: rows {br:3d} warps {warps}: {ms * 1e3:6.1f} us "
                      f"{gbs:6.0f} GB/s = {gbs / copy:.2f}x copy ({copy:.0f}) same={same}", flush=True)

if "--cast-sweep" in sys.argv:
    # q's amax pass and the two scale-and-cast passes (q in, O out) over launch shapes, device time,
    # L2 flushed, as a fraction of copy bandwidth; every variant checked bit-equal to the default
    from longlive_kernels.attention import fp8_sdpa

    copy = copy_bandwidth_gbs()
    n = q.numel()
    want_bits = fp8_sdpa.amax_bits(q, torch.zeros(1, dtype=torch.int32, device="cuda")).clone()
    for bl, bc in ((32, 256), (16, 512), (64, 128), (8, 1024), (16, 256)):
        for warps in (4, 8):
            for per_sm in (2, 4, 8, 16):
                bits = torch.zeros(1, dtype=torch.int32, device="cuda")
                fn = lambda bits=bits, launch=(bl, bc, warps, per_sm): fp8_sdpa.amax_bits(q, bits, launch=launch)
                ms = cuda_time_ms(fn, hide_host=True)
                gbs = 2 * n / (ms * 1e-3) / 1e9
                print(f"amax: tile {bl}x{bc} warps {warps} {per_sm:2d}/SM: {ms * 1e3:6.1f} us {gbs:6.0f} GB/s read "
                      f"= {gbs / copy:.2f}x copy same={torch.equal(bits, want_bits)}", flush=True)
    s = torch.tensor([0.0173], device="cuda")
    q8 = torch.empty(q.shape, dtype=torch.float8_e4m3fn, device="cuda")
    ob = torch.empty_like(q)
    want8 = fp8_sdpa.scale_cast(q, s, q8, divide=True).clone()
    wantb = fp8_sdpa.scale_cast(want8, s, ob, divide=False).clone()
    for bl, bc in ((32, 256), (16, 512), (64, 128), (8, 1024), (32, 512), (64, 256), (16, 1024), (128, 128)):
        for warps in (4, 8):
            launch = (bl, bc, warps)
            for name, fn, want, got in (
                ("q bf16->fp8", lambda lc=launch: fp8_sdpa.scale_cast(q, s, q8, divide=True, launch=lc), want8, q8),
                ("O fp8->bf16", lambda lc=launch: fp8_sdpa.scale_cast(want8, s, ob, divide=False, launch=lc), wantb,
                 ob),
            ):
                ms = cuda_time_ms(fn, hide_host=True)
                gbs = 3 * n / (ms * 1e-3) / 1e9
                same = torch.equal(got.view(torch.uint8), want.view(torch.uint8))
                print(f"cast {name}: tile {bl}x{bc} warps {warps}: {ms * 1e3:6.1f} us {gbs:6.0f} GB/s "
                      f"= {gbs / copy:.2f}x copy same={same}", flush=True)
