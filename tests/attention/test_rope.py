"""Fused qk-RMSNorm + 3D RoPE: forward and backward of both backends against an fp64 reference
(FlashAttention rule vs Wan's eager path), Wan's table semantics, rotation properties, gradcheck,
opcheck, torch.compile, bad input, GPU model shapes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from longlive_kernels._backend import interpret_mode
from longlive_kernels.attention import apply_rope_3d, rope_ops
from longlive_kernels.attention import reference as ref
from longlive_kernels.attention import rope as rope_mod
from longlive_kernels.testing import poison_like

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
TRITON_DEVICE = "cuda" if torch.cuda.is_available() and not interpret_mode() else "cpu"
NORMS = ("none", "q", "k", "both")


def _max_err(out: torch.Tensor, truth: torch.Tensor) -> float:
    return (out.double() - truth.double()).abs().max().item()


def _assert_flash_rule(name, out, truth, eager):
    """err(out) ≤ 2·err(eager) + floor (4 fp32 ulps of max|truth|; the interpreter rounds bf16 as
    the GPU does, ``conftest.py``)."""
    assert out.shape == truth.shape, f"{name}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    assert not torch.isnan(out).any(), f"{name}: NaN in output (unwritten element?)"
    scale = truth.double().abs().max().item()
    floor = 4 * torch.finfo(torch.float32).eps * scale
    err, err_eager = _max_err(out, truth), _max_err(eager, truth)
    assert err <= 2 * err_eager + floor, f"{name}: err {err:.3g} > 2·eager {err_eager:.3g} + {floor:.3g}"


def _wan_eager(q, k, wq, wk, grid, frame_offset, theta, eps):
    """Wan's eager path in the input dtype: ``WanRMSNorm`` (fp32 normalize, cast, × weight) on the
    flattened heads, then ``rope_apply`` (complex fp64 multiply, cast back)."""
    outs = []
    ang = ref.rope_3d_angles(grid, q.shape[-1], frame_offset=frame_offset, theta=theta, device=q.device)
    freqs = torch.polar(torch.ones_like(ang), ang)  # [L, D/2] complex128
    for x, w in ((q, wq), (k, wk)):
        b, n, h, d = x.shape
        if w is not None:
            xf = x.reshape(b, n, h * d).float()
            x = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w.to(x.dtype)
            x = x.view(b, n, h, d)
        xc = torch.view_as_complex(x.to(torch.float64).reshape(b, n, h, d // 2, 2))
        outs.append(torch.view_as_real(xc * freqs[None, :, None, :]).flatten(3).to(q.dtype))
    return outs


def _make_inputs(seed, bsz, grid, nh, d, dtype, layout, device):
    g = torch.Generator().manual_seed(seed)
    n_tok = grid[0] * grid[1] * grid[2]
    if layout == "qkv":  # slices of a fused QKV projection [B, L, 3, NH, D]
        qkv = torch.randn(bsz, n_tok, 3, nh, d, generator=g) * 1.5
        q, k = qkv[:, :, 0], qkv[:, :, 1]
    elif layout == "heads_major":  # [B, NH, L, D] transposed to [B, L, NH, D]
        q = torch.randn(bsz, nh, n_tok, d, generator=g).transpose(1, 2)
        k = torch.randn(bsz, nh, n_tok, d, generator=g).transpose(1, 2)
    else:
        q, k = torch.randn(bsz, n_tok, nh, d, generator=g), torch.randn(bsz, n_tok, nh, d, generator=g)
    wq = torch.randn(nh * d, generator=g) * 0.3 + 1
    wk = torch.randn(nh * d, generator=g) * 0.3 + 1
    return (
        q.to(device=device, dtype=dtype),
        k.to(device=device, dtype=dtype),
        wq.to(device=device, dtype=dtype),
        wk.to(device=device, dtype=dtype),
    )


def _check(
    seed,
    bsz,
    grid,
    nh,
    d,
    dtype,
    layout,
    norm,
    frame_offset,
    theta,
    backend,
    device,
    monkeypatch,
    weight_grad=True,
):
    eps = 1e-6
    q, k, wq, wk = _make_inputs(seed, bsz, grid, nh, d, dtype, layout, device)
    wq = wq if norm in ("q", "both") else None
    wk = wk if norm in ("k", "both") else None
    monkeypatch.setattr(
        rope_ops, "_new_out", lambda s, dt, dev: poison_like(torch.empty(s, dtype=dt, device=dev))
    )

    def leaves(cast=None):
        out = []
        for t, want in zip((q, k, wq, wk), (True, True, weight_grad, weight_grad)):
            if t is None:
                out.append(None)
                continue
            t = t.detach().double() if cast else t.detach().clone()
            out.append(t.requires_grad_(want))
        return out

    a, e, t = leaves(), leaves(), leaves(torch.float64)
    kw = {"grid": grid, "frame_offset": frame_offset, "theta": theta, "eps": eps}
    outs = apply_rope_3d(a[0], a[1], norm_weight_q=a[2], norm_weight_k=a[3], backend=backend, **kw)
    eagers = _wan_eager(*e, grid, frame_offset, theta, eps)
    truths = ref.apply_rope_3d(t[0], t[1], norm_weight_q=t[2], norm_weight_k=t[3], **kw)
    for name, o, ea, tr in zip(("q", "k"), outs, eagers, truths):
        assert o.dtype == dtype and o.is_contiguous() and o.shape == q.shape
        _assert_flash_rule(f"{name}_out", o, tr, ea)

    gen = torch.Generator().manual_seed(seed + 1)
    grads = [torch.randn(o.shape, generator=gen).to(device=device, dtype=dtype) for o in outs]
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(eagers, grads)
    torch.autograd.backward(truths, [gr.double() for gr in grads])
    for name, x, ea, tr in zip(("q", "k", "norm_weight_q", "norm_weight_k"), a, e, t):
        if x is None or not x.requires_grad:
            continue
        assert x.grad is not None and x.grad.dtype == x.dtype, name
        _assert_flash_rule(f"d{name}", x.grad, tr.grad, ea.grad)


# ---- forward + backward vs fp64 ----------------------------------------------------------------


@given(
    seed=st.integers(0, 2**31 - 1),
    bsz=st.integers(1, 2),
    grid=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4)),
    nh=st.sampled_from([1, 2, 3, 5, 6]),  # 3 and 6: three tiles of 1 and 2 heads; 5: one padded tile
    d=st.sampled_from([6, 8, 12, 16, 20, 32]),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["contiguous", "qkv", "heads_major"]),
    norm=st.sampled_from(NORMS),
    frame_offset=st.sampled_from([0, 3, 1023, 1500, 123457]),
    theta=st.sampled_from([10000.0, 256.0]),
    weight_grad=st.booleans(),
)
@example(
    seed=1,
    bsz=2,
    grid=(3, 2, 3),
    nh=3,
    d=32,
    dtype=torch.bfloat16,
    layout="qkv",
    norm="both",
    frame_offset=1500,
    theta=10000.0,
    weight_grad=True,
)
def test_triton_matches_fp64_reference(
    seed, bsz, grid, nh, d, dtype, layout, norm, frame_offset, theta, weight_grad
):
    with pytest.MonkeyPatch.context() as mp:
        _check(
            seed,
            bsz,
            grid,
            nh,
            d,
            dtype,
            layout,
            norm,
            frame_offset,
            theta,
            "triton",
            TRITON_DEVICE,
            mp,
            weight_grad,
        )


@given(
    seed=st.integers(0, 2**31 - 1),
    grid=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    d=st.sampled_from([6, 12, 32]),
    dtype=st.sampled_from(DTYPES),
    norm=st.sampled_from(NORMS),
    frame_offset=st.sampled_from([0, 1500]),
)
def test_torch_backend_matches_fp64_reference(seed, grid, d, dtype, norm, frame_offset):
    with pytest.MonkeyPatch.context() as mp:
        _check(seed, 2, grid, 2, d, dtype, "qkv", norm, frame_offset, 10000.0, "torch", "cpu", mp)


def test_many_tokens_per_program(monkeypatch):
    """Many tokens per program (the pipelined round-robin loop over a long run, a ragged split)."""
    _check(
        4,
        1,
        (5, 3, 7),
        2,
        12,
        torch.float32,
        "qkv",
        "both",
        2000,
        10000.0,
        "triton",
        TRITON_DEVICE,
        monkeypatch,
    )


@pytest.mark.parametrize("progs_per_sm, stages", [(1, 2), (5, 3), (16, 4)])
def test_autotuned_launch_path(monkeypatch, progs_per_sm, stages):
    """The GPU launch path (autotune grid lambda, grid read back from best_config, partial slots
    sized from the configs; 5 programs over 12 tokens give a ragged round-robin split, 16 is capped
    at one program per token) with a one-config autotuner, which the interpreter can run."""
    import triton

    def one_config(kernel, bwd):
        return triton.autotune(
            configs=[triton.Config({"PROGS_PER_SM": progs_per_sm, "STAGES": stages}, num_warps=4)],
            key=rope_ops._KEY,
        )(kernel)

    monkeypatch.setattr(rope_ops, "_tuned", one_config)
    _check(
        6, 2, (3, 2, 2), 2, 12, torch.float32, "qkv", "both", 9, 10000.0, "triton", TRITON_DEVICE, monkeypatch
    )


# ---- semantics: Wan's tables and rotation properties ---------------------------------------------


def test_angles_match_wan_rope_params_tables():
    """Spec §1.1: tables rope_params(1024, d) for d = 44, 42, 42, token (f, y, x) takes
    [t-freqs(f + offset), h-freqs(y), w-freqs(x)]."""

    def rope_params(max_len, dim, theta=10000.0):
        return torch.outer(
            torch.arange(max_len, dtype=torch.float64),
            1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64).div(dim)),
        )

    tabs = [rope_params(1024, 44), rope_params(1024, 42), rope_params(1024, 42)]
    f, h, w, off = 3, 22, 40, 17
    ang = ref.rope_3d_angles((f, h, w), 128, frame_offset=off)
    fi, yi, xi = torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij")
    wan = torch.cat([tabs[0][fi.flatten() + off], tabs[1][yi.flatten()], tabs[2][xi.flatten()]], dim=-1)
    assert ref.rope_3d_split(128) == (44, 42, 42)
    assert torch.equal(ang, wan)
    cos, sin = rope_mod.rope_tables(f, h, w, 128, off, 10000.0, torch.device("cpu"))
    assert cos.shape == (f + h + w, 64) and cos.dtype == torch.float32
    assert torch.equal(cos[:f, :22], tabs[0][off : off + f].cos().float())
    assert torch.equal(sin[f + h :, 43:], tabs[2][:w].sin().float())


def test_rotation_preserves_pair_norms_and_relative_positions():
    """A rotation keeps every pair's norm, and q·k depends on frame differences only: a common
    frame_offset (SP slice, AR chunk start) leaves every attention score unchanged."""
    q, k, _, _ = _make_inputs(0, 1, (4, 2, 3), 2, 24, torch.float64, "qkv", "cpu")
    grid = (4, 2, 3)
    q0, k0 = apply_rope_3d(q, k, grid=grid, backend="torch")
    q1, k1 = apply_rope_3d(q, k, grid=grid, frame_offset=5000, backend="torch")
    pn = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)
    torch.testing.assert_close(pn(q0), pn(q))
    s0 = torch.einsum("blhd,bmhd->bhlm", q0, k0)
    s1 = torch.einsum("blhd,bmhd->bhlm", q1, k1)
    torch.testing.assert_close(s0, s1, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(q0, q1)


def test_backward_through_q_alone(triton_device):
    """k unused (no gradient reaches it, not even zeros): dq and the q-norm weight's gradient equal
    the torch backend's, dk is zero."""
    grads = []
    for backend in ("triton", "torch"):
        q, k, wq, wk = _make_inputs(4, 1, (2, 2, 3), 2, 12, torch.float32, "contiguous", triton_device)
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, wq, wk)]
        oq, _ = apply_rope_3d(leaves[0], leaves[1], grid=(2, 2, 3), norm_weight_q=leaves[2],
                              norm_weight_k=leaves[3], backend=backend)
        (oq * torch.linspace(-1, 1, oq.numel(), device=oq.device).view_as(oq)).sum().backward()
        grads.append([t.grad for t in leaves])
    for name, a, b in zip(("q", "k", "wq", "wk"), *grads):
        if b is None or not b.any():
            assert a is None or not a.any(), name
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_sp_slice_equals_full_sequence(triton_device):
    """Roping frames [2, 4) with frame_offset=2 equals rows of the full 4-frame sequence."""
    q, k, wq, wk = _make_inputs(3, 1, (4, 2, 3), 2, 12, torch.float32, "contiguous", triton_device)
    fq, fk = apply_rope_3d(q, k, grid=(4, 2, 3), norm_weight_q=wq, norm_weight_k=wk, backend="triton")
    sq, sk = apply_rope_3d(
        q[:, 12:],
        k[:, 12:],
        grid=(2, 2, 3),
        frame_offset=2,
        norm_weight_q=wq,
        norm_weight_k=wk,
        backend="triton",
    )
    torch.testing.assert_close(sq, fq[:, 12:], rtol=0, atol=0)
    torch.testing.assert_close(sk, fk[:, 12:], rtol=0, atol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_gradcheck_fp64(norm):
    q, k, wq, wk = _make_inputs(5, 2, (2, 2, 1), 2, 6, torch.float64, "qkv", "cpu")
    wq = wq if norm in ("q", "both") else None
    wk = wk if norm in ("k", "both") else None
    ins = [t.detach().clone().requires_grad_() for t in (q, k, wq, wk) if t is not None]

    def fn(*ts):
        it = iter(ts)
        qq, kk = next(it), next(it)
        w1 = next(it) if wq is not None else None
        w2 = next(it) if wk is not None else None
        return apply_rope_3d(
            qq, kk, grid=(2, 2, 1), frame_offset=1030, norm_weight_q=w1, norm_weight_k=w2, backend="torch"
        )

    assert torch.autograd.gradcheck(fn, tuple(ins), eps=1e-6, atol=1e-8)


# ---- torch.library: opcheck, torch.compile -------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(triton_device, backend):
    device = "cpu" if backend == "torch" else triton_device
    q, k, wq, wk = _make_inputs(2, 2, (2, 1, 3), 2, 12, torch.float32, "qkv", device)
    ops = torch.ops.longlive_kernels
    grid = (2, 1, 3, 1500, 10000.0, 1e-6, backend)
    for w1, w2 in ((wq, wk), (None, None), (wq, None)):
        args = [t.detach().requires_grad_() if t is not None else None for t in (q, k, w1, w2)]
        torch.library.opcheck(ops.rope_3d.default, (*args, *grid))
        g = torch.randn(2, 6, 2, 12, device=device)
        # the forward's per-token 1/rms ([2, B, L] from Triton with a weight, else empty)
        stats = ops.rope_3d.default(q, k, w1, w2, *grid)[2]
        torch.library.opcheck(
            ops.rope_3d_backward.default,
            (g, g.clone(), q if w1 is not None else None, k if w2 is not None else None, w1, w2, stats,
             *grid),
        )


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compile_fullgraph_no_graph_break(triton_device, backend):
    device = "cpu" if backend == "torch" else triton_device
    q, k, wq, wk = _make_inputs(8, 1, (2, 2, 2), 2, 12, torch.float32, "contiguous", device)
    qkv = torch.stack([q, k, q * 0.5], dim=2).requires_grad_()

    def attn_inputs(qkv, wq, wk, offset):
        qq, kk = apply_rope_3d(
            qkv[:, :, 0],
            qkv[:, :, 1],
            grid=(2, 2, 2),
            frame_offset=offset,
            norm_weight_q=wq,
            norm_weight_k=wk,
            backend=backend,
        )
        return (qq * kk).sum(-1) + qkv[:, :, 2].sum(-1)

    torch._dynamo.reset()
    compiled = torch.compile(attn_inputs, fullgraph=True, backend="aot_eager")
    for offset in (0, 7, 2048):
        ins_e = [t.detach().clone().requires_grad_() for t in (qkv, wq, wk)]
        ins_c = [t.detach().clone().requires_grad_() for t in (qkv, wq, wk)]
        out_e = attn_inputs(*ins_e, offset)
        out_c = compiled(*ins_c, offset)
        torch.testing.assert_close(out_c, out_e)
        out_e.square().sum().backward()
        out_c.square().sum().backward()
        for a, b in zip(ins_c, ins_e):
            torch.testing.assert_close(a.grad, b.grad)


# ---- bad input -----------------------------------------------------------------------------------

_Q = torch.randn(1, 12, 2, 12)


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: apply_rope_3d(_Q, _Q, grid=(2, 2, 2)), ValueError, "F·H·W = 8 tokens but q/k have L = 12"),
        (
            lambda: apply_rope_3d(torch.randn(1, 12, 2, 11), torch.randn(1, 12, 2, 11), grid=(2, 2, 3)),
            ValueError,
            "head_dim must be even",
        ),
        (
            lambda: apply_rope_3d(torch.randn(1, 12, 2, 4), torch.randn(1, 12, 2, 4), grid=(2, 2, 3)),
            ValueError,
            ">= 6",
        ),
        (lambda: apply_rope_3d(_Q, torch.randn(1, 12, 3, 12), grid=(2, 2, 3)), ValueError, "same shape"),
        (lambda: apply_rope_3d(_Q[0], _Q[0], grid=(2, 2, 3)), ValueError, "q must have 4 dims"),
        (lambda: apply_rope_3d(_Q.int(), _Q, grid=(2, 2, 3)), TypeError, "q must have dtype"),
        (
            lambda: apply_rope_3d(_Q.double().to(TRITON_DEVICE), _Q.double().to(TRITON_DEVICE), grid=(2, 2, 3),
                                  backend="triton"),
            TypeError,
            "dtype",
        ),
        (lambda: apply_rope_3d(_Q, _Q, grid=(6, 2)), ValueError, r"grid must be a tuple \(F, H, W\)"),
        (lambda: apply_rope_3d(_Q, _Q, grid=(2, 2, 3.0)), TypeError, r"grid\[2\] must be an int"),
        (lambda: apply_rope_3d(_Q, _Q, grid=(-2, -2, 3)), ValueError, "positive"),
        (
            lambda: apply_rope_3d(_Q, _Q, grid=(2, 2, 3), frame_offset=1.5),
            TypeError,
            "frame_offset must be an int",
        ),
        (lambda: apply_rope_3d(_Q, _Q, grid=(2, 2, 3), theta=0.0), ValueError, "theta"),
        (lambda: apply_rope_3d(_Q, _Q, grid=(2, 2, 3), eps=-1.0), ValueError, "eps"),
        (
            lambda: apply_rope_3d(_Q, _Q, grid=(2, 2, 3), norm_weight_q=torch.ones(12)),
            ValueError,
            r"norm_weight_q must have shape \[heads·head_dim\] = \[24\]",
        ),
        (
            lambda: apply_rope_3d(_Q, _Q, grid=(2, 2, 3), norm_weight_k=torch.ones(24, dtype=torch.int32)),
            TypeError,
            "norm_weight_k must have dtype",
        ),
        (lambda: apply_rope_3d(_Q, _Q, grid=(2, 2, 3), backend="cuda"), ValueError, "backend"),
        (lambda: apply_rope_3d(None, _Q, grid=(2, 2, 3)), TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_errors(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


# ---- GPU: model shapes ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("norm", ["both", "none"])
@pytest.mark.parametrize("frame_offset", [0, 1500])
def test_gpu_model_shapes(norm, frame_offset, monkeypatch):
    """5B self-attention: q/k [1, 7040, 24, 128] bf16 slices of a fused QKV, grid (8, 22, 40)."""
    _check(
        2024,
        1,
        (8, 22, 40),
        24,
        128,
        torch.bfloat16,
        "qkv",
        norm,
        frame_offset,
        10000.0,
        "triton",
        "cuda",
        monkeypatch,
    )


@pytest.mark.gpu
def test_gpu_batch_two_and_fp32(monkeypatch):
    _check(
        7,
        2,
        (2, 22, 40),
        24,
        128,
        torch.float32,
        "heads_major",
        "both",
        64,
        10000.0,
        "triton",
        "cuda",
        monkeypatch,
    )


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(off_a=st.integers(0, 4000), off_b=st.integers(0, 4000), seed=st.integers(0, 2**31 - 1))
@example(off_a=0, off_b=8, seed=1)
def test_fixed_address_tables_follow_set_offset(triton_device, off_a, off_b, seed):
    """Kernels launched inside ``RopeTableBuffers.active()`` read the buffers (same addresses at any
    offset); after ``set_offset(b)`` they hold offset b's tables exactly, so a CUDA graph captured at
    offset a replays correctly at b."""
    grid, nh, d = (2, 3, 5), 3, 32
    q, k, wq, wk = _make_inputs(seed, 1, grid, nh, d, torch.float32, "plain", triton_device)
    buffers = rope_ops.RopeTableBuffers()
    buffers.set_offset(off_a)
    with buffers.active():
        first = rope_ops.rope_tables(*grid, d, off_a, 10000.0, torch.device(triton_device))
        apply_rope_3d(q, k, grid=grid, frame_offset=off_a, norm_weight_q=wq, norm_weight_k=wk, backend="triton")
    addresses = [t.data_ptr() for t in first]
    buffers.set_offset(off_b)
    with buffers.active():
        again = rope_ops.rope_tables(*grid, d, off_b, 10000.0, torch.device(triton_device))
        got = apply_rope_3d(q, k, grid=grid, frame_offset=off_b, norm_weight_q=wq, norm_weight_k=wk,
                            backend="triton")
        with pytest.raises(ValueError, match="frame_offset"):
            rope_ops.rope_tables(*grid, d, off_b + 1, 10000.0, torch.device(triton_device))
    assert [t.data_ptr() for t in again] == addresses
    want_tables = rope_ops.rope_tables(*grid, d, off_b, 10000.0, torch.device(triton_device))
    for buf, want in zip(again, want_tables, strict=True):
        assert torch.equal(buf, want)
    want = apply_rope_3d(q, k, grid=grid, frame_offset=off_b, norm_weight_q=wq, norm_weight_k=wk,
                         backend="triton")
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_fixed_address_tables_errors():
    buffers = rope_ops.RopeTableBuffers()
    with buffers.active(), pytest.raises(ValueError, match="set_offset"):
        rope_ops.rope_tables(2, 3, 4, 32, 0, 10000.0, torch.device("cpu"))
    with pytest.raises(TypeError, match="frame_offset"):
        buffers.set_offset(1.5)
    assert rope_ops._ACTIVE_TABLES.get() is None  # the context is left
