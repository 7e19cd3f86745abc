"""Single-process tests of the quantized all-to-all kernels and of the input checks.

The P ranks are simulated: each "rank" runs the amax and pack ops on its input, the chunks are
exchanged by indexing (what ``all_to_all_single`` does), and each "rank" runs the unpack op.
The Triton kernels (interpreter on CPU) must match the reference bit for bit, and the received
NVFP4 data must equal ``quantize_nvfp4`` of the gathered tensor. The real collectives are tested
in ``test_ulysses_distributed.py``.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from longlive_kernels._backend import has_cuda_extension
from longlive_kernels.comm import UlyssesAttention, quantized_all_to_all, sdpa_attention, ulysses_all_to_all
from longlive_kernels.comm import reference as ref
from longlive_kernels.comm.quantized_all_to_all_ops import NOT_DELAYED
from longlive_kernels.fp4 import dequantize_nvfp4, quantize_nvfp4
from longlive_kernels.fp4.format import SCALE_RULES
from longlive_kernels.fp4.reference import div_rn
from longlive_kernels.testing import assert_bitwise_equal, triton_device

qa2a = importlib.import_module("longlive_kernels.comm.quantized_all_to_all")  # the module, not the function
DEV = triton_device()  # where Triton runs: cuda, or cpu under the interpreter


def _inputs(seed: int, p: int, shape, dtype, spread: float) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = []
    for _ in range(p):
        mag = torch.exp2(torch.empty(*shape).uniform_(-spread, spread, generator=g))
        x = mag * torch.randn(*shape, generator=g).sign()
        flat = x.view(-1, shape[-1])
        flat[0, :16] = 0.0  # a zero block
        xs.append(x.to(dtype))
    return xs


def _simulate(xs, sd, gd, *, fmt, dequant, tensor_scale, rule, backend, out_dtype):
    """Every simulated rank's unpacked result (on the CPU): dense tensor, or (data, scale) in the
    gathered layout. The Triton backend runs on ``DEV``, the reference on the CPU."""
    dev = DEV if backend in ("triton", "cuda") else "cpu"
    xs = [x.to(dev) for x in xs]
    p = len(xs)
    amax = []
    for x in xs:
        bits = torch.zeros(1, dtype=torch.int32, device=dev)
        qa2a._amax_op(x, bits, 0, backend)
        amax.append(bits)
    amax = torch.cat(amax)
    if tensor_scale == "group":
        amax = amax.max().expand(p)
    gs = div_rn(amax.contiguous().view(torch.float32), SCALE_RULES[rule][1])
    chunk = list(xs[0].shape)
    chunk[sd] //= p
    lay = ref.payload_layout(fmt, 1, chunk)
    sent = []
    for r, x in enumerate(xs):
        buf = torch.zeros(p, lay.chunk_bytes, dtype=torch.uint8, device=dev)
        qa2a._pack_op(x, buf, gs[r] if fmt == "nvfp4" else None, p, sd, fmt, rule, lay.data_offset(0),
                      lay.scale_offset(0), 0, backend)
        sent.append(buf)
    out_shape = list(xs[0].shape)
    out_shape[sd] //= p
    out_shape[gd] *= p
    d = out_shape[-1]
    results = []
    for r in range(p):
        recv = torch.stack([sent[j][r] for j in range(p)])
        if dequant:
            o, s = torch.full(out_shape, float("nan"), dtype=out_dtype, device=dev), None
        elif fmt == "nvfp4":
            o = torch.full([*out_shape[:-1], d // 2], 0xA5, dtype=torch.uint8, device=dev)
            s = torch.full([*out_shape[:-1], d // 16], 0xA5, dtype=torch.uint8, device=dev).view(
                torch.float8_e4m3fn
            )
        else:
            o = torch.full(out_shape, 0xA5, dtype=torch.uint8, device=dev)
            s = torch.full([*out_shape[:-1], 1], float("nan"), device=dev)
        qa2a._unpack_op(
            recv,
            o,
            s,
            p,
            gd,
            fmt,
            dequant,
            lay.data_offset(0),
            lay.scale_offset(0),
            0,
            lay.data_bytes,
            lay.scale_bytes,
            backend,
            *NOT_DELAYED,
        )
        results.append(o.cpu() if dequant else (o.cpu(), s.cpu()))
    return results, gs.cpu()


@given(
    seed=st.integers(0, 2**31 - 1),
    p=st.sampled_from([2, 4]),
    b=st.integers(1, 2),
    s_local=st.integers(1, 3),
    h_mult=st.integers(1, 2),
    nblocks=st.sampled_from([1, 2, 3, 8]),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
    fmt=st.sampled_from(["nvfp4", "fp8"]),
    rule=st.sampled_from(list(SCALE_RULES)),
    seq_to_head=st.booleans(),
)
@example(
    seed=3,
    p=2,
    b=1,
    s_local=2,
    h_mult=1,
    nblocks=8,
    dtype=torch.bfloat16,
    fmt="nvfp4",
    rule="four_over_six",
    seq_to_head=True,
)
def test_pack_unpack_bit_exact(seed, p, b, s_local, h_mult, nblocks, dtype, fmt, rule, seq_to_head):
    """Triton == reference for every byte received, and the received NVFP4/FP8 data is the
    quantization of the gathered tensor (group scale)."""
    d = 16 * nblocks
    h = p * h_mult
    shape = (b, s_local, h, d) if seq_to_head else (b, s_local * p, h_mult, d)
    sd, gd = (2, 1) if seq_to_head else (1, 2)
    xs = _inputs(seed, p, shape, dtype, 12.0 if dtype == torch.float16 else 20.0)
    got = {}
    for be in ("torch", "triton"):
        got[be] = _simulate(
            xs, sd, gd, fmt=fmt, dequant=False, tensor_scale="group", rule=rule, backend=be, out_dtype=None
        )
    gathered = ref.all_to_all_reference(xs, scatter_dim=sd, gather_dim=gd)
    for r in range(p):
        (dt, st_), (dr, sr) = got["triton"][0][r], got["torch"][0][r]
        assert_bitwise_equal(dt, dr, f"data rank {r}")
        assert_bitwise_equal(st_.view(torch.uint8), sr.view(torch.uint8), f"scale rank {r}")
        if fmt == "nvfp4":
            want = quantize_nvfp4(
                gathered[r], global_scale=got["torch"][1][0], scale_rule=rule, backend="torch"
            )
            assert_bitwise_equal(dt, want.data, "vs quantize_nvfp4 data")
            assert_bitwise_equal(
                st_.view(torch.uint8), want.scale.view(torch.uint8), "vs quantize_nvfp4 scale"
            )
        else:
            wc, ws = ref.quantize_fp8_rows(gathered[r])
            assert_bitwise_equal(dt, wc.view(torch.uint8), "vs quantize_fp8_rows codes")
            assert_bitwise_equal(st_, ws, "vs quantize_fp8_rows scales")
    # dense output in fp32 (the interpreter's bf16 cast is not faithful): per-source scales
    dense = {
        be: _simulate(
            xs,
            sd,
            gd,
            fmt=fmt,
            dequant=True,
            tensor_scale="per_source",
            rule=rule,
            backend=be,
            out_dtype=torch.float32,
        )[0]
        for be in ("torch", "triton")
    }
    sim = ref.quantized_all_to_all_reference(
        xs,
        scatter_dim=sd,
        gather_dim=gd,
        fmt=fmt,
        tensor_scale="per_source",
        scale_rule=rule,
        dtype=torch.float32,
    )
    for r in range(p):
        assert_bitwise_equal(dense["triton"][r], dense["torch"][r], f"dense rank {r}")
        assert_bitwise_equal(dense["torch"][r], sim[r], f"dense vs simulation rank {r}")


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and has_cuda_extension()), reason="needs the CUDA extension")
@given(
    seed=st.integers(0, 2**31 - 1),
    p=st.sampled_from([2, 4]),
    b=st.integers(1, 2),
    s_local=st.integers(1, 40),
    nblocks=st.sampled_from([1, 3, 8]),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
    rule=st.sampled_from(list(SCALE_RULES)),
    seq_to_head=st.booleans(),
)
def test_cuda_pack_unpack_equal_triton(seed, p, b, s_local, nblocks, dtype, rule, seq_to_head):
    """backend="cuda" (the csrc quantize kernel per destination chunk, Triton where a chunk is not a
    row-strided matrix): every received byte and every dequantized value equal the Triton
    backend's, with per-source scales (each chunk decoded with its own header)."""
    d = 16 * nblocks
    shape = (b, s_local, 2 * p, d) if seq_to_head else (b, s_local * p, 2, d)
    sd, gd = (2, 1) if seq_to_head else (1, 2)
    xs = _inputs(seed, p, shape, dtype, 12.0 if dtype == torch.float16 else 20.0)
    for dequant, out_dtype in ((False, None), (True, torch.float32), (True, torch.bfloat16)):
        got = {be: _simulate(xs, sd, gd, fmt="nvfp4", dequant=dequant, tensor_scale="per_source", rule=rule,
                             backend=be, out_dtype=out_dtype)[0] for be in ("cuda", "triton")}
        for r in range(p):
            if dequant:
                assert_bitwise_equal(got["cuda"][r], got["triton"][r], f"dense rank {r}")
            else:
                for a, c in zip(got["cuda"][r], got["triton"][r]):
                    assert_bitwise_equal(a.view(torch.uint8), c.view(torch.uint8), f"codes rank {r}")


@pytest.mark.parametrize("programs", [1, 3])
@pytest.mark.parametrize("poison", [None, "nan", "inf"])
def test_amax_grid_strides_over_every_tile(monkeypatch, programs, poison):
    """The amax kernel's few programs each stride over many row tiles: the result is max|x| (NaN
    read as +Inf) wherever the extreme value sits, including the last, ragged tile."""
    ops = importlib.import_module("longlive_kernels.comm.quantized_all_to_all_ops")
    monkeypatch.setattr(ops, "_amax_programs", lambda x: programs)
    g = torch.Generator().manual_seed(programs)
    x = torch.randn(2, 13, 3, 32, generator=g)
    for row in (0, 40, 77):  # first tile, a middle one, the ragged last tile
        y = x.clone()
        y.view(-1, 32)[row, 5] = {None: 1e3, "nan": float("nan"), "inf": float("-inf")}[poison]
        bits = torch.zeros(1, dtype=torch.int32, device=DEV)
        qa2a._amax_op(y.to(DEV), bits, 0, "triton")
        want = 1e3 if poison is None else float("inf")
        assert bits.view(torch.float32).item() == want, (row, bits.view(torch.float32).item())


def test_non_finite_inputs():
    """NaN/Inf blocks (NVFP4) and rows (FP8) decode to NaN, never to a finite number."""
    x = torch.randn(1, 2, 2, 32)
    x[0, 0, 0, 3] = float("nan")
    x[0, 1, 1, 20] = float("inf")
    for be in ("torch", "triton"):
        for fmt in ("nvfp4", "fp8"):
            (y,), _ = _simulate(
                [x],
                2,
                1,
                fmt=fmt,
                dequant=True,
                tensor_scale="per_source",
                rule="static6",
                backend=be,
                out_dtype=torch.float32,
            )
            if fmt == "fp8":
                assert torch.isnan(y[0, 0, 0]).all() and torch.isnan(y[0, 1, 1]).all()
                assert torch.isfinite(y[0, 0, 1]).all()
            else:  # the Inf makes the tensor scale Inf: every block is poisoned
                assert torch.isnan(y).all()


def test_wire_bytes():
    """NVFP4 payload of a 5B K chunk is ≥ 3.5× smaller than bf16; FP8 ≈ 1.94×."""
    bf16 = 7040 * 24 * 128 * 2
    for p in (2, 4):
        chunk = [1, 7040 // p, 24, 128]
        nv = ref.payload_layout("nvfp4", 1, chunk).chunk_bytes * p
        f8 = ref.payload_layout("fp8", 1, chunk).chunk_bytes * p
        assert bf16 / nv >= 3.5 and bf16 / f8 >= 1.9
    lay = ref.payload_layout("nvfp4", 2, [1, 5, 3, 48])
    assert (
        lay.chunk_bytes % 16 == 0
        and lay.scale_offset(1) % 16 == 0
        and lay.data_offset(1) > lay.scale_offset(0)
    )


# ---------------------------------------------------------------------------------------------
# One process (no process group: P = 1)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_single_rank_quantized_equals_quantize(backend):
    dev = DEV if backend == "triton" else "cpu"
    x = torch.randn(2, 6, 3, 64, dtype=torch.bfloat16)
    q = quantized_all_to_all(x.to(dev), scatter_dim=2, gather_dim=1, output="nvfp4", backend=backend)
    want = quantize_nvfp4(x, backend="torch")
    assert_bitwise_equal(q.data.cpu(), want.data)
    assert_bitwise_equal(q.scale.view(torch.uint8).cpu(), want.scale.view(torch.uint8))
    y = quantized_all_to_all(
        x.to(dev), scatter_dim=2, gather_dim=1, out=torch.empty(2, 6, 3, 64, device=dev), backend=backend
    )
    assert_bitwise_equal(y.cpu(), dequantize_nvfp4(want, torch.float32, backend="torch"))
    x = x.to(dev)
    h = quantized_all_to_all(
        [x, x], scatter_dim=1, gather_dim=2, format="fp8", async_op=True, backend=backend
    )
    a, b = h.wait()
    assert_bitwise_equal(a, b)
    assert h.wait() is not None


def test_single_rank_ulysses_and_attention():
    x = torch.randn(1, 4, 2, 8, requires_grad=True)
    y = ulysses_all_to_all(x, scatter_dim=2, gather_dim=1)
    assert torch.equal(y, x)
    q, k, v = (torch.randn(2, 5, 4, 16) for _ in range(3))
    assert torch.equal(UlyssesAttention()(q, k, v), sdpa_attention(q, k, v))
    with torch.no_grad():
        o = UlyssesAttention(kv_format="nvfp4")(q, k, v)
    kq = dequantize_nvfp4(quantize_nvfp4(k, backend="torch"), backend="torch")
    vq = dequantize_nvfp4(quantize_nvfp4(v, backend="torch"), backend="torch")
    torch.testing.assert_close(o, sdpa_attention(q, kq, vq))


def _raises(exc, match, fn):
    with pytest.raises(exc, match=match):
        fn()


def test_input_errors():
    x = torch.randn(1, 4, 2, 32)
    a2a = ulysses_all_to_all
    qa = quantized_all_to_all
    _raises(TypeError, "torch.Tensor", lambda: a2a([x], scatter_dim=2, gather_dim=1))
    _raises(ValueError, "must differ", lambda: a2a(x, scatter_dim=1, gather_dim=1))
    _raises(ValueError, "out of range", lambda: a2a(x, scatter_dim=4, gather_dim=1))
    _raises(TypeError, "must be an int", lambda: a2a(x, scatter_dim=1.0, gather_dim=2))
    _raises(
        ValueError, "out must be", lambda: a2a(x, scatter_dim=2, gather_dim=1, out=torch.empty(1, 4, 2, 16))
    )
    _raises(
        ValueError,
        "not differentiable",
        lambda: a2a(x.requires_grad_(True), scatter_dim=2, gather_dim=1, out=torch.empty_like(x)),
    )
    x = x.detach()
    _raises(ValueError, "dims", lambda: qa(torch.randn(4, 2, 32), scatter_dim=1, gather_dim=0))
    _raises(ValueError, "must be 1 and 2", lambda: qa(x, scatter_dim=0, gather_dim=1))
    _raises(TypeError, "dtype", lambda: qa(x.to(torch.int32), scatter_dim=2, gather_dim=1))
    _raises(
        ValueError,
        "needs format='nvfp4'",
        lambda: qa(x, scatter_dim=2, gather_dim=1, format="fp8", output="nvfp4"),
    )
    _raises(ValueError, "format must be", lambda: qa(x, scatter_dim=2, gather_dim=1, format="int4"))
    _raises(
        ValueError, "no backward", lambda: qa(x.clone().requires_grad_(True), scatter_dim=2, gather_dim=1)
    )
    _raises(ValueError, "share shape", lambda: qa([x, x[:, :2]], scatter_dim=2, gather_dim=1))
    _raises(
        ValueError,
        "one tensor scale",
        lambda: qa(x, scatter_dim=2, gather_dim=1, output="nvfp4", tensor_scale="per_source"),
    )
    _raises(ValueError, "1 element", lambda: qa(x, scatter_dim=2, gather_dim=1, global_scale=torch.ones(2)))
    _raises(
        ValueError,
        "out\\[0\\] must be",
        lambda: qa(x, scatter_dim=2, gather_dim=1, out=torch.empty(1, 4, 2, 16)),
    )
    _raises(
        TypeError,
        "NVFP4Tensor",
        lambda: qa(x, scatter_dim=2, gather_dim=1, output="nvfp4", out=torch.empty(1)),
    )
    _raises(ValueError, "contiguous", lambda: qa(x.transpose(2, 3), scatter_dim=2, gather_dim=1))
    _raises(ValueError, "backend", lambda: qa(x, scatter_dim=2, gather_dim=1, backend="cuda"))
    q = torch.randn(1, 4, 2, 16)
    _raises(ValueError, "kv_output", lambda: UlyssesAttention(kv_output="nvfp4"))
    _raises(ValueError, "dense k/v", lambda: UlyssesAttention(kv_format="nvfp4", kv_output="nvfp4"))
    _raises(TypeError, "callable", lambda: UlyssesAttention(attn=3))
    _raises(ValueError, "agree on", lambda: UlyssesAttention()(q, q, q[:, :3]))
    _raises(ValueError, "must return", lambda: UlyssesAttention(attn=lambda q, k, v: (q, None))(q, q, q))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend):
    """Schemas, mutation declarations and fake kernels of the amax / pack / unpack ops."""
    dev = DEV if backend == "triton" else "cpu"
    x = torch.randn(1, 2, 4, 32, dtype=torch.bfloat16, device=dev)
    lay = ref.payload_layout("nvfp4", 1, [1, 2, 2, 32])
    sections = (lay.data_offset(0), lay.scale_offset(0), 0)
    torch.library.opcheck(qa2a._amax_op, (x, torch.zeros(1, dtype=torch.int32, device=dev), 0, backend))
    buf = torch.zeros(2, lay.chunk_bytes, dtype=torch.uint8, device=dev)
    gs = torch.tensor(0.01, device=dev)
    torch.library.opcheck(qa2a._pack_op, (x, buf, gs, 2, 2, "nvfp4", "static6", *sections, backend))
    out = torch.empty(1, 4, 2, 32, device=dev)
    args = (buf, out, None, 2, 1, "nvfp4", True, *sections, lay.data_bytes, lay.scale_bytes, backend,
            *NOT_DELAYED)
    torch.library.opcheck(qa2a._unpack_op, args)


def test_unpack_schema_has_no_defaults():
    """Every argument of the unpack op is passed explicitly: torch 2.11's in-place dispatch indexes the
    mutated arguments (``send``, ``state``, ``out_gs``) among those given, so an omitted one with a
    default raised IndexError on the GPU."""
    schema = torch.ops.longlive_kernels.a2a_unpack.default._schema
    assert [a.name for a in schema.arguments if a.has_default_value()] == []
    assert len(NOT_DELAYED) == len(schema.arguments) - 13
