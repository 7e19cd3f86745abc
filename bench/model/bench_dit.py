"""One 5B DiT forward over a 7040-token chunk against a 28,160-token KV cache (issue 7 benchmark).

Setting (LongLive-2.0 steady state, spec §2.3): wan2.2-ti2v-5b on random bf16 weights, 704x1280,
chunk of 8 latent frames = 7040 query tokens; the cache holds 3 earlier chunks (filled by running
chunks 0, 1, 2 first) plus the current one = 28,160 keys; 512 text tokens. The timed call is
``forward_chunk`` for chunk 3 (re-calls of a chunk overwrite its slot, as denoising steps do).

FLOPs per forward, counted as in spec §2.9: per-token linears 2·4.341e9·7040 ≈ 61.1 TFLOP,
self-attention 4·7040·28160·3072·30 ≈ 73.1 TFLOP, cross-attention + text K/V ≈ 1.9 TFLOP,
total ≈ 136.1 TFLOP. Achieved TFLOP/s = that total / time (the same count for every mode, so
quantized modes report "BF16-equivalent" TFLOP/s).

Rows: the baseline is the same model on plain torch ops (``ops="torch"``: eager ``nn.Linear``,
unfused LayerNorm/adaLN/RMSNorm/RoPE, SDPA over a BF16 cache); then the ``longlive_kernels`` path
(fused adaLN + gated residuals, fused qk-RMSNorm + RoPE, ``FP4KVCache`` + ``fp4_kv_attention``)
with BF16 / NVFP4 / W4A16 / FP8 linears (``longlive_kernels.fp4.quantize_model``) and BF16 / FP4 KV
storage. Modes whose kernels are not available yet print as "n/a" with the reason.

Run (H100):
    python bench/model/bench_dit.py --quick      # < 3 min: baseline + 6 kernel rows, 5 timed calls each
    python bench/model/bench_dit.py              # every linear mode x KV storage, 20 timed calls
    python bench/model/bench_dit.py --layers 2   # a 2-block slice (debugging)
"""

from __future__ import annotations

import argparse
import copy
import gc
import time

import pytest
import torch

from longlive.config import ModelConfig
from longlive.model.dit import CausalDiT

# linear mode -> [(KV storage, attention compute)]; each mode is quantized once.
QUICK = {"bf16": [("bf16", "bf16"), ("fp4", "bf16")], "nvfp4": [("fp4", "bf16"), ("fp4", "fp8")],
         "w4a16": [("fp4", "bf16")], "fp8": [("fp4", "bf16")]}
FULL = {m: [("bf16", "bf16"), ("fp4", "bf16"), ("fp4", "fp8")] for m in ("bf16", "nvfp4", "w4a16", "fp8")}


def _time_ms(fn, *, warmup: int, iters: int, device: torch.device) -> float:
    if device.type == "cuda":
        from longlive_kernels.testing import cuda_time_ms

        return cuda_time_ms(fn, warmup=warmup, iters=iters, flush_l2=False)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _measure(model: CausalDiT, storage: str, *, ctx, device, warmup: int, iters: int, chunks: int,
             compute: str = "bf16") -> dict:
    """Fill ``chunks - 1`` chunks, then time forward_chunk of the last one. Returns ms, memory."""
    cfg = model.config
    h, w = cfg.latent_size
    cf = cfg.ar.chunk_frames
    cache = model.make_kv_cache(1, storage=storage, max_chunks=chunks)
    t = torch.full((1, cf), 937.0, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for n in range(chunks - 1):
            x = torch.randn(1, cfg.in_channels, cf, h, w, device=device, dtype=model.dtype, generator=gen)
            model.forward_chunk(x, torch.zeros_like(t), ctx, cache=cache, chunk_id=n, attention_compute=compute)
        x = torch.randn(1, cfg.in_channels, cf, h, w, device=device, dtype=model.dtype, generator=gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

        def step():
            return model.forward_chunk(x, t, ctx, cache=cache, chunk_id=chunks - 1, attention_compute=compute)

        ms = _time_ms(step, warmup=warmup, iters=iters, device=device)
        out = step()
    if not torch.isfinite(out.float()).all():
        raise RuntimeError(f"non-finite output (linears {model.linear_mode}, {storage} KV)")
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    kv_bytes = getattr(cache, "nbytes", None)
    if kv_bytes is None:
        kv_bytes = 2 * cache.k.numel() * cache.k.element_size()
    return {"ms": ms, "peak_gib": peak, "kv_gib": kv_bytes / 2**30}


def run(quick: bool = True, *, layers: int | None = None, config: str = "wan2.2-ti2v-5b",
        device: str = "cuda") -> tuple[list[dict], dict]:
    dev = torch.device(device)
    cfg = ModelConfig.from_name(config)
    if layers:
        cfg = cfg.replace(num_layers=layers)
    torch.manual_seed(0)
    with torch.device(dev):
        model = CausalDiT(cfg, zero_init_head=False).to(torch.bfloat16).eval()
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, device=dev, dtype=torch.bfloat16)
    chunks = cfg.ar.max_chunks
    q_tok, kv_tok = cfg.chunk_tokens, cfg.chunk_tokens * chunks
    flops = model.chunk_flops(q_tok, kv_tok)
    warmup, iters = (2, 5) if quick else (3, 20)
    rows = []

    def add(label, mode, storage, compute, fn):
        try:
            rows.append({"label": label, "mode": mode, "kv": storage, "attn": compute, **fn()})
        except (ImportError, NotImplementedError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
            rows.append({"label": label, "mode": mode, "kv": storage, "attn": compute,
                         "error": f"{type(exc).__name__}: {exc}"[:160]})
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    kw = {"ctx": ctx, "device": dev, "warmup": warmup, "iters": iters, "chunks": chunks}
    model.set_ops("torch")
    add("eager torch (baseline)", "bf16", "bf16", "bf16", lambda: _measure(model, "bf16", **kw))
    model.set_ops("kernels")
    for mode, variants in (QUICK if quick else FULL).items():
        try:
            m = model if mode == "bf16" else copy.deepcopy(model).quantize_(mode)
        except (ImportError, NotImplementedError, ValueError, RuntimeError) as exc:
            for storage, compute in variants:
                rows.append({"label": "longlive_kernels", "mode": mode, "kv": storage, "attn": compute,
                             "error": f"{type(exc).__name__}: {exc}"[:160]})
            continue
        for storage, compute in variants:
            add("longlive_kernels", mode, storage, compute,
                lambda m=m, storage=storage, compute=compute: _measure(m, storage, compute=compute, **kw))
        del m
    meta = {"config": cfg.name, "layers": cfg.num_layers, "q_tokens": q_tok, "kv_tokens": kv_tok,
            "flops": flops, "iters": iters, "params": model.num_parameters()}
    return rows, meta


def to_markdown(rows: list[dict], meta: dict) -> str:
    f = meta["flops"]
    base = next((r["ms"] for r in rows if "ms" in r and r["label"].startswith("eager")), None)
    out = [(f"{meta['config']} ({meta['layers']} blocks, {meta['params'] / 1e9:.3f} B params): one forward, "
           f"{meta['q_tokens']} query tokens vs {meta['kv_tokens']} keys; FLOPs (spec §2.9) linear "
           f"{f['linear'] / 1e12:.1f} + self-attn {f['self_attention'] / 1e12:.1f} + cross "
           f"{f['cross'] / 1e12:.1f} = {f['total'] / 1e12:.1f} TFLOP; median of {meta['iters']} calls\n"),
           "| path | linears | KV cache | attention | ms / forward | TFLOP/s | × eager | peak GiB | KV GiB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['label']} | {r['mode']} | {r['kv']} | {r['attn']} | n/a | | | | {r['error']} |")
            continue
        speed = f"{base / r['ms']:.2f}×" if base else ""
        out.append(f"| {r['label']} | {r['mode']} | {r['kv']} | {r['attn']} | {r['ms']:.1f} | "
                   f"{f['total'] / r['ms'] / 1e9:.0f} | "
                   f"{speed} | {r['peak_gib']:.1f} | {r['kv_gib']:.2f} |")
    return "\n".join(out)


@pytest.mark.gpu
def test_bench_dit_two_block_slice(benchmark):
    """pytest-benchmark entry: the 2-block slice of the 5B model, kernels path, FP4 KV if available."""
    cfg = ModelConfig.from_name("wan2.2-ti2v-5b").replace(num_layers=2)
    with torch.device("cuda"):
        model = CausalDiT(cfg, zero_init_head=False).to(torch.bfloat16).eval()
    ctx = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    cache = model.make_kv_cache(1, storage="bf16")
    x = torch.randn(1, 48, 8, 44, 80, device="cuda", dtype=torch.bfloat16)
    t = torch.full((1, 8), 937.0, device="cuda")
    with torch.no_grad():
        for n in range(3):
            model.forward_chunk(x, t, ctx, cache=cache, chunk_id=n)

        def step():
            model.forward_chunk(x, t, ctx, cache=cache, chunk_id=3)
            torch.cuda.synchronize()

        benchmark(step)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="baseline + 6 kernel rows, 5 timed calls (< 3 min)")
    ap.add_argument("--layers", type=int, default=None, help="use the first N blocks only")
    ap.add_argument("--config", default="wan2.2-ti2v-5b", help="model preset")
    ap.add_argument("--device", default="cuda", help="cuda (timing) or cpu (smoke test with --config tiny)")
    args = ap.parse_args()
    if args.device == "cuda":
        from longlive_kernels.testing import device_header

        print(device_header())
    t0 = time.time()
    rows, meta = run(args.quick, layers=args.layers, config=args.config, device=args.device)
    print(to_markdown(rows, meta))
    print(f"\n(total wall time {time.time() - t0:.0f} s)")
