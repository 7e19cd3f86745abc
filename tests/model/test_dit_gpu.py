"""CausalDiT on the GPU: the full 5B model's chunked forward (BF16 and FP4 KV), a 2-block slice at the
real geometry (teacher forcing == KV cache), a 5B teacher-forcing training step; peak memory printed."""

import time

import pytest
import torch

from longlive.config import ModelConfig
from longlive.model.dit import CausalDiT
from longlive_kernels.testing import rel_err

from ._dit_helpers import _chunked, _inputs


# ---------------------------------------------------------------------------------------------
# GPU: the full 5B model
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_5b_forward_chunk_on_gpu_reports_memory():
    """Full wan2.2-ti2v-5b on random bf16 weights at 704x1280: chunks 0..3 of 7040 tokens, the last
    one attending 3 cached chunks + itself (28,160 keys), BF16 and FP4 KV. Prints peak memory."""
    cfg = ModelConfig.from_name("wan2.2-ti2v-5b")
    torch.cuda.reset_peak_memory_stats()
    with torch.device("cuda"):
        model = CausalDiT(cfg, zero_init_head=False).to(torch.bfloat16).eval()
    weights = torch.cuda.memory_allocated()
    ctx = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    for storage in ("bf16", "fp4"):
        torch.cuda.reset_peak_memory_stats()
        try:
            cache = model.make_kv_cache(1, storage=storage)
        except ValueError as exc:  # fp4 storage needs longlive_kernels.attention.FP4KVCache
            print(f"\n[5B] {storage} KV cache unavailable: {exc}")
            continue
        with torch.no_grad():
            for n in range(4):
                x = torch.randn(1, 48, 8, 44, 80, device="cuda", dtype=torch.bfloat16)
                out = model.forward_chunk(x, torch.full((1, 8), 937.0, device="cuda"), ctx, cache=cache, chunk_id=n)
        torch.cuda.synchronize()
        assert out.shape == (1, 48, 8, 44, 80) and torch.isfinite(out.float()).all()
        print(f"\n[5B] params {model.num_parameters():,} weights {weights / 2**30:.2f} GiB, "
              f"{storage} KV {getattr(cache, 'nbytes', 0) / 2**30:.2f} GiB, "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        del cache


@pytest.mark.gpu
def test_5b_slice_teacher_forcing_equals_kv_cache_on_gpu():
    """2-block slice of the 5B model at the real 704x1280 geometry, bf16, compiled flex mask vs the
    chunk-by-chunk cache (bf16 storage), 3 chunks."""
    cfg = ModelConfig.from_name("wan2.2-ti2v-5b").replace(num_layers=2)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = CausalDiT(cfg, zero_init_head=False).to(torch.bfloat16).eval()
    clean, noisy, t_noisy, ctx = (x.cuda() for x in _inputs(cfg, frames=24, dtype=torch.bfloat16))
    with torch.no_grad():
        tf = model.forward_teacher_forcing(clean, noisy, t_noisy.cuda(), ctx)
        kv = _chunked(model, clean, noisy, t_noisy.cuda(), ctx, cache=model.make_kv_cache(1, storage="bf16",
                                                                                         max_chunks=3))
        ref32 = model.float().forward_teacher_forcing(clean.float(), noisy.float(), t_noisy.cuda(), ctx.float())
    e_tf, e_kv = rel_err(tf.float(), ref32), rel_err(kv.float(), ref32)
    print(f"\n[5B slice] rel err vs fp32: teacher forcing {e_tf:.2e}, kv cache {e_kv:.2e}")
    assert e_kv <= 2 * e_tf + 1e-3


@pytest.mark.gpu
def test_5b_teacher_forcing_training_step_on_gpu_reports_memory():
    """Full 5B, bf16 weights, 16 latent frames at 704x1280 = 2 chunks → 28,160 tokens [clean ; noisy],
    compiled flex mask, gradient checkpointing: forward + backward, peak memory printed."""
    cfg = ModelConfig.from_name("wan2.2-ti2v-5b")
    with torch.device("cuda"):
        model = CausalDiT(cfg, zero_init_head=False).to(torch.bfloat16).train()
    model.gradient_checkpointing = True
    clean, noisy = (torch.randn(1, 48, 16, 44, 80, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    t = torch.tensor([[900.0] * 8 + [300.0] * 8], device="cuda")
    ctx = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.forward_teacher_forcing(clean, noisy, t, ctx)
    out.float().square().mean().backward()
    torch.cuda.synchronize()
    assert out.shape == noisy.shape and torch.isfinite(out.float()).all()
    assert model.blocks[0].self_attn.q.weight.grad is not None
    print(f"\n[5B TF] 28,160 tokens fwd+bwd (first call, incl. compile) {time.perf_counter() - t0:.1f} s, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rmsnorm_fused_on_gpu_matches_the_fp32_formula(dtype):
    """``RMSNorm`` on CUDA runs torch's fused ``F.rms_norm`` (one pass): against Wan's fp32 formula
    (x·rsqrt(mean x² + eps)·w in fp32, one rounding) every output is within one ulp of the output
    dtype, and its error against fp64 is no larger than the formula's plus that ulp. On a row of
    zeros both give zeros."""
    from longlive.model.blocks import RMSNorm

    torch.manual_seed(3)
    norm = RMSNorm(3072).cuda().to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(3072) * 0.3 + 1)
        x = (torch.randn(2, 777, 3072, device="cuda") * torch.exp2(torch.randint(-6, 7, (2, 777, 1),
                                                                                  device="cuda")) + 0.25).to(dtype)
        x[0, 5] = 0.0
        got = norm(x)
        xf = x.float()
        formula = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.float()).to(dtype)
        xd = x.double()
        truth = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()
    ulp = torch.finfo(dtype).eps * formula.double().abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((got.double() - formula.double()).abs() <= ulp).all()
    assert (got[0, 5] == 0).all()
    err_got = (got.double() - truth).abs().max().item()
    err_formula = (formula.double() - truth).abs().max().item()
    assert err_got <= err_formula + ulp.max().item()
