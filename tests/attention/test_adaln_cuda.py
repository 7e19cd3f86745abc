"""The CUDA adaLN forward (``csrc/attention/adaln.cu``, ``backend="cuda"``, what ``"auto"`` runs for bf16
rows on a GPU): forward (and the Triton backward behind it) against the fp64 reference under the
FlashAttention rule of ``test_adaln.py``; FP8 h bit for bit ``quantize_fp8_rowwise`` of its own bf16 h;
agreement with the Triton kernel (only the row sums' order differs); poisoned outputs; the inputs it
does not take. GPU only, except the CPU checks of the backend choice."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longlive_kernels._backend import has_cuda_extension
from longlive_kernels.attention import adaln_modulate, adaln_ops, gated_residual_adaln
from longlive_kernels.attention.adaln import _norm_backend

from .test_adaln import _check_variant
from .test_adaln_fp8 import _check as _check_fp8

NORM_VARIANTS = ("adaln", "residual_adaln", "residual_adaln_ungated", "residual_ln", "residual_ln_ungated")
# one lane's vectors cover C ≤ 256·iters; widths around each template boundary and the model's 3072
WIDTHS = (8, 24, 256, 264, 520, 1536, 1544, 3072, 3080, 4096)

gpu_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and has_cuda_extension()),
                              reason="needs a GPU and the compiled extension")


def test_auto_takes_triton_where_cuda_does_not_apply(monkeypatch):
    """The choice alone (no GPU needed): fp16 rows or C > 4096 go to Triton under "auto" and raise
    under an explicit "cuda"."""
    monkeypatch.setattr(adaln_ops, "cuda_op_available", lambda name: True)
    x16 = torch.empty(1, 2, 64, dtype=torch.float16, device="meta")
    wide = torch.empty(1, 2, 4104, dtype=torch.bfloat16, device="meta")
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
    assert _norm_backend("cuda", "auto", "adaln_modulate", x16, None) == "triton"
    assert _norm_backend("cuda", "auto", "adaln_modulate", wide, None) == "triton"
    assert _norm_backend("triton", "triton", "adaln_modulate", wide, None) == "triton"
    with pytest.raises(ValueError, match=r"backend='cuda' takes bf16 x.*got torch.float16 x with C = 64"):
        _norm_backend("cuda", "cuda", "adaln_modulate", x16, None)
    with pytest.raises(ValueError, match="C <= 4096"):
        _norm_backend("cuda", "cuda", "gated_residual_adaln", wide, wide)


def test_cuda_backend_on_cpu_tensors_raises():
    x = torch.randn(1, 4, 16, dtype=torch.bfloat16)
    e = torch.randn(1, 2, 16)
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        adaln_modulate(x, e, e, frame_len=2, backend="cuda")


@pytest.mark.gpu
@gpu_cuda
@given(
    seed=st.integers(0, 2**31 - 1),
    variant=st.sampled_from(NORM_VARIANTS),
    bsz=st.integers(1, 2),
    n_frames=st.integers(1, 3),
    frame_len=st.integers(1, 9),
    c=st.sampled_from(WIDTHS),
    mod_dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    strided=st.booleans(),
    offset=st.sampled_from([0.5, 64.0]),
)
@settings(max_examples=60, deadline=None)
def test_gpu_cuda_matches_fp64_reference(seed, variant, bsz, n_frames, frame_len, c, mod_dtype, strided, offset):
    """bf16 rows of any width up to 4096, strided x, bf16 or fp32 modulation (the kernel reads fp32:
    bf16 vectors are widened exactly), a DC offset; the outputs start as NaN (poisoned)."""
    with pytest.MonkeyPatch.context() as mp:
        _check_variant(seed, variant, bsz, n_frames, frame_len, c, torch.bfloat16, mod_dtype, strided, "cuda", "cuda",
                       mp, True, offset)


@pytest.mark.gpu
@gpu_cuda
@given(
    seed=st.integers(0, 2**31 - 1),
    variant=st.sampled_from(NORM_VARIANTS),
    bsz=st.integers(1, 2),
    n_frames=st.integers(1, 4),
    frame_len=st.integers(1, 6),
    c=st.sampled_from(WIDTHS),
)
@settings(max_examples=60, deadline=None)
def test_gpu_cuda_fp8_is_the_rowwise_quantization_of_its_h(seed, variant, bsz, n_frames, frame_len, c):
    """Exact: the FP8 launch sums each row in the bf16 launch's order, so its codes and row scales
    are ``quantize_fp8_rowwise`` of the bf16 h (rows of zeros, +Inf rows and rows near the E4M3
    limits included: ``test_adaln_fp8._inputs``)."""
    with pytest.MonkeyPatch.context() as mp:
        _check_fp8(seed, variant, bsz, n_frames, frame_len, c, torch.bfloat16, "cuda", "cuda", mp)


@pytest.mark.gpu
@gpu_cuda
@pytest.mark.parametrize("variant", NORM_VARIANTS)
def test_gpu_cuda_model_shape(variant):
    """x [1, 7040, 3072], 880 tokens per frame: reference rule, and the exact FP8 property."""
    with pytest.MonkeyPatch.context() as mp:
        _check_variant(1234, variant, 1, 8, 880, 3072, torch.bfloat16, torch.float32, False, "cuda", "cuda", mp)
        _check_fp8(7, variant, 1, 8, 880, 3072, torch.bfloat16, "cuda", "cuda", mp)


@pytest.mark.gpu
@gpu_cuda
def test_gpu_cuda_agrees_with_triton():
    """Same math, other summation order: (mean, rstd) within a few fp32 ulps; h within one bf16 ulp
    plus the fp32 ulps those carry into its terms (h = d·rstd·m + a may cancel), and equal almost
    everywhere; r (the residual: no sums) identical."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 1760, 3072, generator=g) * 2 + 3).to("cuda", torch.bfloat16)
    y = torch.randn(2, 1760, 3072, generator=g).to("cuda", torch.bfloat16)
    e = (torch.randn(2, 2, 6, 3072, generator=g) * 0.5).cuda()
    with torch.no_grad():
        ours = adaln_ops._fwd_cuda(x, y, e[:, :, 2], e[:, :, 1], e[:, :, 0], 880, 1e-6, True)
        theirs = adaln_ops._fwd_triton(x, y, e[:, :, 2], e[:, :, 1], e[:, :, 0], 880, 1e-6, True)
    assert torch.equal(ours[0], theirs[0])
    torch.testing.assert_close(ours[2], theirs[2], rtol=8 * torch.finfo(torch.float32).eps, atol=0)
    h, h_ref = ours[1].float(), theirs[1].float()
    mean, rstd = theirs[2][..., :1], theirs[2][..., 1:]
    terms = ((theirs[0].float() - mean) * rstd * (1 + e[:, :, 1].repeat_interleave(880, 1))).abs()
    terms += e[:, :, 0].repeat_interleave(880, 1).abs()
    tol = h_ref.abs() * torch.finfo(torch.bfloat16).eps + 32 * torch.finfo(torch.float32).eps * terms
    assert ((h - h_ref).abs() <= tol).all()
    assert (h != h_ref).float().mean().item() < 1e-3
    r2, h2 = gated_residual_adaln(x, y, e[:, :, 2], e[:, :, 0], e[:, :, 1], frame_len=880, backend="auto")
    assert torch.equal(r2, ours[0]) and torch.equal(h2, ours[1])  # "auto" is the CUDA kernel here


@pytest.mark.gpu
@gpu_cuda
def test_gpu_cuda_rejects_what_it_does_not_take():
    x = torch.randn(1, 4, 64, device="cuda", dtype=torch.float16)
    e = torch.randn(1, 2, 64, device="cuda")
    with pytest.raises(ValueError, match="backend='cuda' takes bf16 x"):
        adaln_modulate(x, e, e, frame_len=2, backend="cuda")
    wide = torch.randn(1, 4, 4104, device="cuda", dtype=torch.bfloat16)
    ew = torch.randn(1, 2, 4104, device="cuda")
    with pytest.raises(ValueError, match="C <= 4096"):
        adaln_modulate(wide, ew, ew, frame_len=2, backend="cuda")
    h = adaln_modulate(wide, ew, ew, frame_len=2)  # "auto": the Triton kernel
    assert h.shape == wide.shape and not h.isnan().any()
