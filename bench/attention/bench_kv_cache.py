"""FP4 KV cache: memory, in-place update and decode bandwidth, and attention over the cache
(issue 5), LongLive-2.0-5B geometry (24 heads × 128, chunk 7040 tokens, bf16).

Attention rows (Lq = 7040 queries of the current chunk; Lk = context chunks + the current chunk):

- ``cuDNN SDPA, BF16 cache``: the baseline — K/V already dense BF16 [1, Lk, 24, 128],
  ``torch.nn.attention.sdpa_kernel(SDPBackend.CUDNN_ATTENTION)``;
- ``dequant + cuDNN SDPA``: LongLive's way with the fastest Hopper attention — decode the FP4 window
  to BF16, append the BF16 current chunk, then cuDNN SDPA (timed end to end);
- ``dequant + FA2 SDPA (LongLive)``: the same with FlashAttention-2 (``SDPBackend.FLASH_ATTENTION``),
  the kernel LongLive actually runs on Hopper (spec §2.3: FA3 is off by default);
- ``fused portable bf16|fp8``: the portable Triton kernel (``fp4_kv_attention_triton.py``), context tiles
  decoded in registers, BF16 current chunk (``+cache-current``: the current chunk read from its FP4
  slot too);
- ``fused Gluon bf16``: the Hopper kernel (``fp4_kv_attention_hopper.py``: producer warpgroup decodes
  each tile once into fp16 shared memory, 2 consumer warpgroups, async wgmma), called directly; only
  if its probe (a child process, compared with the portable kernel) passed, else the row says why;
- ``fp4_kv_attention bf16 (auto)``: the public function (what the model runs; on Hopper: decode into a
  reused workspace + cuDNN); ``fp8``: decode into an FP8 workspace + cuDNN's FP8 SDPA;
- ``Triton, BF16 cache``: the portable kernel over ``storage="bf16"`` (the Triton flash-attention
  ceiling without FP4 decode).

The baseline is timed first and again after every other row; the ratios use the faster of its two
timings (a slow first timing would otherwise flatter every ratio). FLOPs = 4·Lq·Lk·H·D. Bytes for update: read K+V bf16, write packed + scales + tile scales; for
decode: read packed + scales, write bf16. Ratios are to a device-to-device copy (read + write)
timed in the same run. Errors: rel. Frobenius vs fp64 attention on the exactly decoded cache plus the
BF16 current chunk (3 heads, the first 1024 queries); the BF16-cache rows also carry the BF16
rounding of the decoded values.

Run: python bench/attention/bench_kv_cache.py [--quick] [--attention-only | --bandwidth-only] [--sweep] [--granularity]
                                              [--gluon-probe] [--gluon-ablations]
     (--granularity runs on the CPU: the error table of the global-scale granularity choice;
      every attention row is printed as soon as it is timed, so a failure keeps the rows before it;
      --gluon-ablations adds timing-only rows of the Gluon kernel without its K/V decode and/or its
      exponentials, or with half its decode, to see which part of its work bounds it)
"""

from __future__ import annotations

import argparse
import importlib
import os

import pytest
import torch

from longlive_kernels.attention import FP4KVCache, fp4_kv_attention
from longlive_kernels.attention import fp4_kv_attention_hopper as hopper
from longlive_kernels.attention import fp4_kv_attention_hopper_check as hopper_check
from longlive_kernels.attention import reference as ref
from longlive_kernels.testing import copy_bandwidth_gbs, cuda_time_ms, device_header, rel_err

attn_mod = importlib.import_module("longlive_kernels.attention.fp4_kv_attention_triton")
H, D, T = 24, 128, 7040
DEVICE = "cuda"


def _kv(seed: int, device: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    device = device or DEVICE
    g = torch.Generator(device=device).manual_seed(seed)
    gain = torch.exp2(torch.empty(1, 1, H, 1, device=device).uniform_(-2, 2, generator=g))
    k = (torch.randn(1, T, H, D, device=device, generator=g) * gain).bfloat16()
    v = torch.randn(1, T, H, D, device=device, generator=g).bfloat16()
    return k, v


def _filled(n_ctx: int, storage: str = "fp4") -> tuple[FP4KVCache, torch.Tensor, torch.Tensor]:
    cache = FP4KVCache(
        num_layers=1,
        num_heads=H,
        head_dim=D,
        chunk_tokens=T,
        max_chunks=n_ctx + 1,
        device=DEVICE,
        storage=storage,
    )
    for n in range(n_ctx + 1):
        cache.start_chunk(n)
        k, v = _kv(n)
        cache.update(0, k, v)
    return cache, k, v


def memory_rows() -> list[dict]:
    cache = FP4KVCache(num_layers=1, num_heads=H, head_dim=D, chunk_tokens=T, max_chunks=4, device=DEVICE)
    rep = cache.memory_report()
    del cache
    return [
        dict(
            what="per layer (4 slots: sink + 2 window + current)",
            fp4_mb=rep["bytes_per_layer"] / 1e6,
            bf16_mb=rep["bf16_bytes_per_layer"] / 1e6,
            ratio=rep["compression"],
            bits=rep["bits_per_value"],
        ),
        dict(
            what="30 layers",
            fp4_mb=30 * rep["bytes_per_layer"] / 1e6,
            bf16_mb=30 * rep["bf16_bytes_per_layer"] / 1e6,
            ratio=rep["compression"],
            bits=rep["bits_per_value"],
        ),
    ]


def bandwidth_rows(copy_gbs: float, iters: int) -> list[dict]:
    """GPU time of the update and decode kernels (``hide_host``: the ~20-100 µs of Python and custom-op
    dispatch of an eager call is not in it; the model's decode loop replays them in a CUDA graph), and
    what an eager call waits ("eager µs")."""
    from longlive_kernels._backend import has_cuda_extension

    cache, k, v = _filled(3)
    rows = []
    n = 2 * T * H * D  # K and V values of one chunk
    fp4_bytes = n // 2 + n // 16 + 2 * H * cache.num_scale_tiles * 4
    backends = ["triton"] + (["cuda"] if has_cuda_extension() else [])
    for op, call, nbytes in (
        ("update (K+V, 1 chunk)", lambda be: cache.update(0, k, v, backend=be), 2 * n + fp4_bytes),
        ("dequantize (3 context chunks)", lambda be: cache.dequantize(0, backend=be), 3 * (fp4_bytes + 2 * n)),
    ):
        for be in backends:
            t = cuda_time_ms(lambda be=be: call(be), iters=3 * iters, warmup=3, hide_host=True)
            t_eager = cuda_time_ms(lambda be=be: call(be), iters=iters, warmup=3)
            rows.append(dict(op=op, backend=be, us=t * 1e3, eager_us=t_eager * 1e3, gbs=nbytes / t / 1e6,
                             copy=copy_gbs))
    return rows


def _ref_subset(q, kk, vv):
    def sub(x):
        return x[:, :, [0, H // 2, H - 1]].contiguous()

    return ref.attention(sub(q[:, :1024]), sub(kk), sub(vv), block_q=256), sub


def q_codes(q: torch.Tensor, q_amax: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale [1] fp32 = q_amax/448, q's E4M3 codes token-major, the same codes head-major): what the
    DiT's fused qk-norm + RoPE hands FP8 attention, made outside the timing."""
    scale = torch.tensor([q_amax / 448.0], device=q.device)
    tok = (q.float() / scale).to(torch.float8_e4m3fn)
    return scale, tok, tok.transpose(1, 2).contiguous().transpose(1, 2)


def fp8_layout(fn, heads_major: bool):
    """``fn`` with the FP8 path's workspace and q codes head-major ([B, H, L, D] in memory, the default)
    or token-major, to compare both in the same run."""
    from longlive_kernels.attention import fp4_kv_attention_sdpa as sdpa_path

    def run():
        saved, sdpa_path.FP8_HEADS_MAJOR = sdpa_path.FP8_HEADS_MAJOR, heads_major
        try:
            return fn()
        finally:
            sdpa_path.FP8_HEADS_MAJOR = saved

    return run


def attention_rows(n_ctx: int, iters: int, with_bf16_storage: bool = True,
                   gluon_ablations: bool = False) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cache, k, v = _filled(n_ctx)
    lk = (n_ctx + 1) * T
    q = _kv(1000)[0]
    flops = 4 * T * lk * H * D
    kk, vv = cache.dequantize(0)
    kk, vv = torch.cat([kk, k], 1).contiguous(), torch.cat([vv, v], 1).contiguous()  # the BF16 cache
    k32, v32 = cache.dequantize(0, dtype=torch.float32)  # exact decode: the reference's keys
    want, sub = _ref_subset(q, torch.cat([k32, k.float()], 1), torch.cat([v32, v.float()], 1))

    def cudnn(q, kk, vv):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2)
            ).transpose(1, 2)

    def dequant_then_cudnn():
        kc, vc = cache.dequantize(0)
        return cudnn(q, torch.cat([kc, k], 1), torch.cat([vc, v], 1))

    def dequant_then_fa2():  # LongLive's actual kernel on Hopper: FlashAttention-2 (spec §2.3)
        kc, vc = cache.dequantize(0)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), torch.cat([kc, k], 1).transpose(1, 2),
                torch.cat([vc, v], 1).transpose(1, 2),
            ).transpose(1, 2)

    def portable(compute, current=True):
        ck, cv = (k, v) if current else (None, None)
        return lambda: attn_mod.attention(q, cache.layer_view(0), ck, cv, D**-0.5, compute)

    def gluon(current=True, ablate=0):
        ck, cv = (k, v) if current else (None, None)
        return lambda: hopper.attention(q, cache.layer_view(0), ck, cv, D**-0.5, _ablate=ablate)

    gluon_ok, gluon_msg = False, "not Hopper / unsupported"
    if hopper.supported(q, cache.layer_view(0), k, v, "bf16"):
        gluon_ok = hopper.probe_ok(q.device)
        gluon_msg = "" if gluon_ok else hopper_check._PROBED.get(hopper._device_index(q.device), (0, "?"))[1][:80]
    bf16_cache = _filled(n_ctx, storage="bf16")[0] if with_bf16_storage else None
    from longlive_kernels.attention.fp8_sdpa import cudnn_fp8_sdpa_available

    fp8_ok = cudnn_fp8_sdpa_available(q.device)
    q_amax, k_amax = q.abs().amax().item(), k.abs().amax().item()
    q_scale, q8_tok, q8_heads = q_codes(q, q_amax)
    cases = [
        ("cuDNN SDPA, BF16 cache", lambda: cudnn(q, kk, vv)),
        ("dequant + cuDNN SDPA", dequant_then_cudnn),
        ("dequant + FA2 SDPA (LongLive)", dequant_then_fa2),
        ("fused portable bf16", portable("bf16")),
        ("fused portable fp8", portable("fp8")),
        ("fused portable fp8 +cache-current", portable("fp8", current=False)),
        ("fused Gluon bf16", gluon() if gluon_ok else None),
        ("fused Gluon bf16 +cache-current", gluon(current=False) if gluon_ok else None),
        ("fp4_kv_attention bf16 (auto)", lambda: fp4_kv_attention(q, cache, 0, current_k=k, current_v=v)),
        # cuDNN FP8 SDPA over the FP8-decoded window (Hopper + nvidia-cudnn-frontend), q/K/V/O conversions included
        ("fp4_kv_attention fp8 (auto: cuDNN FP8)",
         (lambda: fp4_kv_attention(q, cache, 0, current_k=k, current_v=v, compute="fp8")) if fp8_ok else None),
        # the DiT's call: q's and the current K's scales from the caller's bounds (the qk-RMSNorm's
        # √C·max|γ| there; the exact amaxes here, known before the timed call), then also O left in E4M3
        # for the FP8 o projection (which reads it as it is; the BF16 baseline's projection reads bf16)
        ("fp4_kv_attention fp8, q/K amax bounds",
         (lambda: fp4_kv_attention(q, cache, 0, current_k=k, current_v=v, compute="fp8", q_amax=q_amax,
                                   current_k_amax=k_amax)) if fp8_ok else None),
        ("fp4_kv_attention fp8, q/K amax bounds, E4M3 output (the DiT's call until the 28th session)",
         (lambda: fp4_kv_attention(q, cache, 0, current_k=k, current_v=v, compute="fp8", q_amax=q_amax,
                                   current_k_amax=k_amax, out_fp8=True)) if fp8_ok else None),
        # since the 28th session the DiT's fused qk-norm + RoPE writes q's E4M3 codes itself (the
        # scale bound/448): q arrives as codes, no pass over it here
        ("fp4_kv_attention fp8, q as E4M3 codes, K bound, E4M3 output (the DiT's call)",
         fp8_layout(lambda: fp4_kv_attention(q8_heads, cache, 0, current_k=k, current_v=v, compute="fp8",
                                             q_scale=q_scale, current_k_amax=k_amax, out_fp8=True), True)
         if fp8_ok else None),
        ("the same, token-major FP8 workspace and q codes",
         fp8_layout(lambda: fp4_kv_attention(q8_tok, cache, 0, current_k=k, current_v=v, compute="fp8",
                                             q_scale=q_scale, current_k_amax=k_amax, out_fp8=True), False)
         if fp8_ok else None),
        ("fp4_kv_attention fp8 (auto) +cache-current",
         (lambda: fp4_kv_attention(q, cache, 0, compute="fp8")) if fp8_ok else None),
        ("fp4_kv_attention fp8 (auto) +cache-current, token-major FP8 workspace",
         fp8_layout(lambda: fp4_kv_attention(q, cache, 0, compute="fp8"), False) if fp8_ok else None),
    ] + (
        # where the Gluon kernel's time goes: the same pipeline without parts of its work
        [(f"Gluon ablation *(timing only, wrong output)*: {what}",
          gluon(current=False, ablate=a) if gluon_ok else None)
         for a, what in ((1, "no K/V decode"), (2, "no exponentials"), (3, "neither"),
                        (4, "half the K/V decode (a CTA pair sharing decoded tiles, at best)"),
                        (6, "half the K/V decode, no exponentials"))]
        if gluon_ablations else []
    ) + (
        [("Triton, BF16 cache", lambda: fp4_kv_attention(q, bf16_cache, 0, current_k=k, current_v=v))]
        if with_bf16_storage
        else []
    )
    rows, base = [], {}
    for name, fn in cases:
        if fn is None:
            why = gluon_msg if "Gluon" in name else "no cuDNN FP8 SDPA (Hopper + nvidia-cudnn-frontend)"
            rows.append(dict(case=name, lk=lk, ms=float("nan"), tflops=0.0, err=float("nan"),
                             note=f"skipped: {why}"))
            print(f"  {name}: skipped ({why})", flush=True)
            continue
        try:
            out = fn()
            if isinstance(out, tuple):  # E4M3 output: (codes, scale)
                out = (out[0].float() * out[1]).to(q.dtype)
            if "+cache-current" in name or "ablation" in name:  # attends to the quantized current chunk: its own reference
                kq, vq = cache.dequantize(0, include_current=True, dtype=torch.float32)
                err = rel_err(sub(out[:, :1024]), _ref_subset(q, kq, vq)[0])
            elif "BF16 cache" in name and "Triton" in name:
                kb, vb = bf16_cache.dequantize(0)
                err = rel_err(sub(out[:, :1024]), _ref_subset(q, torch.cat([kb, k], 1), torch.cat([vb, v], 1))[0])
            else:
                err = rel_err(sub(out[:, :1024]), want)
            t = cuda_time_ms(fn, iters=iters, warmup=3)
            # device time (host hidden behind a GPU spin): what a CUDA-graph replay of the model sees
            t_dev = cuda_time_ms(fn, iters=iters, warmup=3, hide_host=True)
        except Exception as exc:  # noqa: BLE001 - report the failure, keep the other rows
            rows.append(dict(case=name, lk=lk, ms=float("nan"), tflops=0.0, err=float("nan"),
                             note=f"{type(exc).__name__}: {str(exc)[:60]}"))
            print(f"  {name}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        if name.startswith("cuDNN SDPA"):
            base["cudnn"], base["cudnn_dev"] = t, t_dev
        if name.startswith("dequant + cuDNN"):
            base["dequant"] = t
        if name.startswith("dequant + FA2"):
            base["fa2"] = t
        rows.append(dict(case=name, lk=lk, ms=t, ms_dev=t_dev, tflops=flops / t / 1e9, err=err))
        print(f"  {name}: Lk {lk}, {t:.3f} ms ({t_dev:.3f} device), {flops / t / 1e9:.0f} TFLOP/s, "
              f"{base.get('cudnn', float('nan')) / t:.2f}x cuDNN "
              f"({base.get('cudnn_dev', float('nan')) / t_dev:.2f}x device), err {err:.2e}", flush=True)
    if "cudnn" in base:  # the baseline again, last: ratios use the faster of its two timings (conservative)
        fn = cases[0][1]
        t, t_dev = cuda_time_ms(fn, iters=iters, warmup=3), cuda_time_ms(fn, iters=iters, warmup=3, hide_host=True)
        rows.append(dict(case="cuDNN SDPA, BF16 cache (timed again, last)", lk=lk, ms=t, ms_dev=t_dev,
                         tflops=flops / t / 1e9, err=rows[0]["err"]))
        print(f"  baseline again: {t:.3f} ms ({t_dev:.3f} device); first {base['cudnn']:.3f} "
              f"({base['cudnn_dev']:.3f})", flush=True)
        base["cudnn"], base["cudnn_dev"] = min(t, base["cudnn"]), min(t_dev, base["cudnn_dev"])
    for r in rows:
        for key, col in (("cudnn", "vs_cudnn"), ("dequant", "vs_dequant"), ("fa2", "vs_fa2")):
            r[col] = base[key] / r["ms"] if key in base else float("nan")
        r["vs_cudnn_dev"] = base["cudnn_dev"] / r["ms_dev"] if "cudnn_dev" in base and "ms_dev" in r else float("nan")
    return rows


def sweep_rows(iters: int) -> list[dict]:
    """Block configs of the fused kernel (env LONGLIVE_FP4_KV_ATTN_CONFIG = BM,BN,warps,stages)."""
    cache, k, v = _filled(3)
    q = _kv(1000)[0]
    flops = 4 * T * 4 * T * H * D
    rows = []
    for cfg in (
        "128,128,8,2",
        "128,128,8,3",
        "128,64,8,2",
        "128,64,8,3",
        "64,128,4,2",
        "64,64,4,3",
        "128,128,4,2",
    ):
        os.environ["LONGLIVE_FP4_KV_ATTN_CONFIG"] = cfg
        for compute in ("bf16", "fp8"):

            def fn(c=compute):  # the portable kernel (the Gluon kernel has no block-config knob)
                return attn_mod.attention(q, cache.layer_view(0), k, v, D**-0.5, c)

            try:
                fn()
                t = cuda_time_ms(fn, iters=iters, warmup=3)
                rows.append(dict(cfg=cfg, compute=compute, ms=t, tflops=flops / t / 1e9))
            except Exception as exc:  # noqa: BLE001 - a config out of resources: report it, go on
                rows.append(dict(cfg=cfg, compute=compute, ms=float("nan"), tflops=0.0, note=str(exc)[:60]))
    os.environ.pop("LONGLIVE_FP4_KV_ATTN_CONFIG")
    return rows


def granularity_rows(tokens: int = 1024) -> list[dict]:
    """Round-trip error of the FP32-scale granularity choices (CPU, fp4 reference)."""
    from longlive_kernels.fp4 import reference as fp4_ref

    torch.manual_seed(0)

    def rt(x2d):
        d, s, g = fp4_ref.quantize(x2d)
        return fp4_ref.dequantize(d, s, g, dtype=torch.float32)

    data = {
        "Gaussian": torch.randn(tokens, H, D),
        "K-like (head 2^U(-3,3), channel 2^U(-1,1), 1/64 tokens x16)": None,
        "Student-t(3), head gains 2^U(-3,3)": torch.distributions.StudentT(3.0).sample((tokens, H, D))
        * torch.exp2(torch.empty(1, H, 1).uniform_(-3, 3)),
    }
    x = torch.randn(tokens, H, D) * torch.exp2(torch.empty(1, H, 1).uniform_(-3, 3))
    x = x * torch.exp2(torch.empty(1, H, D).uniform_(-1, 1))
    x[torch.randint(0, tokens, (tokens // 64,))] *= 16
    data["K-like (head 2^U(-3,3), channel 2^U(-1,1), 1/64 tokens x16)"] = x
    rows = []
    for name, x in data.items():
        x = x.bfloat16().float()
        per_slot = rt(x.reshape(-1, D)).reshape(x.shape)
        per_head = torch.stack([rt(x[:, h]) for h in range(H)], 1)
        per_tile = torch.stack(
            [torch.cat([rt(x[t : t + 128, h]) for t in range(0, tokens, 128)]) for h in range(H)], 1
        )
        rows.append(
            dict(data=name, slot=rel_err(per_slot, x), head=rel_err(per_head, x), tile=rel_err(per_tile, x))
        )
    return rows


ATT_COLS = [
    ("case", "attention (Lq = 7040)", "s"),
    ("lk", "Lk", "d"),
    ("ms", "ms", ".3f"),
    ("tflops", "TFLOP/s", ".0f"),
    ("vs_cudnn", "× cuDNN BF16", ".2f"),
    ("ms_dev", "device ms", ".3f"),
    ("vs_cudnn_dev", "× cuDNN BF16 (device)", ".2f"),
    ("vs_dequant", "× dequant+cuDNN", ".2f"),
    ("vs_fa2", "× dequant+FA2", ".2f"),
    ("err", "rel err vs fp64", ".2e"),
    ("note", "note", "s"),
]


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[1] for c in cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join(
        "| " + " | ".join(format(r[c[0]], c[2]) if c[0] in r else "–" for c in cols) + " |\n" for r in rows
    )


@pytest.mark.gpu
def test_bench_fp4_kv_attention(benchmark):
    cache, k, v = _filled(3)
    q = _kv(1000)[0]

    def step():
        fp4_kv_attention(q, cache, 0, current_k=k, current_v=v)
        torch.cuda.synchronize()

    benchmark(step)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="Lk = 28160 only, fewer iterations (< 2 min)")
    ap.add_argument("--sweep", action="store_true", help="also time the fused kernel's block configs")
    ap.add_argument("--granularity", action="store_true", help="CPU: global-scale granularity error table")
    ap.add_argument("--attention-only", action="store_true", help="only the attention table")
    ap.add_argument("--bandwidth-only", action="store_true", help="only the memory and update/decode tables")
    ap.add_argument("--gluon-ablations", action="store_true",
                    help="add timing-only rows of the Gluon kernel without its decode / exponentials (wrong output)")
    ap.add_argument("--gluon-probe", action="store_true",
                    help="run the Hopper Gluon kernel's probe (a child process, 300 s limit) and print its result")
    args = ap.parse_args()
    if args.granularity:
        print(
            _table(
                granularity_rows(),
                [
                    ("data", "data", "s"),
                    ("slot", "per (slot, K or V)", ".4e"),
                    ("head", "per (slot, head)", ".4e"),
                    ("tile", "per (slot, head, 128 tok)", ".4e"),
                ],
            )
        )
        raise SystemExit(0)
    print(device_header())
    iters = 10 if args.quick else 30
    if args.gluon_probe:
        ok, msg = hopper.run_probe(torch.cuda.current_device())
        print(f"Gluon probe: {'OK' if ok else 'FAILED'}\n{msg}")
        raise SystemExit(0 if ok else 1)
    if args.attention_only:
        att = []
        for n_ctx in (3,) if args.quick else (3, 4):
            att += attention_rows(n_ctx, iters, with_bf16_storage=not args.quick,
                                  gluon_ablations=args.gluon_ablations)
        print(_table(att, ATT_COLS))
        raise SystemExit(0)
    copy = copy_bandwidth_gbs()
    print(f"device-to-device copy: {copy:.0f} GB/s (read + write)\n")
    print(
        _table(
            memory_rows(),
            [
                ("what", "KV cache", "s"),
                ("fp4_mb", "FP4 MB", ".1f"),
                ("bf16_mb", "BF16 MB", ".1f"),
                ("ratio", "compression", ".2f"),
                ("bits", "bits/value", ".3f"),
            ],
        )
    )
    bw = bandwidth_rows(copy, iters)
    for r in bw:
        r["ratio"] = r["gbs"] / r["copy"]
    print(
        _table(
            bw,
            [
                ("op", "op", "s"),
                ("backend", "backend", "s"),
                ("us", "GPU µs", ".1f"),
                ("gbs", "GB/s", ".0f"),
                ("ratio", "× copy", ".2f"),
                ("eager_us", "eager µs", ".1f"),
            ],
        )
    )
    if args.bandwidth_only:
        raise SystemExit(0)
    att = []
    for n_ctx in (3,) if args.quick else (3, 4):
        att += attention_rows(n_ctx, iters, with_bf16_storage=not args.quick)
    print(_table(att, ATT_COLS))
    if args.sweep:
        print(
            _table(
                sweep_rows(iters),
                [
                    ("cfg", "BM,BN,warps,stages", "s"),
                    ("compute", "compute", "s"),
                    ("ms", "ms", ".3f"),
                    ("tflops", "TFLOP/s", ".0f"),
                    ("note", "note", "s"),
                ],
            )
        )
