"""fp4_kv_attention: the Triton kernel (FP4 tiles decoded in registers) vs fp64 attention over the
dequantized cache, FP8 compute vs an FP8 emulation, the decode PTX vs the NVFP4 reference, poison
propagation, input errors, and the model size on the GPU.

Oracle (FlashAttention rule): err(kernel vs fp64) ≤ 2 · err(bf16 eager vs fp64) + 1e-6, where both
attend to the same keys (the cache decoded exactly, plus the BF16 current chunk).
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from hypothesis import example, given, settings
from hypothesis import strategies as st

from longlive_kernels.attention import FP4KVCache, fp4_kv_attention
from longlive_kernels.attention import reference as ref
from longlive_kernels.fp4 import reference as fp4_ref
from longlive_kernels.testing import cosine, rel_err

attn_mod = importlib.import_module(
    "longlive_kernels.attention.fp4_kv_attention"
)  # (the package re-exports the function)
TRITON_DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def _rand(seed: int, *shape: int, spread: float = 1.0, dtype=torch.bfloat16, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.exp2(
        torch.empty(*shape[:-1], 1).uniform_(-spread, spread, generator=g)
    )
    return x.to(dtype).to(device)


def _filled_cache(seed, *, b, h, d, t, n_chunks, max_chunks=3, device="cpu", pin=None, storage="fp4"):
    """A cache after chunks 0..n_chunks-1 (every chunk written); returns (cache, last k, last v)."""
    cache = FP4KVCache(
        num_layers=2,
        num_heads=h,
        head_dim=d,
        chunk_tokens=t,
        max_chunks=max_chunks,
        batch_size=b,
        device=device,
        dtype=torch.float32,
        storage=storage,
    )
    for n in range(n_chunks):
        cache.start_chunk(n)
        k = _rand(seed + 2 * n, b, t, h, d, spread=2.0, device=device)
        v = _rand(seed + 2 * n + 1, b, t, h, d, spread=2.0, device=device)
        cache.update(1, k, v, backend="torch" if device == "cpu" else "auto")
        if pin == n:
            cache.pin_shot_sink(n)
    return cache, k, v


def _keys(cache, k, v, with_current):
    kc, vc = cache.dequantize(1, include_current=not with_current, backend="torch")
    if with_current:
        kc, vc = torch.cat([kc.float(), k.float()], 1), torch.cat([vc.float(), v.float()], 1)
    return kc, vc


def _check_against_reference(out, q, kk, vv, scale=None):
    want = ref.attention(q, kk, vv, softmax_scale=scale)
    eager = ref.attention(q, kk.bfloat16(), vv.bfloat16(), softmax_scale=scale, compute_dtype=torch.bfloat16)
    err, err_eager = rel_err(out, want), rel_err(eager, want)
    assert err <= 2 * err_eager + 1e-6, f"kernel {err:.3e} vs bf16 eager {err_eager:.3e}"
    return err


# ---- the decode PTX, executed by a small emulator on every byte and every E4M3 scale ---------------------


def _run_ptx(asm: str, inputs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Execute the straight-line b32 PTX of the decode routine on uint32 numpy arrays."""
    regs: dict[str, np.ndarray] = {f"${i}": v.astype(np.uint32) for i, v in inputs.items()}

    def val(tok):
        tok = tok.strip()
        return np.uint32(int(tok, 0)) if tok[0].isdigit() else regs[tok]

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        a = [x.strip() for x in args.split(",")]
        if op == "shl.b32":
            r = val(a[1]) << np.uint32(int(a[2]))
        elif op == "shr.b32":
            r = val(a[1]) >> np.uint32(int(a[2]))
        elif op == "and.b32":
            r = val(a[1]) & val(a[2])
        elif op == "or.b32":
            r = val(a[1]) | val(a[2])
        elif op == "prmt.b32":
            src = np.stack([(val(x) >> np.uint32(8 * i)) & np.uint32(0xFF) for x in a[1:3] for i in range(4)])
            sel = int(a[3], 0)
            r = sum(src[(sel >> (4 * i)) & 7].astype(np.uint32) << np.uint32(8 * i) for i in range(4))
        elif op == "mul.rn.f16x2":
            x, y = val(a[1]), val(a[2])
            halves = []
            for sh in (0, 16):
                hx = ((x >> np.uint32(sh)) & np.uint32(0xFFFF)).astype(np.uint16).view(np.float16)
                hy = ((y >> np.uint32(sh)) & np.uint32(0xFFFF)).astype(np.uint16).view(np.float16)
                prod = (hx.astype(np.float64) * hy.astype(np.float64)).astype(np.float16)  # one RNE
                halves.append(prod.view(np.uint16).astype(np.uint32) << np.uint32(sh))
            r = halves[0] | halves[1]
        else:
            raise AssertionError(f"emulator does not know {op}")
        regs[a[0]] = np.asarray(r, dtype=np.uint32)
    return {int(k[1:]): v for k, v in regs.items() if k.startswith("$")}


def test_decode_ptx_is_exact_for_every_byte_and_scale():
    """fp16 bits out of ``_E2M1_F16_ASM`` == e2m1 · s · 2^-7 for all 2^32 byte words' nibbles (every
    byte value in every lane) and every finite E4M3 scale."""
    asm = attn_mod._E2M1_F16_ASM.value
    codes = np.arange(127, dtype=np.uint32)  # E4M3 codes 0..126 (0x7F is NaN)
    s = torch.from_numpy(codes.astype(np.uint8)).view(torch.float8_e4m3fn).float().numpy()
    s16 = (s * 128.0).astype(np.float16).view(np.uint16).astype(np.uint32)
    pair = s16 | (s16 << np.uint32(16))
    byte = np.arange(256, dtype=np.uint32)
    word = (
        byte[None, :]
        | ((255 - byte[None, :]) << 8)
        | (((byte[None, :] * 7) % 256) << 16)
        | (((byte[None, :] * 13 + 5) % 256) << 24)
    )
    word = np.broadcast_to(word, (127, 256)).ravel()
    pairs = np.broadcast_to(pair[:, None], (127, 256)).ravel()
    out = _run_ptx(asm, {4: word, 5: pairs, 6: pairs, 7: pairs, 8: pairs})
    lut = fp4_ref.e2m1_values().numpy()
    sv = np.broadcast_to(s[:, None], (127, 256)).ravel()
    for j in range(4):
        bj = (word >> np.uint32(8 * j)) & np.uint32(0xFF)
        for half, nib in ((0, bj & np.uint32(0xF)), (16, bj >> np.uint32(4))):
            want = (lut[nib] * sv * 2.0**-7).astype(np.float16)  # exact: no rounding happens
            assert (lut[nib] * sv * 2.0**-7 == want.astype(np.float64)).all()
            got = ((out[j] >> np.uint32(half)) & np.uint32(0xFFFF)).astype(np.uint16)
            assert np.array_equal(got, want.view(np.uint16)), f"byte lane {j}, half {half}"


# ---- the kernel vs fp64 attention (CPU interpreter: small shapes) ----------------------------------------


@given(
    seed=st.integers(0, 2**31 - 1),
    t=st.sampled_from([16, 40, 48]),
    n_chunks=st.integers(1, 4),
    lq=st.sampled_from([5, 16, 40]),
    with_current=st.booleans(),
    h=st.sampled_from([1, 2]),
    b=st.sampled_from([1, 2]),
)
@settings(max_examples=6)
@example(seed=1, t=48, n_chunks=4, lq=40, with_current=True, h=2, b=1)
@example(seed=2, t=40, n_chunks=3, lq=16, with_current=False, h=1, b=2)
def test_kernel_matches_fp64_attention_on_dequantized_cache(seed, t, n_chunks, lq, with_current, h, b):
    cache, k, v = _filled_cache(
        seed, b=b, h=h, d=64, t=t, n_chunks=n_chunks, device=TRITON_DEV, pin=1 if n_chunks > 2 else None
    )
    q = _rand(seed + 99, b, lq, h, 64, device=TRITON_DEV)
    if with_current:
        k, v = k[:, : min(t, lq + 3)].contiguous(), v[:, : min(t, lq + 3)].contiguous()  # any Lc
    kw = dict(current_k=k, current_v=v) if with_current else {}
    out = fp4_kv_attention(q, cache, 1, backend="triton", **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    kk, vv = _keys(cache, k, v, with_current)
    _check_against_reference(out.cpu(), q.cpu(), kk.cpu(), vv.cpu())


def test_kernel_bf16_storage_and_softmax_scale():
    cache, k, v = _filled_cache(5, b=1, h=2, d=64, t=32, n_chunks=3, device=TRITON_DEV, storage="bf16")
    q = _rand(6, 1, 20, 2, 64, device=TRITON_DEV)
    out = fp4_kv_attention(q, cache, 1, current_k=k, current_v=v, softmax_scale=0.05, backend="triton")
    kk, vv = _keys(cache, k, v, True)
    _check_against_reference(out.cpu(), q.cpu(), kk.cpu(), vv.cpu(), scale=0.05)


def _fp8_emulation(q, k, v):
    """fp64 attention with Q, K, V rounded to E4M3 after a per-tensor power-of-two-free scaling to 256,
    and P·256 rounded to E4M3: the error an FP8 attention cannot avoid."""

    def f8(x):
        s = 256.0 / x.abs().amax()
        return (x * s).to(torch.float8_e4m3fn).double() / s

    q, k, v = f8(q.double()), f8(k.double()), f8(v.double())
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    p = torch.exp(s - s.amax(-1, keepdim=True))
    denom = p.sum(-1, keepdim=True)
    p = (p * 256).to(torch.float8_e4m3fn).double() / 256
    return torch.einsum("bhqk,bkhd->bqhd", p / denom, v)


@given(seed=st.integers(0, 2**31 - 1), t=st.sampled_from([32, 40, 64]), with_current=st.booleans())
@settings(max_examples=4)
@example(seed=3, t=64, with_current=False)
def test_fp8_compute_error_is_fp8_rounding(seed, t, with_current):
    cache, k, v = _filled_cache(seed, b=1, h=2, d=64, t=t, n_chunks=3, device=TRITON_DEV)
    q = _rand(seed + 7, 1, 32, 2, 64, device=TRITON_DEV)
    kw = dict(current_k=k, current_v=v) if with_current else {}
    out = fp4_kv_attention(q, cache, 1, compute="fp8", backend="triton", **kw).cpu()
    kk, vv = _keys(cache, k, v, with_current)
    want = ref.attention(q.cpu(), kk.cpu(), vv.cpu())
    emul = _fp8_emulation(q.cpu(), kk.cpu(), vv.cpu())
    assert rel_err(out, want) <= 2 * rel_err(emul, want) + 1e-3
    assert cosine(out, want) > 0.99


def test_torch_backend_is_dequantize_then_sdpa():
    cache, k, v = _filled_cache(8, b=1, h=2, d=32, t=24, n_chunks=3)
    q = _rand(9, 1, 24, 2, 32)
    out = fp4_kv_attention(q, cache, 1, current_k=k, current_v=v, backend="torch")
    kk, vv = _keys(cache, k, v, True)
    _check_against_reference(out, q, kk, vv)


def test_zero_tiles_and_nan_poison():
    cache, k, v = _filled_cache(10, b=1, h=1, d=64, t=32, n_chunks=2, device=TRITON_DEV)
    cache.start_chunk(2)
    zeros = torch.zeros(1, 32, 1, 64, dtype=torch.bfloat16, device=TRITON_DEV)
    cache.update(1, zeros, zeros, backend="torch" if TRITON_DEV == "cpu" else "auto")  # amax 0: scale 0
    q = _rand(11, 1, 16, 1, 64, device=TRITON_DEV)
    out = fp4_kv_attention(q, cache, 1, backend="triton")
    kk, vv = _keys(cache, k, v, False)
    _check_against_reference(out.cpu(), q.cpu(), kk.cpu(), vv.cpu())
    v_nan = _rand(12, 1, 32, 1, 64, device=TRITON_DEV)
    v_nan[0, 3, 0, 5] = float("nan")
    cache.update(1, k, v_nan, chunk_id=0, backend="torch" if TRITON_DEV == "cpu" else "auto")
    assert fp4_kv_attention(q, cache, 1, backend="triton").isnan().all()  # every query sees the NaN block


# ---- bad input ------------------------------------------------------------------------------------------


def _small():
    cache, k, v = _filled_cache(0, b=1, h=2, d=64, t=16, n_chunks=2)
    return cache, _rand(1, 1, 16, 2, 64), k, v


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda c, q, k, v: fp4_kv_attention(q.float(), c, 1), TypeError, "dtype"),
        (lambda c, q, k, v: fp4_kv_attention(q[:, :, :1], c, 1), ValueError, "does not match"),
        (lambda c, q, k, v: fp4_kv_attention(q[..., :32], c, 1), ValueError, "does not match"),
        (lambda c, q, k, v: fp4_kv_attention(q[0], c, 1), ValueError, "dims"),
        (lambda c, q, k, v: fp4_kv_attention(q, c, 2), ValueError, "layer"),
        (lambda c, q, k, v: fp4_kv_attention(q, c, 1, current_k=k), ValueError, "both"),
        (
            lambda c, q, k, v: fp4_kv_attention(q, c, 1, current_k=k.half(), current_v=v.half()),
            TypeError,
            "dtype",
        ),
        (
            lambda c, q, k, v: fp4_kv_attention(q, c, 1, current_k=k[:, :, :1], current_v=v[:, :, :1]),
            ValueError,
            "current_k",
        ),
        (lambda c, q, k, v: fp4_kv_attention(q, c, 1, compute="fp4"), ValueError, "compute"),
        (lambda c, q, k, v: fp4_kv_attention(q, c, 1, backend="cuda"), ValueError, "backend"),
        (lambda c, q, k, v: fp4_kv_attention(q, None, 1), TypeError, "FP4KVCache"),
        (
            lambda c, q, k, v: fp4_kv_attention(
                q, FP4KVCache(num_layers=1, num_heads=2, head_dim=64, chunk_tokens=8), 0
            ),
            ValueError,
            "no current chunk",
        ),
        (
            lambda c, q, k, v: fp4_kv_attention(
                q,
                FP4KVCache(num_layers=1, num_heads=2, head_dim=64, chunk_tokens=8, storage="bf16"),
                0,
                compute="fp8",
                current_k=k,
                current_v=v,
            ),
            ValueError,
            "storage",
        ),
    ],
)
def test_bad_input_errors(call, exc, words):
    cache, q, k, v = _small()
    with pytest.raises(exc, match=words):
        call(cache, q, k, v)


# ---- GPU: model size ------------------------------------------------------------------------------------


@triton.jit
def _decode_kernel(
    data_ptr,
    scale_ptr,
    out_ptr,
    BN: tl.constexpr,
    D: tl.constexpr,
    USE_ASM: tl.constexpr,
    OUT_FP8: tl.constexpr,
):
    row = tl.arange(0, BN).to(tl.int64)
    x = attn_mod._fp4_tile(data_ptr, scale_ptr, row, row >= 0, D, BN, False, USE_ASM, OUT_FP8, False)
    tl.store(out_ptr + row[:, None] * D + tl.arange(0, D)[None, :], x.to(tl.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("out_fp8", [False, True])
def test_gpu_asm_decode_equals_portable_decode(out_fp8):
    """Every byte value with every finite E4M3 scale: the inline-PTX decode == the portable one."""
    data = torch.arange(256, dtype=torch.uint8).view(4, 64).repeat(128, 1).cuda()  # every byte, per 4 rows
    code = (torch.arange(512) // 4).clamp(max=127).to(torch.uint8)  # E4M3 codes 0..126, then 0x7F -> 0
    code[code == 127] = 0
    scale = code[:, None].expand(512, 8).contiguous().cuda()
    outs = []
    for use_asm in (True, False):
        out = torch.empty(512, 128, device="cuda")
        _decode_kernel[(1,)](data, scale, out, BN=512, D=128, USE_ASM=use_asm, OUT_FP8=out_fp8)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    lut = fp4_ref.e2m1_values("cuda")
    codes4 = torch.stack([data & 15, data >> 4], -1).view(512, 128).long()
    want = lut[codes4] * scale.view(torch.float8_e4m3fn).float().repeat_interleave(16, -1) / 128
    if out_fp8:
        want = (want * 16).to(torch.float8_e4m3fn).float()
    assert torch.equal(outs[0], want)


@pytest.mark.gpu
@pytest.mark.parametrize("compute", ["bf16", "fp8"])
@pytest.mark.parametrize("with_current", [True, False])
def test_gpu_model_size_vs_sdpa(compute, with_current):
    """Lq = 7040, 3 context chunks + current (Lk = 28160), 24 heads × 128: vs fp64 on the
    dequantized cache; bf16 compute within 2× of bf16 SDPA's own error."""
    cache = FP4KVCache(
        num_layers=1, num_heads=24, head_dim=128, chunk_tokens=7040, max_chunks=4, device="cuda"
    )
    for n in range(4):
        cache.start_chunk(n)
        k = _rand(2 * n, 1, 7040, 24, 128, spread=2.0, device="cuda")
        v = _rand(2 * n + 1, 1, 7040, 24, 128, spread=2.0, device="cuda")
        cache.update(0, k, v)
    q = _rand(100, 1, 7040, 24, 128, device="cuda")
    kw = dict(current_k=k, current_v=v) if with_current else {}
    out = fp4_kv_attention(q, cache, 0, compute=compute, **kw)
    kk, vv = cache.dequantize(0, include_current=not with_current)
    if with_current:
        kk, vv = torch.cat([kk, k], 1), torch.cat([vv, v], 1)

    def sub(x):  # fp64 reference on 3 heads x the first 1024 queries
        return x[:, :, [0, 7, 23]].contiguous()

    def subq(x):
        return sub(x[:, :1024])

    want = ref.attention(subq(q), sub(kk), sub(vv), compute_dtype=torch.float64, block_q=256)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), kk.bfloat16().transpose(1, 2), vv.bfloat16().transpose(1, 2)
    ).transpose(1, 2)
    err, err_sdpa = rel_err(subq(out), want), rel_err(subq(sdpa), want)
    if compute == "bf16":
        assert err <= 2 * err_sdpa + 1e-6, (err, err_sdpa)
    else:
        emul = _fp8_emulation(subq(q)[:, :256], sub(kk), sub(vv))
        want256 = want[:, :256]
        assert err <= 2 * rel_err(emul, want256) + 1e-3 and cosine(subq(out), want) > 0.99, (err, err_sdpa)


@pytest.mark.gpu
def test_gpu_cuda_graph_update_and_attention_across_chunks():
    """update + fp4_kv_attention captured once (chunk 3, context [0, 1, 2]) and replayed for later
    chunks: slots and the context length come from the device table, so the replay equals eager."""
    t, h = 256, 4
    cache = FP4KVCache(num_layers=1, num_heads=h, head_dim=128, chunk_tokens=t, max_chunks=4, device="cuda")
    q, k, v = (torch.empty(1, t, h, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for n in range(4):
        cache.start_chunk(n)
        (
            q.copy_(_rand(3 * n, 1, t, h, 128)),
            k.copy_(_rand(3 * n + 1, 1, t, h, 128)),
            v.copy_(_rand(3 * n + 2, 1, t, h, 128)),
        )
        cache.update(0, k, v)
    out = fp4_kv_attention(q, cache, 0, current_k=k, current_v=v)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        cache.update(0, k, v)
        out = fp4_kv_attention(q, cache, 0, current_k=k, current_v=v)
    for n in range(4, 8):
        cache.start_chunk(n)
        if n == 5:
            cache.pin_shot_sink(5)
        (
            q.copy_(_rand(3 * n, 1, t, h, 128)),
            k.copy_(_rand(3 * n + 1, 1, t, h, 128)),
            v.copy_(_rand(3 * n + 2, 1, t, h, 128)),
        )
        g.replay()
        eager = fp4_kv_attention(q, cache, 0, current_k=k, current_v=v)
        assert torch.equal(out, eager), n
