"""Shared by the fp4_kv_attention tests (``test_fp4_kv_attention*.py``): the kernel modules, inputs,
the fp64 oracle and the FP8 emulation.

Oracle (FlashAttention rule): err(kernel vs fp64) ≤ 2 · err(bf16 eager vs fp64) + 1e-6, where both
attend to the same keys: the cache decoded **exactly** (fp32: ``e2m1 · s_block · s_tile`` has up to 24
significant bits), plus the BF16 current chunk. The kernels attend to those exact values; an oracle
built on the cache dequantized to bf16 (``FP4KVCache.dtype``'s default) charges the kernels with the
bf16 rounding of K and V they never did (6-7e-3 at the model size, vs SDPA's own 1.7e-3: the first
GPU run's failure; ``test_emulated_gpu_rounding_meets_model_size_oracle`` reproduces it on CPU).
"""

from __future__ import annotations

import importlib

import torch

from longlive_kernels.attention import reference as ref
from longlive_kernels.testing import rel_err

attn_mod = importlib.import_module("longlive_kernels.attention.fp4_kv_attention_triton")
hopper = importlib.import_module("longlive_kernels.attention.fp4_kv_attention_hopper")
hopper_operands = importlib.import_module("longlive_kernels.attention.fp4_kv_attention_hopper_operands")
hopper_check = importlib.import_module("longlive_kernels.attention.fp4_kv_attention_hopper_check")


def _rand(seed: int, *shape: int, spread: float = 1.0, dtype=torch.bfloat16, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.exp2(
        torch.empty(*shape[:-1], 1).uniform_(-spread, spread, generator=g)
    )
    return x.to(dtype).to(device)


def _check_against_reference(out, q, kk, vv, scale=None):
    want = ref.attention(q, kk, vv, softmax_scale=scale)
    eager = ref.attention(q, kk.bfloat16(), vv.bfloat16(), softmax_scale=scale, compute_dtype=torch.bfloat16)
    err, err_eager = rel_err(out, want), rel_err(eager, want)
    assert err <= 2 * err_eager + 1e-6, f"kernel {err:.3e} vs bf16 eager {err_eager:.3e}"
    return err


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
