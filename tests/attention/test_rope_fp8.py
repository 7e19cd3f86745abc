"""The fused qk-RMSNorm + 3D RoPE writing q as FP8 E4M3 codes (``apply_rope_3d(q_fp8_scale=...)``):
every code is the RNE rounding of the exact result / scale (saturated at ±448), in any output layout,
without a write outside the output view; k is unchanged; bad input gets clear errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from longlive_kernels._backend import interpret_mode
from longlive_kernels.attention import apply_rope_3d
from longlive_kernels.attention import reference as ref

DEVICE = "cuda" if torch.cuda.is_available() and not interpret_mode() else "cpu"
NAN_CODE = 0x7F  # E4M3 NaN: a value the kernel never writes for finite inputs


def _e4m3(x: torch.Tensor) -> torch.Tensor:
    """RNE of fp64 x to E4M3 (saturating), as fp64 values. fp64 → fp32 first: a double rounding
    only within 2⁻²⁴ of a midpoint, which the caller's δ-interval covers."""
    return x.float().clamp(-448.0, 448.0).to(torch.float8_e4m3fn).double()


def _inputs(seed, bsz, grid, nh, d, dtype, norm):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    q, k = (torch.randn(bsz, n, nh, d, generator=g) * 2 for _ in range(2))
    w = torch.randn(nh * d, generator=g) * 0.5 + 1
    wq, wk = (w.to(DEVICE, dtype), (w * 0.7).to(DEVICE, dtype)) if norm else (None, None)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype), wq, wk


@given(
    seed=st.integers(0, 2**31 - 1),
    bsz=st.integers(1, 2),
    grid=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4)),
    nh=st.sampled_from([1, 3, 4, 6]),
    d=st.sampled_from([8, 16, 32]),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
    norm=st.booleans(),
    saturate=st.sampled_from([0.5, 1.0, 1.7]),  # scale = amax / (448 · saturate): > 1 saturates
    layout=st.sampled_from(["token", "heads"]),
    backend=st.sampled_from(["triton", "torch"]),
)
@example(seed=1, bsz=1, grid=(2, 2, 3), nh=24 // 8, d=32, dtype=torch.bfloat16, norm=True, saturate=1.7,
         layout="heads", backend="triton")
def test_fp8_codes_are_the_rne_of_the_exact_result(seed, bsz, grid, nh, d, dtype, norm, saturate, layout, backend):
    """Each code is E4M3-RNE of (fp64 result)/scale, up to the choice at a midpoint that the fp32
    arithmetic may tip (an interval of ±2⁻¹⁶ relative around the exact quotient; E4M3 steps are 2⁻³).
    The output view sits inside a NaN-poisoned buffer: every element of it written, nothing around it."""
    q, k, wq, wk = _inputs(seed, bsz, grid, nh, d, dtype, norm)
    kw = {"grid": grid, "frame_offset": seed % 7, "theta": 1e4, "norm_weight_q": wq, "norm_weight_k": wk}
    truth, _ = ref.apply_rope_3d(q.double(), k.double(), **{**kw, "norm_weight_q": None if wq is None else wq.double(),
                                                              "norm_weight_k": None if wk is None else wk.double()})
    scale = (truth.abs().max() / (448.0 * saturate)).float().reshape(1)
    n = q.shape[1]
    if layout == "heads":  # [B, H, L + 3, D] buffer, viewed [B, L, H, D]: a head-major window of it
        buf = torch.full((bsz, nh, n + 3, d), NAN_CODE, dtype=torch.uint8, device=DEVICE)
        out = buf.view(torch.float8_e4m3fn)[:, :, 1 : n + 1].transpose(1, 2)
    else:
        buf = torch.full((bsz, n + 2, nh, d), NAN_CODE, dtype=torch.uint8, device=DEVICE)
        out = buf.view(torch.float8_e4m3fn)[:, 1 : n + 1]
    with torch.no_grad():
        q8, ko = apply_rope_3d(q, k, backend=backend, q_fp8_scale=scale, q_fp8_out=out, **kw)
        _, k_plain = apply_rope_3d(q, k, backend=backend, **kw)
    assert q8.data_ptr() == out.data_ptr() and q8.dtype == torch.float8_e4m3fn
    assert torch.equal(ko, k_plain)
    codes = buf.view(torch.float8_e4m3fn)
    if layout == "heads":
        assert (buf[:, :, 0] == NAN_CODE).all() and (buf[:, :, n + 1 :] == NAN_CODE).all()
    else:
        assert (buf[:, 0] == NAN_CODE).all() and (buf[:, n + 1 :] == NAN_CODE).all()
    got = q8.double()
    assert not got.isnan().any(), "an element of the output view was not written"
    y = truth / scale.double()
    lo, hi = _e4m3(y * (1 - 2**-16)), _e4m3(y * (1 + 2**-16))
    ok = (got == lo) | (got == hi)
    assert ok.all(), f"{(~ok).sum().item()} codes off RNE, e.g. {got[~ok][:4].tolist()} for {y[~ok][:4].tolist()}"
    if saturate > 1:
        assert (got.abs() == 448.0).any()
    assert codes.numel() > q8.numel()


def _fp8(shape, q):
    return torch.empty(shape, dtype=torch.float8_e4m3fn, device=q.device)


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda q: {"q_fp8_out": _fp8(q.shape, q)}, ValueError, "q_fp8_scale"),
        (lambda q: {"q_fp8_scale": torch.ones(1, dtype=torch.float64, device=q.device)}, TypeError, "q_fp8_scale"),
        (lambda q: {"q_fp8_scale": torch.ones(2, device=q.device)}, ValueError, "one element"),
        (lambda q: {"q_fp8_scale": 0.5}, TypeError, "q_fp8_scale"),
        (lambda q: {"q_fp8_scale": torch.ones(1, device=q.device),
                    "q_fp8_out": torch.empty(q.shape, dtype=torch.bfloat16, device=q.device)}, TypeError, "q_fp8_out"),
        (lambda q: {"q_fp8_scale": torch.ones(1, device=q.device), "q_fp8_out": _fp8((2, *q.shape[1:]), q)},
         ValueError, "shape"),
        (lambda q: {"q_fp8_scale": torch.ones(1, device=q.device),
                    "q_fp8_out": _fp8((*q.shape[:3], 2 * q.shape[3]), q)[..., ::2]}, ValueError, "last dim"),
    ],
)
def test_bad_fp8_arguments(make, exc, words):
    q, k, wq, wk = _inputs(0, 1, (1, 2, 2), 2, 8, torch.bfloat16, True)
    with torch.no_grad(), pytest.raises(exc, match=words):
        apply_rope_3d(q, k, grid=(1, 2, 2), norm_weight_q=wq, norm_weight_k=wk, **make(q))


def test_fp8_output_refused_under_autograd():
    q, k, wq, wk = _inputs(0, 1, (1, 2, 2), 2, 8, torch.float32, True)
    q.requires_grad_(True)
    with pytest.raises(ValueError, match="inference-only"):
        apply_rope_3d(q, k, grid=(1, 2, 2), norm_weight_q=wq, norm_weight_k=wk,
                      q_fp8_scale=torch.ones(1, device=q.device))
