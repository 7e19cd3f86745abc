"""Code that runs on every rank of the multi-process comm tests (gloo on CPU, NCCL on GPUs).

Every rank builds the same global tensors from a seed, keeps its shard, runs the collective ops,
and compares with a single-process computation on the global tensors. Checks never raise between
collectives (a rank that stopped early would hang the others): failures are recorded and returned
to the parent, which asserts on them.
"""

from __future__ import annotations

import math
import traceback

import torch
import torch.distributed as dist

from longlive_kernels.comm import UlyssesAttention, quantized_all_to_all, sdpa_attention, ulysses_all_to_all
from longlive_kernels.comm import reference as ref
from longlive_kernels.fp4 import NVFP4Tensor, dequantize_nvfp4, quantize_nvfp4
from longlive_kernels.fp4.format import SCALE_RULES
from longlive_kernels.fp4.reference import div_rn
from longlive_kernels.testing import assert_bitwise_equal


class Checker:
    """Records failures instead of raising, so every rank reaches every collective."""

    def __init__(self):
        self.failures: list[str] = []
        self.metrics: dict[str, float] = {}

    def bitwise(self, a: torch.Tensor, b: torch.Tensor, name: str) -> None:
        try:
            assert_bitwise_equal(a.cpu(), b.cpu(), name)
        except AssertionError as e:
            self.failures.append(str(e))

    def true(self, cond: bool, name: str) -> None:
        if not cond:
            self.failures.append(name)

    def raises(self, fn, exc: type, match: str, name: str) -> None:
        try:
            fn()
        except exc as e:
            if match not in str(e):
                self.failures.append(f"{name}: message {str(e)!r} lacks {match!r}")
            return
        except Exception as e:  # noqa: BLE001
            self.failures.append(f"{name}: raised {type(e).__name__} instead of {exc.__name__}: {e}")
            return
        self.failures.append(f"{name}: did not raise {exc.__name__}")


def _gen(seed: int, shape, dtype, device, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)


def _shard(full: torch.Tensor, rank: int, p: int, dim: int = 1) -> torch.Tensor:
    return full.chunk(p, dim=dim)[rank].contiguous()


def _dev(device: str, rank: int) -> torch.device:
    return torch.device(f"cuda:{rank}" if device == "cuda" else "cpu")


def _fa_rule(out: torch.Tensor, eager: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """(max|out − fp64|, 2·max|eager − fp64| + tiny): the FlashAttention test rule."""
    e_out = (out.double().cpu() - exact).abs().max().item()
    e_eager = (eager.double().cpu() - exact).abs().max().item()
    return e_out, 2 * e_eager + 1e-6


def _attention_on_quantized_kv(q, k, v):
    """A stand-in for fp4_kv_attention: takes NVFP4Tensor or FP8 (codes, scale) k and v."""

    def decode(t):
        return (
            t.dequantize(torch.float32)
            if isinstance(t, NVFP4Tensor)
            else ref.dequantize_fp8_rows(*t, torch.float32)
        )

    return sdpa_attention(q, decode(k), decode(v))


def _attention_fp64(q, k, v, **kw) -> torch.Tensor:
    return sdpa_attention(q.double().cpu(), k.double().cpu(), v.double().cpu(), **kw)


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


def case_roundtrip(rank, p, device, backends, chk):
    dev = _dev(device, rank)
    for i, dtype in enumerate([torch.float32, torch.bfloat16, torch.float8_e4m3fn, torch.int64]):
        for b in (1, 2):
            shape = (b, 3 * p, 2 * p, 5)
            if dtype == torch.float8_e4m3fn:
                full = _gen(10 + i, shape, torch.float32, dev).to(dtype)
            elif dtype == torch.int64:
                full = torch.arange(math.prod(shape), device=dev).view(shape)
            else:
                full = _gen(10 + i, shape, dtype, dev)
            x = _shard(full, rank, p)
            y = ulysses_all_to_all(x, scatter_dim=2, gather_dim=1)
            want = full.chunk(p, dim=2)[rank]
            chk.bitwise(
                y.view(torch.uint8) if y.element_size() == 1 else y,
                want.view(torch.uint8) if want.element_size() == 1 else want,
                f"seq→head {dtype} B={b}",
            )
            back = ulysses_all_to_all(y, scatter_dim=1, gather_dim=2, async_op=True).wait()
            chk.bitwise(
                back.view(torch.uint8) if back.element_size() == 1 else back,
                x.view(torch.uint8) if x.element_size() == 1 else x,
                f"round trip {dtype} B={b}",
            )
    # out= (direct receive for B = 1, copy otherwise) and a 3-D tensor with other dims
    for b in (1, 2):
        full = _gen(20 + b, (b, 2 * p, 2 * p, 4), torch.float32, dev)
        x = _shard(full, rank, p)
        dst = torch.full((b, 2 * p, 2, 4), float("nan"), device=dev)
        r = ulysses_all_to_all(x, scatter_dim=2, gather_dim=1, out=dst)
        chk.true(r is dst, f"out= returns out (B={b})")
        chk.bitwise(dst, full.chunk(p, dim=2)[rank], f"out= B={b}")
    full = _gen(30, (4 * p, 3, p * 2), torch.float32, dev)
    x = full.chunk(p, dim=0)[rank]
    y = ulysses_all_to_all(x, scatter_dim=2, gather_dim=0)
    chk.bitwise(y, full.chunk(p, dim=2)[rank], "3-D scatter 2 gather 0")
    chk.bitwise(
        ref.all_to_all_reference(list(full.chunk(p, dim=0)), scatter_dim=2, gather_dim=0)[rank],
        y,
        "reference simulation",
    )


def case_attention(rank, p, device, backends, chk):
    """bf16 forward vs single-process (FlashAttention rule), with and without a causal mask."""
    dev = _dev(device, rank)
    b, s, h, d = 2, 4 * p, 2 * p, 16
    qf, kf, vf = (_gen(40 + i, (b, s, h, d), torch.bfloat16, dev) for i in range(3))
    ua = UlyssesAttention()
    for kw in ({}, {"is_causal": True}):
        o = ua(_shard(qf, rank, p), _shard(kf, rank, p), _shard(vf, rank, p), **kw)
        exact = _shard(_attention_fp64(qf, kf, vf, **kw), rank, p)
        eager = _shard(sdpa_attention(qf, kf, vf, **kw), rank, p)
        err, bound = _fa_rule(o, eager, exact)
        chk.metrics[f"attn_err{kw}"] = err
        chk.true(
            o.dtype == torch.bfloat16 and o.shape == (b, s // p, h, d), f"output {o.dtype} {tuple(o.shape)}"
        )
        chk.true(err <= bound, f"attention {kw}: err {err:.3g} > 2·eager err + tiny {bound:.3g}")


def case_gradients(rank, p, device, backends, chk):
    """fp32 autograd through the unquantized path equals single-process autograd."""
    dev = _dev(device, rank)
    b, s, h, d = 1, 2 * p, 2 * p, 8
    full = [_gen(50 + i, (b, s, h, d), torch.float32, dev) for i in range(3)]
    w = _gen(53, (b, s, h, d), torch.float32, dev)
    ref_in = [t.clone().requires_grad_(True) for t in full]
    (sdpa_attention(*ref_in, is_causal=True) * w).sum().backward()
    loc = [_shard(t, rank, p).requires_grad_(True) for t in full]
    o = UlyssesAttention()(*loc, is_causal=True)
    (o * _shard(w, rank, p)).sum().backward()
    for name, a, r in zip("qkv", loc, ref_in):
        g_ref = _shard(r.grad, rank, p)
        err = ((a.grad - g_ref).abs().max() / g_ref.abs().max()).item()
        chk.metrics[f"grad_{name}"] = err
        chk.true(err < 1e-5, f"grad {name}: rel err {err:.3g}")


def _gathered(full, rank, p, sd, gd):
    """What rank ``rank`` receives: full [B, S, H, D] sharded on seq (sd=2) or heads (sd=1)."""
    if sd == 2:  # seq→head: input = seq shards, output = head shard
        return _shard(full, rank, p, 1), full.chunk(p, dim=2)[rank]
    return full.chunk(p, dim=2)[rank].contiguous(), _shard(full, rank, p, 1)


def case_quantized(rank, p, device, backends, chk):
    """Received NVFP4 / FP8 data is bit-identical to quantizing the gathered tensor."""
    dev = _dev(device, rank)
    b, s, h, d = 2, 2 * p, 2 * p, 32
    full = _gen(60, (b, s, h, d), torch.bfloat16, dev, scale=3.0)
    full2 = _gen(61, (b, s, h, d), torch.bfloat16, dev, scale=0.5)
    for be in backends:
        for sd, gd in ((2, 1), (1, 2)):
            x, want_dense = _gathered(full, rank, p, sd, gd)
            x2, want_dense2 = _gathered(full2, rank, p, sd, gd)
            tag = f"[{be} sd={sd}]"
            for rule in ("static6", "four_over_six") if sd == 2 else ("static6",):
                gs = div_rn(ref.nvfp4_amax(full), SCALE_RULES[rule][1])
                q = quantized_all_to_all(
                    x, scatter_dim=sd, gather_dim=gd, output="nvfp4", scale_rule=rule, backend=be
                )
                want = quantize_nvfp4(want_dense, global_scale=gs, scale_rule=rule, backend="torch")
                chk.bitwise(q.data, want.data, f"{tag} nvfp4 data {rule}")
                chk.bitwise(
                    q.scale.view(torch.uint8), want.scale.view(torch.uint8), f"{tag} nvfp4 scale {rule}"
                )
                chk.bitwise(q.global_scale, gs, f"{tag} global scale {rule}")
                chk.true(q.shape == want_dense.shape and q.scale_rule == rule, f"{tag} NVFP4Tensor metadata")
            # dense output, group scale, fp32 destination → exactly dequantize_nvfp4
            gs = div_rn(ref.nvfp4_amax(full), SCALE_RULES["static6"][1])
            dst = torch.empty(want_dense.shape, dtype=torch.float32, device=dev)
            quantized_all_to_all(x, scatter_dim=sd, gather_dim=gd, tensor_scale="group", out=dst, backend=be)
            deq = dequantize_nvfp4(
                quantize_nvfp4(want_dense, global_scale=gs, backend="torch"), torch.float32, backend="torch"
            )
            chk.bitwise(dst, deq, f"{tag} dequantized (group)")
            # per-source scales (default for dense output): the reference simulation
            y = quantized_all_to_all(x.float(), scatter_dim=sd, gather_dim=gd, backend=be)
            shards = (
                list(full.float().chunk(p, dim=1))
                if sd == 2
                else [t.contiguous() for t in full.float().chunk(p, dim=2)]
            )
            sim = ref.quantized_all_to_all_reference(
                shards, scatter_dim=sd, gather_dim=gd, tensor_scale="per_source"
            )
            chk.bitwise(y, sim[rank], f"{tag} dequantized (per source)")
            # FP8 codes + row scales, and (k, v) sharing one buffer
            codes, sc = quantized_all_to_all(
                x, scatter_dim=sd, gather_dim=gd, format="fp8", output="fp8", backend=be
            )
            wc, ws = ref.quantize_fp8_rows(want_dense)
            chk.bitwise(codes.view(torch.uint8), wc.view(torch.uint8), f"{tag} fp8 codes")
            chk.bitwise(sc, ws, f"{tag} fp8 scales")
            kq, vq = quantized_all_to_all((x, x2), scatter_dim=sd, gather_dim=gd, output="nvfp4", backend=be)
            gs2 = div_rn(ref.nvfp4_amax(full2), SCALE_RULES["static6"][1])
            wv = quantize_nvfp4(want_dense2, global_scale=gs2, backend="torch")
            chk.bitwise(vq.data, wv.data, f"{tag} (k, v) v data")
            chk.bitwise(vq.scale.view(torch.uint8), wv.scale.view(torch.uint8), f"{tag} (k, v) v scale")
            chk.bitwise(kq.global_scale, div_rn(ref.nvfp4_amax(full), 2688.0), f"{tag} (k, v) k scale")
        # strided input (a slice of a fused QKV tensor) into strided slices of an FP4 "cache"
        qkv = torch.stack([full, full2, full], dim=2)  # [B, S, 3, H, D]
        x = _shard(qkv, rank, p)[:, :, 1]
        gs = torch.tensor(0.01, device=dev)
        cache_d = torch.zeros(b, s + 3, h // p, d // 2, dtype=torch.uint8, device=dev)
        cache_s = torch.zeros(b, s + 3, h // p, d // 16, dtype=torch.uint8, device=dev).view(
            torch.float8_e4m3fn
        )
        dst = quantize_nvfp4(torch.zeros(b, s, h // p, d, device=dev), backend="torch")
        dst.data, dst.scale = cache_d[:, 3:], cache_s[:, 3:]
        r = quantized_all_to_all(
            x, scatter_dim=2, gather_dim=1, output="nvfp4", global_scale=gs, out=dst, backend=be
        )
        want = quantize_nvfp4(full2.chunk(p, dim=2)[rank], global_scale=gs, backend="torch")
        chk.true(r is dst, f"[{be}] out= NVFP4Tensor returned")
        chk.bitwise(cache_d[:, 3:], want.data, f"[{be}] strided in/out data")
        chk.bitwise(
            cache_s[:, 3:].view(torch.uint8), want.scale.view(torch.uint8), f"[{be}] strided in/out scale"
        )
        chk.true(bool((cache_d[:, :3] == 0).all()), f"[{be}] out= wrote outside its slice")
    # Inf on one rank: the group scale is Inf and every block on every rank decodes to NaN
    x = _shard(full, rank, p).clone()
    if rank == p - 1:
        x[0, 0, 0, 0] = float("inf")
    y = quantized_all_to_all(x, scatter_dim=2, gather_dim=1, tensor_scale="group", backend=backends[-1])
    chk.true(bool(torch.isnan(y).all()), "Inf anywhere in the group poisons every block (group scale)")


def case_quantized_attention(rank, p, device, backends, chk):
    """k/v quantized on the wire: (a) equals single-process attention over the same quantized k/v
    (FlashAttention rule); (b) error vs unquantized attention within the derived bound."""
    dev = _dev(device, rank)
    b, s, h, d = 1, 8 * p, 2 * p, 32
    qf, kf, vf = (_gen(70 + i, (b, s, h, d), torch.float32, dev) for i in range(3))
    loc = [_shard(t, rank, p) for t in (qf, kf, vf)]
    exact_ref = _shard(_attention_fp64(qf, kf, vf), rank, p)
    for fmt in ("nvfp4", "fp8"):
        ua = UlyssesAttention(kv_format=fmt, tensor_scale="group", backend=backends[-1])
        with torch.no_grad():
            o = ua(*loc)
        if fmt == "nvfp4":
            kq = dequantize_nvfp4(quantize_nvfp4(kf, backend="torch"), torch.float32, backend="torch")
            vq = dequantize_nvfp4(quantize_nvfp4(vf, backend="torch"), torch.float32, backend="torch")
        else:
            kq = ref.dequantize_fp8_rows(*ref.quantize_fp8_rows(kf), torch.float32)
            vq = ref.dequantize_fp8_rows(*ref.quantize_fp8_rows(vf), torch.float32)
        exact_q = _attention_fp64(qf, kq, vq)
        err_same = (o.double().cpu() - _shard(exact_q, rank, p)).abs().max().item()
        chk.metrics[f"{fmt}_vs_same_quant"] = err_same
        chk.true(
            err_same < 1e-5,
            f"{fmt}: err vs single-process attention on the same quantized k/v {err_same:.3g}",
        )
        # the plug-in contract: an attention that takes NVFP4Tensor / FP8 (codes, scale) k and v
        # (e.g. fp4_kv_attention after FP4KVCache.update_quantized) sees the very same values
        ua_q = UlyssesAttention(
            _attention_on_quantized_kv, kv_format=fmt, kv_output=fmt, backend=backends[-1]
        )
        with torch.no_grad():
            chk.bitwise(ua_q(*loc), o, f"{fmt}: quantized k/v handed to a custom attention")
        # Derived bound. Keys: |Δlogit_ij| ≤ ε_i = scale·‖q_i‖·max_j ‖Δk_j‖ (Cauchy–Schwarz), so
        # p'_j/p_j ∈ [e^-2ε, e^2ε] and ‖Δp‖₁ ≤ e^{2ε}−1; values: o is a convex combination, so
        # |Δo| ≤ ‖Δp‖₁·max|v'| + max_j|Δv_j| (per channel).
        qd, kd, vd = qf.double().cpu(), kf.double().cpu(), vf.double().cpu()
        dk = (kd - kq.double().cpu()).norm(dim=-1).amax(dim=1, keepdim=True)  # [B, 1, H]
        eps = qd.norm(dim=-1) * dk / math.sqrt(d)  # [B, S, H]
        bound = torch.expm1(2 * eps)[..., None] * vq.double().cpu().abs().amax(dim=1, keepdim=True) + (
            vd - vq.double().cpu()
        ).abs().amax(dim=1, keepdim=True)
        excess = ((o.double().cpu() - exact_ref).abs() - _shard(bound, rank, p) - 1e-6).max().item()
        rel = ((o.double().cpu() - exact_ref).norm() / exact_ref.norm()).item()
        chk.metrics[f"{fmt}_rel_err_vs_unquantized"] = rel
        chk.true(excess <= 0, f"{fmt}: error exceeds the derived bound by {excess:.3g}")
        # sanity ceiling: the worst relative rounding error of one element (E4M3: 2^-4; NVFP4: half
        # of the top E2M1 step, 1, over the block maximum 6)
        chk.true(rel < (1 / 6 if fmt == "nvfp4" else 2**-4), f"{fmt}: rel err vs unquantized {rel:.3g}")


def case_invalid(rank, p, device, backends, chk):
    """Bad shapes raise the same ValueError on every rank before any collective (no hang)."""
    dev = _dev(device, rank)
    bad_heads = torch.randn(1, 4, p + 1, 16, device=dev)
    chk.raises(
        lambda: ulysses_all_to_all(bad_heads, scatter_dim=2, gather_dim=1),
        ValueError,
        "divisible",
        "a2a heads % P",
    )
    chk.raises(
        lambda: quantized_all_to_all(bad_heads, scatter_dim=2, gather_dim=1, backend=backends[-1]),
        ValueError,
        "divisible",
        "quantized heads % P",
    )
    chk.raises(
        lambda: UlyssesAttention()(bad_heads, bad_heads, bad_heads),
        ValueError,
        "heads",
        "attention heads % P",
    )
    bad_tokens = torch.randn(1, 2 * p + 1, 2, 16, device=dev)
    chk.raises(
        lambda: ulysses_all_to_all(bad_tokens, scatter_dim=1, gather_dim=2),
        ValueError,
        "divisible",
        "a2a head→seq tokens % P",
    )
    chk.raises(
        lambda: quantized_all_to_all(torch.randn(1, 2, p, 20, device=dev), scatter_dim=2, gather_dim=1),
        ValueError,
        "multiple of 16",
        "NVFP4 head dim",
    )
    # rank-dependent local length: caught by the cross-rank check, on every rank
    uneven = torch.randn(1, 2 + (rank == 0), 2 * p, 16, device=dev)
    chk.raises(
        lambda: ulysses_all_to_all(uneven, scatter_dim=2, gather_dim=1, check_ranks=True),
        ValueError,
        "disagree",
        "a2a rank-dependent shape",
    )
    chk.raises(
        lambda: quantized_all_to_all(
            uneven, scatter_dim=2, gather_dim=1, check_ranks=True, backend=backends[-1]
        ),
        ValueError,
        "disagree",
        "quantized rank-dependent",
    )
    chk.raises(
        lambda: UlyssesAttention()(uneven, uneven, uneven),
        ValueError,
        "disagree",
        "attention rank-dependent (first call)",
    )
    # the group is still in step: a valid all-to-all works afterwards
    full = torch.arange(2 * p * 2 * p, dtype=torch.float32, device=dev).view(1, 2 * p, 2 * p, 1)
    y = ulysses_all_to_all(_shard(full, rank, p), scatter_dim=2, gather_dim=1)
    chk.bitwise(y, full.chunk(p, dim=2)[rank], "collective after the rejections")


def case_head_chunks(rank, p, device, backends, chk):
    """Head-group pipelining (``head_chunks``): the attention gets each group's heads with the right
    ``head_slice`` (a cache shard written through it ends up whole), the output equals
    single-process attention (FlashAttention rule), and with FP8 / NVFP4 k/v it equals attention over
    k/v quantized the same way (FP8 rows; NVFP4 with one amax scale per source rank and group)."""
    dev = _dev(device, rank)
    b, s, h, d = 1, 4 * p, 4 * p, 16
    qf, kf, vf = (_gen(90 + i, (b, s, h, d), torch.bfloat16, dev) for i in range(3))
    loc = [_shard(t, rank, p) for t in (qf, kf, vf)]
    exact = _shard(_attention_fp64(qf, kf, vf), rank, p)
    eager = _shard(sdpa_attention(qf, kf, vf), rank, p)
    for chunks in (2, 4):
        hg, seen = h // p // chunks, []
        ctx_k, ctx_v = (
            torch.full((b, s, h // p, d), float("nan"), dtype=torch.bfloat16, device=dev) for _ in range(2)
        )

        def attn(q, k, v, *, head_slice, seen=seen, ctx_k=ctx_k, ctx_v=ctx_v):
            seen.append((head_slice.start, head_slice.stop))
            ctx_k[:, :, head_slice], ctx_v[:, :, head_slice] = k, v
            return sdpa_attention(q, ctx_k[:, :, head_slice], ctx_v[:, :, head_slice])

        with torch.no_grad():
            o = UlyssesAttention(attn, head_chunks=chunks)(*loc)
        chk.true(seen == [(g * hg, (g + 1) * hg) for g in range(chunks)], f"G={chunks}: head slices {seen}")
        chk.bitwise(ctx_k, kf.chunk(p, dim=2)[rank], f"G={chunks}: k shard written through head_slice")
        chk.bitwise(ctx_v, vf.chunk(p, dim=2)[rank], f"G={chunks}: v shard written through head_slice")
        err, bound = _fa_rule(o, eager, exact)
        chk.metrics[f"head_chunks{chunks}_err"] = err
        chk.true(
            o.shape == (b, s // p, h, d) and err <= bound,
            f"G={chunks}: {tuple(o.shape)} err {err:.3g} > 2·eager err + tiny {bound:.3g}",
        )
    q32, k32, v32 = (t.float() for t in (qf, kf, vf))
    loc32 = [_shard(t, rank, p) for t in (q32, k32, v32)]
    chunks = 2

    def nvfp4_per_source_group(t):  # what the receivers decode: one scale per (source, head group)
        out = torch.empty_like(t)
        for r in range(p):
            rows = slice(r * s // p, (r + 1) * s // p)
            for g in range(chunks):
                src = t[:, rows].unflatten(2, (p, chunks, -1))[:, :, :, g].contiguous()
                dq = dequantize_nvfp4(quantize_nvfp4(src, backend="torch"), torch.float32, backend="torch")
                out[:, rows].unflatten(2, (p, chunks, -1))[:, :, :, g] = dq
        return out

    for fmt in ("fp8", "nvfp4"):
        if fmt == "fp8":
            kq, vq = (ref.dequantize_fp8_rows(*ref.quantize_fp8_rows(t), torch.float32) for t in (k32, v32))
        else:
            kq, vq = nvfp4_per_source_group(k32), nvfp4_per_source_group(v32)
        with torch.no_grad():
            o = UlyssesAttention(kv_format=fmt, head_chunks=chunks, backend=backends[-1])(*loc32)
        err = (o.double().cpu() - _shard(_attention_fp64(q32, kq, vq), rank, p)).abs().max().item()
        chk.metrics[f"head_chunks_{fmt}_err"] = err
        chk.true(err < 1e-5, f"G={chunks} {fmt}: err vs attention on the same quantized k/v {err:.3g}")
    # bad head_chunks: raised on every rank before any collective
    chk.raises(lambda: UlyssesAttention(head_chunks=3)(*loc), ValueError, "head_chunks", "(H/P) % G")
    chk.raises(
        lambda: UlyssesAttention(head_chunks=2)(*(t.requires_grad_() for t in loc32)),
        ValueError,
        "inference-only",
        "autograd with head_chunks",
    )


def case_peer(rank, p, device, backends, chk):
    """transport='peer' (stores into symmetric memory): bit-identical to the NCCL all-to-all path
    over consecutive calls (both buffer slots reused, fresh inputs each call); argument errors
    everywhere (on gloo/CPU only the errors are checked: symmetric memory needs CUDA)."""
    chk.raises(lambda: UlyssesAttention(transport="peer", kv_format="nvfp4"), ValueError, "kv_format=None",
               "peer with quantized k/v")
    chk.raises(lambda: UlyssesAttention(transport="tcp"), ValueError, "transport", "unknown transport")
    _case_kv_out_copies(rank, p, _dev(device, rank), chk)
    if device != "cuda":
        return
    dev = _dev(device, rank)
    b, s, h, d = 2, 8 * p, 3 * p, 64
    peer, nccl = UlyssesAttention(transport="peer"), UlyssesAttention()
    with torch.no_grad():
        for call in range(3):
            qf, kf, vf = (_gen(90 + 3 * call + i, (b, s, h, d), torch.bfloat16, dev) for i in range(3))
            loc = [_shard(t, rank, p) for t in (qf, kf, vf)]
            chk.bitwise(peer(*loc), nccl(*loc), f"peer == nccl, call {call}")
    _case_peer_into_window(rank, p, dev, chk, loc)
    chk.raises(lambda: peer(*(t.requires_grad_() for t in (x.float() for x in loc))), ValueError,
               "inference-only", "peer under autograd")


def _case_kv_out_copies(rank, p, dev, chk):
    """``kv_out`` / ``out`` on the all-to-all transport: the gathered k, v (this rank's heads of
    every token) land in ``kv_out`` and the attention gets those tensors; the output is written to
    ``out`` and equals the call without them; bad ``kv_out`` is refused before any collective."""
    b, s, h, d = 1, 4 * p, 2 * p, 16
    qf, kf, vf = (_gen(120 + i, (b, s, h, d), torch.float32, dev) for i in range(3))
    loc = [_shard(t, rank, p) for t in (qf, kf, vf)]
    seen = []

    def attn(q, k, v):
        seen.append((k.data_ptr(), v.data_ptr()))
        return sdpa_attention(q, k, v)

    kv = [torch.full((b, s, h // p, d), -7.0, device=dev) for _ in range(2)]
    out = torch.full((b, s // p, h, d), -7.0, device=dev)
    ua = UlyssesAttention(attn)
    with torch.no_grad():
        want = ua(*loc)
        got = ua(*loc, kv_out=kv, out=out)
        chk.bitwise(got, want, "kv_out/out output == plain output")
        chk.true(got.data_ptr() == out.data_ptr(), "output written to out")
        heads = slice(rank * h // p, (rank + 1) * h // p)
        chk.bitwise(kv[0], kf[:, :, heads], "kv_out[0] holds the gathered k")
        chk.bitwise(kv[1], vf[:, :, heads], "kv_out[1] holds the gathered v")
        chk.true(seen[-1] == (kv[0].data_ptr(), kv[1].data_ptr()), "attention got the kv_out tensors")
        chk.raises(lambda: ua(*loc, kv_out=kv[0]), TypeError, "kv_out", "kv_out not a pair")
        chk.raises(lambda: ua(*loc, kv_out=(kv[0], kv[1].half())), ValueError, "kv_out[1]", "kv_out dtype")
        chk.raises(lambda: ua(*loc, out=out[:, 1:]), ValueError, "out must", "out shape")
    chk.raises(lambda: ua(*(t.clone().requires_grad_() for t in loc), kv_out=kv), ValueError, "inference-only",
               "kv_out under autograd")


def _case_peer_into_window(rank, p, dev, chk, loc):
    """``kv_out`` / ``out``: the peer stores land in a symmetric KV window's tail and output buffer
    (nothing else of the window written), bit-identical to the NCCL path that copies them there;
    a window outside symmetric memory is refused."""
    from longlive_kernels.comm import symmetric_empty

    b, s_loc, h, d = loc[0].shape
    ctx = 5
    win = symmetric_empty((2, b, ctx + p * s_loc, h // p, d), dtype=torch.bfloat16, device=dev)
    out = symmetric_empty((b, s_loc, h, d), dtype=torch.bfloat16, device=dev)
    plain = torch.empty(2, b, ctx + p * s_loc, h // p, d, dtype=torch.bfloat16, device=dev)

    def attn(window):
        return lambda q, k, v: sdpa_attention(q, window[0], window[1])

    with torch.no_grad():
        for call in range(2):
            for w in (win, plain):
                w.fill_(-7.0)
                w[:, :, :ctx].normal_(generator=torch.Generator(device=dev).manual_seed(call))
            want = UlyssesAttention(attn(plain))(*loc, kv_out=(plain[0, :, ctx:], plain[1, :, ctx:]))
            got = UlyssesAttention(attn(win), transport="peer")(*loc, kv_out=(win[0, :, ctx:], win[1, :, ctx:]),
                                                                  out=out)
            chk.bitwise(got, want, f"peer into window == nccl, call {call}")
            chk.true(got.data_ptr() == out.data_ptr(), "peer output is the given buffer")
            chk.bitwise(win, plain, f"window after the exchange, call {call}")
            chk.true(bool((win[:, :, ctx:] != -7.0).all()), "every tail element written")
    ua = UlyssesAttention(attn(plain), transport="peer")
    with torch.no_grad():
        chk.raises(lambda: ua(*loc, kv_out=(plain[0, :, ctx:], plain[1, :, ctx:])), ValueError,
                   "symmetric_empty", "kv_out outside symmetric memory")
        chk.raises(lambda: ua(*loc, kv_out=(win[0, :, ctx + 1:], win[1, :, ctx + 1:])), ValueError,
                   "kv_out[0]", "kv_out of the wrong shape")


CASES = {
    "roundtrip": case_roundtrip,
    "attention": case_attention,
    "gradients": case_gradients,
    "quantized": case_quantized,
    "quantized_attention": case_quantized_attention,
    "invalid": case_invalid,
    "head_chunks": case_head_chunks,
    "peer": case_peer,
}


def run_cases(rank: int, world_size: int, device: str, names: list[str], backends: list[str]) -> dict:
    """Entry point on each rank: {case: {"failures": [...], "metrics": {...}}}."""
    out = {}
    for name in names:
        chk = Checker()
        try:
            CASES[name](rank, world_size, device, backends, chk)
        except Exception:  # noqa: BLE001 - reported to the parent
            chk.failures.append(f"exception: {traceback.format_exc()}")
        out[name] = {"failures": chk.failures, "metrics": chk.metrics}
        if dist.is_initialized():
            dist.barrier()
    return out
