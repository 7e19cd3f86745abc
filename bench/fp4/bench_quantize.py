"""NVFP4 quantize / dequantize bandwidth on one 5B-model chunk (issue: NVFP4 format and kernels).

Bytes per element: read 2 (bf16) + write 0.5 (E2M1) + 1/16 (E4M3 scale) = 2.5625. A computed tensor
scale needs an amax pass first, so the kernel reads x twice (4.5625 B/elem of real traffic); with a
given tensor scale (delayed scaling, or an amax fused into the producer) it is one pass. We report
GB/s over the minimal bytes ("eff") and over the bytes actually moved ("hbm"), each as a ratio to a
device-to-device copy measured in the same run, plus speed-ups over the PyTorch reference and over
torch.compile of it. "µs" is GPU time with the host's dispatch overhead hidden (a GPU spin queued
before the start event, ``cuda_time_ms(hide_host=True)``; every column is timed that way); "call µs"
is what an eager caller waits per call (plain event pair), for reference.

Run: python bench/fp4/bench_quantize.py [--quick]
"""

from __future__ import annotations

import argparse
import functools

import pytest
import torch

from longlive_kernels._backend import has_cuda_extension
from longlive_kernels.fp4 import dequantize_nvfp4, quantize_nvfp4
from longlive_kernels.fp4 import reference as ref
from longlive_kernels.testing import copy_bandwidth_gbs, cuda_time_ms, device_header

SHAPES = [(7040, 3072), (7040, 14336)]


def _variants():
    out = []
    for rule in ("static6", "four_over_six"):
        for given in (False, True):
            out.append((rule, given))
    return out


def run(quick: bool = False) -> list[dict]:
    copy = copy_bandwidth_gbs()
    rows = []
    backends = ["triton"] + (["cuda"] if has_cuda_extension() else [])
    for m, k in SHAPES[:1] if quick else SHAPES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3
        n = m * k
        min_bytes = n * (2 + 0.5 + 1 / 16)
        for rule, given in _variants():
            gs = (x.abs().amax().float() / (2688 if rule == "static6" else 1536)) if given else None
            hbm_bytes = min_bytes + (0 if given else 2 * n)
            t_ref = cuda_time_ms(lambda: ref.quantize(x, scale_rule=rule, global_scale=gs), iters=5, warmup=2,
                                 hide_host=True)
            comp = torch.compile(functools.partial(ref.quantize, scale_rule=rule, global_scale=gs))
            t_comp = cuda_time_ms(lambda: comp(x), iters=10, warmup=3, hide_host=True)
            for be in backends:
                def call(be=be):
                    return quantize_nvfp4(x, scale_rule=rule, global_scale=gs, backend=be)

                t = cuda_time_ms(call, hide_host=True)
                rows.append(dict(
                    op="quantize", shape=f"{m}x{k}", rule=rule, scale="given" if given else "amax",
                    backend=be, us=t * 1e3, call_us=cuda_time_ms(call) * 1e3,
                    eff_gbs=min_bytes / t / 1e6, hbm_gbs=hbm_bytes / t / 1e6,
                    copy_gbs=copy, vs_ref=t_ref / t, vs_compile=t_comp / t,
                ))
        q = quantize_nvfp4(x, backend="triton")
        deq_bytes = n * (0.5 + 1 / 16 + 2)
        t_ref = cuda_time_ms(lambda: ref.dequantize(q.data, q.scale, q.global_scale), iters=5, warmup=2,
                             hide_host=True)
        comp = torch.compile(ref.dequantize)
        t_comp = cuda_time_ms(lambda: comp(q.data, q.scale, q.global_scale), iters=10, warmup=3, hide_host=True)
        for be in backends:
            def call(be=be):
                return dequantize_nvfp4(q, torch.bfloat16, backend=be)

            t = cuda_time_ms(call, hide_host=True)
            rows.append(dict(
                op="dequantize", shape=f"{m}x{k}", rule="-", scale="-", backend=be, us=t * 1e3,
                call_us=cuda_time_ms(call) * 1e3,
                eff_gbs=deq_bytes / t / 1e6, hbm_gbs=deq_bytes / t / 1e6, copy_gbs=copy,
                vs_ref=t_ref / t, vs_compile=t_comp / t,
            ))
    return rows


def to_markdown(rows: list[dict]) -> str:
    head = ("| op | shape | rule | tensor scale | backend | µs | call µs | GB/s (min bytes) | ×copy | GB/s (hbm) "
            "| ×copy | vs torch ref | vs torch.compile(ref) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['op']} | {r['shape']} | {r['rule']} | {r['scale']} | {r['backend']} | {r['us']:.1f} | "
        f"{r['call_us']:.1f} | "
        f"{r['eff_gbs']:.0f} | {r['eff_gbs'] / r['copy_gbs']:.2f} | {r['hbm_gbs']:.0f} | "
        f"{r['hbm_gbs'] / r['copy_gbs']:.2f} | {r['vs_ref']:.1f}× | {r['vs_compile']:.1f}× |\n"
        for r in rows
    )
    return head + body


@pytest.mark.gpu
def test_bench_quantize(benchmark):
    x = torch.randn(7040, 3072, device="cuda", dtype=torch.bfloat16)

    def step():
        quantize_nvfp4(x)
        torch.cuda.synchronize()

    benchmark(step)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(device_header())
    rows = run(args.quick)
    print(f"device-to-device copy: {rows[0]['copy_gbs']:.0f} GB/s (read + write)")
    print(to_markdown(rows))
