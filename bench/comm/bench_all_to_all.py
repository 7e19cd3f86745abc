"""Benchmark: Ulysses all-to-all, bf16 vs quantized (NVFP4 / FP8), and the SP attention layer.

Payloads (LongLive-2.0-5B, spec §5.4): one chunk's K of [1, 7040, 24, 128] bf16 (43.3 MB over the
group, 7040/P tokens per rank), one attention layer's q, k, v, o, and one SP attention layer
(UlyssesAttention + SDPA: a 7040-token query chunk attending a 28160-token window whose first
21120 tokens are a BF16 context shard [1, 21120, 24/P, 128] per rank).

Run (prints a markdown table on rank 0; ``--out FILE`` also writes it)::

    torchrun --nproc-per-node 2 bench/comm/bench_all_to_all.py            # 2×H200
    torchrun --nproc-per-node 4 bench/comm/bench_all_to_all.py            # 4×H200 (P = 1, 2, 4)
    python bench/comm/bench_all_to_all.py --nproc 2 [--quick]             # spawns the ranks itself
    python bench/comm/bench_all_to_all.py --device cpu --nproc 2 --smoke  # gloo smoke test, tiny shapes

Timing: per iteration a barrier, an L2 flush, a ~1 ms GPU sleep so that the host queues the whole
op before the GPU reaches it (device time, not Python launch time), then CUDA events around the
op; median over iterations; the reported time is the max over ranks of the per-rank medians.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from longlive_kernels.comm import (
    DelayedScaling,
    UlyssesAttention,
    quantized_all_to_all,
    sdpa_attention,
    ulysses_all_to_all,
)
from longlive_kernels.comm._spawn import NCCL_SAFE_ENV, run_distributed
from longlive_kernels.comm.reference import payload_layout
from longlive_kernels.fp4 import NVFP4Tensor, quantize_nvfp4
from longlive_kernels.testing import device_header

MB = 1e6


class Timer:
    """Median device time of ``fn`` on every rank of ``group``; returns the max over ranks (ms)."""

    def __init__(self, device: torch.device, warmup: int, iters: int):
        self.device, self.warmup, self.iters = device, warmup, iters
        self.flush = (
            torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=device)
            if device.type == "cuda"
            else None
        )

    def __call__(self, fn: Callable[[], object], group=None) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.iters):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
                dist.barrier(group=group)
                self.flush.zero_()
                torch.cuda._sleep(2_000_000)  # ~1 ms: the host queues fn before the GPU gets there
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                dist.barrier(group=group)
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        med = torch.tensor([statistics.median(times)], dtype=torch.float64, device=self.device)
        dist.all_reduce(med, op=dist.ReduceOp.MAX, group=group)
        return med.item()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _bench_k_chunk(p, x, timer, rows):
    """All-to-all of one K chunk: bf16 vs quantized variants."""
    sd, gd = 2, 1
    bf16_bytes = x.numel() * x.element_size()  # per rank
    y_ref = ulysses_all_to_all(x, scatter_dim=sd, gather_dim=gd)
    gs = (x.float().abs().amax() / 2688.0).reshape(())
    dist.all_reduce(gs, op=dist.ReduceOp.MAX)  # a "previous step" scale, the same on every rank
    chunk = list(x.shape)
    chunk[sd] //= p
    nv_bytes = payload_layout("nvfp4", 1, chunk).chunk_bytes * p
    f8_bytes = payload_layout("fp8", 1, chunk).chunk_bytes * p
    raw_bf16 = torch.empty(bf16_bytes, dtype=torch.uint8, device=x.device)
    raw_nv = torch.empty(nv_bytes, dtype=torch.uint8, device=x.device)
    out_b, out_n = torch.empty_like(raw_bf16), torch.empty_like(raw_nv)
    a2a = ulysses_all_to_all
    qa = quantized_all_to_all
    delayed_dense, delayed_kv = DelayedScaling(), DelayedScaling()  # one call site each
    # (name, bytes/rank, fn, is_baseline): speed-ups are against the last baseline above the row
    cases = [
        ("bf16 `ulysses_all_to_all`", bf16_bytes, lambda: a2a(x, scatter_dim=sd, gather_dim=gd), True),
        (
            "NVFP4, group amax (all-reduce) → bf16",
            nv_bytes,
            lambda: qa(x, scatter_dim=sd, gather_dim=gd, tensor_scale="group"),
            False,
        ),
        (
            "NVFP4, per-source amax → bf16",
            nv_bytes,
            lambda: qa(x, scatter_dim=sd, gather_dim=gd, tensor_scale="per_source"),
            False,
        ),
        (
            "NVFP4, given scale → bf16",
            nv_bytes,
            lambda: qa(x, scatter_dim=sd, gather_dim=gd, global_scale=gs),
            False,
        ),
        (
            "NVFP4, delayed scale (amax observed in the call, carried in the payload) → bf16",
            nv_bytes,
            lambda: qa(x, scatter_dim=sd, gather_dim=gd, delayed=delayed_dense),
            False,
        ),
        ("FP8 rows → bf16", f8_bytes, lambda: qa(x, scatter_dim=sd, gather_dim=gd, format="fp8"), False),
        # FP4 KV-cache write: without quantized comm = bf16 all-to-all, then quantize at the receiver
        (
            "FP4 KV write: bf16 all-to-all + `quantize_nvfp4` at the receiver",
            bf16_bytes,
            lambda: quantize_nvfp4(a2a(x, scatter_dim=sd, gather_dim=gd)),
            True,
        ),
        (
            "FP4 KV write: NVFP4, group amax → NVFP4Tensor",
            nv_bytes,
            lambda: qa(x, scatter_dim=sd, gather_dim=gd, output="nvfp4"),
            False,
        ),
        (
            "FP4 KV write: NVFP4, given scale → NVFP4Tensor",
            nv_bytes,
            lambda: qa(x, scatter_dim=sd, gather_dim=gd, output="nvfp4", global_scale=gs),
            False,
        ),
        (
            "FP4 KV write: NVFP4, delayed scale → NVFP4Tensor",
            nv_bytes,
            lambda: qa(x, scatter_dim=sd, gather_dim=gd, output="nvfp4", delayed=delayed_kv),
            False,
        ),
        (
            "`all_to_all_single` only, bf16-sized buffer",
            bf16_bytes,
            lambda: dist.all_to_all_single(out_b, raw_bf16),
            True,
        ),
        (
            "`all_to_all_single` only, NVFP4-sized buffer",
            nv_bytes,
            lambda: dist.all_to_all_single(out_n, raw_nv),
            False,
        ),
    ]
    base = None
    for name, nbytes, fn, is_base in cases:
        ms = timer(fn)
        base = ms if is_base else base
        res = fn()
        if isinstance(res, NVFP4Tensor):
            res = res.dequantize(torch.bfloat16)
        err = (
            _rel_err(res, y_ref)
            if isinstance(res, torch.Tensor) and res.shape == y_ref.shape
            else float("nan")
        )
        rows.append(
            (name + (" *(baseline)*" if is_base else ""), nbytes, bf16_bytes / nbytes, ms, base / ms, err, p)
        )


def _bench_layer_comm(p, qkv, timer, rows):
    """One attention layer's four all-to-alls (q, k, v seq→head; o head→seq)."""
    q, k, v = qkv
    o_h = ulysses_all_to_all(q, scatter_dim=2, gather_dim=1)  # stands in for the attention output
    per_tensor = q.numel() * q.element_size()
    chunk = list(q.shape)
    chunk[2] //= p
    nv = payload_layout("nvfp4", 1, chunk).chunk_bytes * p

    def bf16():
        hs = [ulysses_all_to_all(t, scatter_dim=2, gather_dim=1, async_op=True) for t in (q, k, v)]
        [h.wait() for h in hs]
        return ulysses_all_to_all(o_h, scatter_dim=1, gather_dim=2)

    def kv_nvfp4():
        hq = ulysses_all_to_all(q, scatter_dim=2, gather_dim=1, async_op=True)
        quantized_all_to_all((k, v), scatter_dim=2, gather_dim=1)
        hq.wait()
        return ulysses_all_to_all(o_h, scatter_dim=1, gather_dim=2)

    def bf16_then_quantize_kv():
        hs = [ulysses_all_to_all(t, scatter_dim=2, gather_dim=1, async_op=True) for t in (q, k, v)]
        _, k_h, v_h = [h.wait() for h in hs]
        quantize_nvfp4(k_h), quantize_nvfp4(v_h)
        return ulysses_all_to_all(o_h, scatter_dim=1, gather_dim=2)

    def kv_nvfp4_tensor():
        hq = ulysses_all_to_all(q, scatter_dim=2, gather_dim=1, async_op=True)
        quantized_all_to_all((k, v), scatter_dim=2, gather_dim=1, output="nvfp4")
        hq.wait()
        return ulysses_all_to_all(o_h, scatter_dim=1, gather_dim=2)

    def all_nvfp4():
        quantized_all_to_all((q, k, v), scatter_dim=2, gather_dim=1)
        return quantized_all_to_all(o_h, scatter_dim=1, gather_dim=2)

    base = None
    for name, nbytes, fn, is_base in [
        ("layer q, k, v, o: bf16", 4 * per_tensor, bf16, True),
        ("layer: k, v NVFP4 (q, o bf16)", 2 * per_tensor + 2 * nv, kv_nvfp4, False),
        ("layer: q, k, v, o NVFP4", 4 * nv, all_nvfp4, False),
        (
            "FP4-KV layer: bf16 q, k, v, o + `quantize_nvfp4`(k, v) at the receiver",
            4 * per_tensor,
            bf16_then_quantize_kv,
            True,
        ),
        (
            "FP4-KV layer: k, v NVFP4 → NVFP4Tensor (q, o bf16)",
            2 * per_tensor + 2 * nv,
            kv_nvfp4_tensor,
            False,
        ),
    ]:
        ms = timer(fn)
        base = ms if is_base else base
        rows.append(
            (
                name + (" *(baseline)*" if is_base else ""),
                nbytes,
                4 * per_tensor / nbytes,
                ms,
                base / ms,
                float("nan"),
                p,
            )
        )


def _make_attention(ctx_k, ctx_v, s_new):
    """Local attention over [BF16 context shard | current chunk]: writes k, v into the window
    (as a KV-cache update would) unless they are already there (``UlyssesAttention(kv_out=)``
    put them in the window), then SDPA of the chunk's queries over the whole window; with
    ``head_chunks`` it gets one head group of the shard at a time."""

    def attn(q, k, v, head_slice=slice(None)):
        ck, cv = ctx_k[:, :, head_slice], ctx_v[:, :, head_slice]
        if k.data_ptr() != ck[:, -s_new:].data_ptr():
            ck[:, -s_new:].copy_(k)
            cv[:, -s_new:].copy_(v)
        return sdpa_attention(q, ck, cv)

    return attn


def _sp_variants(p: int, cuda: bool, head_chunks) -> list[tuple[str | None, str, int, bool]]:
    """(k/v wire format, transport, head groups, into the window): the SP layer's variants at P.
    "into the window" passes the window's tail as ``kv_out`` (and, for the peer transport, a
    symmetric output buffer as ``out``): the exchange writes k, v where the attention reads them."""
    out = []
    for chunks in [c for c in head_chunks if p > 1 or c == 1]:  # nothing to pipeline at P = 1
        out += [(f, "nccl", chunks, False) for f in (None, "nvfp4")]
    if cuda and p > 1:  # peer stores (symmetric memory) need CUDA and a second rank
        out += [(None, "peer", 1, False), (None, "peer", 1, True)]
    return out


def _bench_sp_attention(world, dims, device, timer, rows, head_chunks=(1,)):
    from longlive_kernels.comm import symmetric_empty

    b, s, h, d, window = dims
    flops = 4 * b * s * window * h * d
    p = 1
    base = {}
    while p <= world:
        group = None
        if p < world:
            group, _ = dist.new_subgroups(group_size=p)
        rank = dist.get_rank(group)
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(b, s, h, d, generator=g).to(device, torch.bfloat16) for _ in range(3))
        loc = [t.chunk(p, dim=1)[rank].contiguous() for t in (q, k, v)]
        cuda = device.type == "cuda"
        # the window in symmetric memory: the peer transport can then store k, v straight into it
        ctx = (symmetric_empty((2, b, window, h // p, d), dtype=torch.bfloat16, device=device, group=group)
               if cuda and p > 1 else torch.empty(2, b, window, h // p, d, dtype=torch.bfloat16, device=device))
        ctx.normal_()
        ctx_k, ctx_v = ctx[0], ctx[1]
        tail = (ctx_k[:, -s:], ctx_v[:, -s:])
        out = (symmetric_empty((b, s // p, h, d), dtype=torch.bfloat16, device=device, group=group)
               if cuda and p > 1 else None)
        for kv_format, transport, chunks, into in [v for v in _sp_variants(p, cuda, head_chunks)
                                                   if (h // p) % v[2] == 0]:
            ua = UlyssesAttention(
                _make_attention(ctx_k, ctx_v, s), group, kv_format=kv_format, head_chunks=chunks,
                transport=transport,
            )
            kw = {"kv_out": tail, "out": out if transport == "peer" else None} if into else {}
            with torch.no_grad():
                ms = timer(lambda ua=ua, loc=loc, kw=kw: ua(*loc, **kw), group=group)
            dist.all_reduce(torch.zeros(1, device=device))  # keep the world in step between groups
            key = kv_format or "bf16"
            base.setdefault(key, ms)
            label = key if chunks == 1 else f"{key}, {chunks} head groups pipelined"
            label += ", peer stores" if transport == "peer" else ""
            label += " into the window and the output" if into else ""
            rows.append((p, label, ms, flops / (ms * 1e-3) / 1e12, base[key] / ms))
        p *= 2


def _format(rows_a2a, rows_layer, rows_sp, world, dims, header) -> str:
    b, s, h, d, window = dims
    intro = (
        f"K chunk [{b}, {s}, {h}, {d}] bf16 ({b * s * h * d * 2 / MB:.1f} MB over the group, seq→head). "
        "Bytes = the per-rank send buffer (the (P−1)/P part leaves the GPU). Time includes quantize + pack + "
        "all-to-all + unpack; speed-ups are against the *(baseline)* row above. Targets: ≥ 3.5× fewer "
        "bytes; quantized ≥ 1.5× faster than bf16 on 2×H200."
    )
    out = [
        f"### Ulysses all-to-all, P = {world} ({header})",
        "",
        intro,
        "",
        "| variant | bytes/rank | bytes vs bf16 | time (ms) | speed-up vs baseline | rel. err vs bf16 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, nbytes, ratio, ms, sp, err, _ in rows_a2a + rows_layer:
        e = "" if math.isnan(err) else f"{err:.3f}"
        out.append(f"| {name} | {nbytes / MB:.2f} MB | {ratio:.2f}× | {ms:.3f} | {sp:.2f}× | {e} |")
    sp_intro = (
        f"SP attention layer: UlyssesAttention + SDPA, {s}-token chunk attending a {window}-token window "
        "(BF16 context shard per rank), q/k/v/o all-to-alls included. Target: P = 2 ≥ 1.8× faster than "
        "P = 1."
    )
    out += [
        "",
        sp_intro,
        "",
        "| P | k/v on the wire | time (ms) | attention TFLOP/s (global) | speed-up vs P = 1 |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for p, key, ms, tf, sp in rows_sp:
        out.append(f"| {p} | {key} | {ms:.3f} | {tf:.0f} | {sp:.2f}× |")
    return "\n".join(out)


def bench(rank: int, world: int, opts: dict) -> str | None:
    """Body run on every rank (process group initialized). Returns the table on rank 0."""
    device = (
        torch.device("cuda", torch.cuda.current_device()) if opts["device"] == "cuda" else torch.device("cpu")
    )
    if opts["smoke"]:
        dims, timer = (1, 16 * world, 8, 32, 64 * world), Timer(device, 1, 2)
    elif opts["quick"]:
        dims, timer = (1, 7040, 24, 128, 28160), Timer(device, 3, 10)
    else:
        dims, timer = (1, 7040, 24, 128, 28160), Timer(device, 10, 50)
    b, s, h, d, _ = dims
    g = torch.Generator(device="cpu").manual_seed(1 + rank)
    qkv = [torch.randn(b, s // world, h, d, generator=g).to(device, torch.bfloat16) for _ in range(3)]
    rows_a2a, rows_layer, rows_sp = [], [], []
    if not opts.get("sp_only"):
        with torch.no_grad():
            _bench_k_chunk(world, qkv[1], timer, rows_a2a)
            if not opts.get("a2a_only"):
                _bench_layer_comm(world, qkv, timer, rows_layer)
    if not opts.get("a2a_only"):
        _bench_sp_attention(world, dims, device, timer, rows_sp, opts.get("head_chunks", (1,)))
    if rank != 0:
        return None
    header = device_header() if device.type == "cuda" else "cpu / gloo smoke test"
    return _format(rows_a2a, rows_layer, rows_sp, world, dims, header)


def _spawned(rank: int, world: int, opts: dict) -> str | None:
    if opts["device"] == "cuda":
        torch.cuda.set_device(rank)
    return bench(rank, world, opts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 timed iterations instead of 50")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 2 iterations (checks that it runs)")
    ap.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    ap.add_argument("--nproc", type=int, default=None, help="ranks to spawn when not started by torchrun")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument(
        "--head-chunks",
        type=int,
        nargs="+",
        default=[1, 2, 3, 4],
        help="UlyssesAttention head_chunks values timed for the SP layer",
    )
    ap.add_argument("--sp-only", action="store_true", help="only the SP attention layer section")
    ap.add_argument("--a2a-only", action="store_true", help="only the all-to-all of one K chunk")
    args = ap.parse_args(argv)
    opts = {
        "device": args.device,
        "quick": args.quick,
        "smoke": args.smoke or args.device == "cpu",
        "head_chunks": tuple(args.head_chunks),
        "sp_only": args.sp_only,
        "a2a_only": args.a2a_only,
    }
    backend = "nccl" if args.device == "cuda" else "gloo"
    if "RANK" in os.environ:  # torchrun
        for k, v in NCCL_SAFE_ENV.items():
            os.environ.setdefault(k, v)
        if args.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        try:
            table = bench(dist.get_rank(), dist.get_world_size(), opts)
        finally:
            dist.destroy_process_group()
    else:
        n = args.nproc or (min(4, torch.cuda.device_count()) if args.device == "cuda" else 2)
        table = run_distributed(_spawned, n, backend=backend, args=(opts,), timeout_s=1800.0)[0]
    if table is not None:
        print(table)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table + "\n")
    return 0


def test_bench_all_to_all_smoke():
    """pytest entry: the gloo smoke run on 2 CPU processes completes and prints every section."""
    table = run_distributed(
        _spawned,
        2,
        backend="gloo",
        args=({"device": "cpu", "quick": True, "smoke": True, "head_chunks": (1, 2)},),
        timeout_s=300.0,
    )[0]
    assert "speed-up vs baseline" in table and "| 2 | nvfp4 |" in table and "FP4-KV layer" in table
    assert "| 2 | bf16, 2 head groups pipelined |" in table


if __name__ == "__main__":
    sys.exit(main())
