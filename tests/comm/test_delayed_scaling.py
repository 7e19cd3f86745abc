"""NVFP4 delayed scaling of the quantized all-to-all (``DelayedScaling``): the unpack's observation
(Triton == reference bit for bit: the amax words it raises, the scale it sets, the scale it reports),
the scale schedule over calls on one rank, saturation, bad options. Real collectives (gloo, NCCL):
``test_ulysses_distributed.py`` (``delayed`` case)."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longlive_kernels.comm import DelayedScaling, quantized_all_to_all
from longlive_kernels.comm import reference as ref
from longlive_kernels.fp4 import dequantize_nvfp4, quantize_nvfp4
from longlive_kernels.fp4.reference import div_rn
from longlive_kernels.testing import assert_bitwise_equal, triton_device

qa2a = importlib.import_module("longlive_kernels.comm.quantized_all_to_all")
ops = importlib.import_module("longlive_kernels.comm.quantized_all_to_all_ops")
DEV = triton_device()


def _x(seed: int, shape, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp2(torch.empty(*shape).uniform_(-4, 4, generator=g))
    return (mag * torch.randn(*shape, generator=g).sign() * scale).bfloat16()


@given(seed=st.integers(0, 2**31 - 1), p=st.sampled_from([1, 2, 4]), dequant=st.booleans(),
       reported=st.sampled_from(["zero", "some", "all"]))
@settings(max_examples=15, deadline=None)
def test_unpack_observation_triton_equals_reference(seed, p, dequant, reported):
    """One rank's unpack with observation: the amax word of every chunk of ``send`` rises to
    ``reference.observed_amax`` of the received chunks (and never falls), the state entry becomes
    div_rn(max reported · margin, 2688) — unchanged when no source reported — and the used decode
    scale (chunk 0's header) is written out; Triton and the reference agree bit for bit."""
    g = torch.Generator().manual_seed(seed)
    chunk = [1, 3, 2, 32]
    lay = ref.payload_layout("nvfp4", 1, chunk)
    gs = torch.tensor(0.0071)
    recv = torch.zeros(p, lay.chunk_bytes, dtype=torch.uint8)
    for j in range(p):  # chunk j from source j, quantized with the shared scale
        data, scales, _ = ref.fp4_ref.quantize(_x(seed + j, chunk).reshape(-1, 32), global_scale=gs)
        recv[j, lay.data_offset(0):lay.data_offset(0) + lay.data_bytes] = data.reshape(-1)
        recv[j, lay.scale_offset(0):lay.scale_offset(0) + lay.scale_bytes] = scales.view(torch.uint8).reshape(-1)
        recv[j, 0:4] = gs.reshape(1).view(torch.uint8)
        amax = 0.0 if reported == "zero" or (reported == "some" and j % 2) else float(torch.rand(1, generator=g)) * 9
        recv[j, 4 * lay.amax_word(0):4 * lay.amax_word(0) + 4] = torch.tensor([amax]).view(torch.uint8)
    start = torch.rand(p, generator=g) * 3  # the send amax words' current values
    outs = {}
    for backend in ("torch", "triton"):
        dev = DEV if backend == "triton" else "cpu"
        send = torch.zeros(p, lay.chunk_bytes, dtype=torch.uint8, device=dev)
        send.view(torch.int32)[:, lay.amax_word(0)] = start.to(dev).view(torch.int32)
        state = torch.tensor([0.5, 0.25], device=dev)
        out_gs = torch.full((1,), float("nan"), device=dev)
        shape = [1, 3 * p, 2, 32]
        o = torch.full(shape, float("nan"), device=dev) if dequant else torch.zeros(
            [1, 3 * p, 2, 16], dtype=torch.uint8, device=dev)
        osc = None if dequant else torch.zeros([1, 3 * p, 2, 2], dtype=torch.uint8, device=dev)
        ops._unpack_op(recv.to(dev), o, osc, p, 1, "nvfp4", dequant, lay.data_offset(0), lay.scale_offset(0), 0,
                       lay.data_bytes, lay.scale_bytes, backend, send, state, out_gs, lay.amax_word(0), 1, 2.0,
                       2688.0)
        outs[backend] = (send.cpu(), state.cpu(), out_gs.cpu())
    for a, b in zip(outs["torch"], outs["triton"]):
        assert_bitwise_equal(a, b)
    send, state, out_gs = outs["torch"]
    sc = recv[:, lay.scale_offset(0):lay.scale_offset(0) + lay.scale_bytes]
    observed = ref.observed_amax(sc, gs.expand(p))
    words = send.view(torch.int32)[:, lay.amax_word(0)].view(torch.float32)
    assert torch.equal(words, torch.maximum(start, observed))
    rep = recv.view(torch.int32)[:, lay.amax_word(0)].view(torch.float32).amax()
    want = div_rn(rep.reshape(1) * 2.0, 2688.0)[0] if rep > 0 else torch.tensor(0.25)
    assert state[0] == 0.5 and state[1] == want  # only state_index 1 changes
    assert out_gs[0] == gs


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("output", ["nvfp4", "dequantized"])
def test_single_rank_schedule(backend, output):
    """P = 1: call 1 takes the amax in the call; call 2 uses twice that scale (the margin; no
    observation has come back yet); call 3 uses 2 · (call 1's observed amax) / 2688. Each call's output is bit for bit
    the quantization of its input with that scale, and the state never reads the host."""
    dev = DEV if backend == "triton" else "cpu"
    st_ = DelayedScaling(margin=2.0)
    xs = [_x(10 + t, (1, 6, 2, 64), scale) for t, scale in enumerate((1.0, 3.0, 0.5))]
    gs1 = div_rn(ref.nvfp4_amax(xs[0]), 2688.0)
    obs1 = ref.observed_amax(quantize_nvfp4(xs[0], global_scale=gs1, backend="torch").scale.view(torch.uint8)
                             .reshape(1, -1), gs1.reshape(1))
    expected = [gs1, gs1 * 2.0, div_rn(obs1.reshape(1) * 2.0, 2688.0)[0]]
    for t, (x, gs) in enumerate(zip(xs, expected)):
        # dense: into fp32 (exact; the interpreter truncates bf16 casts instead of rounding them)
        dst = torch.empty(x.shape, device=dev) if output == "dequantized" else None
        res = quantized_all_to_all(x.to(dev), scatter_dim=2, gather_dim=1, output=output, delayed=st_, out=dst,
                                   backend=backend)
        want = quantize_nvfp4(x, global_scale=gs, backend="torch")
        if output == "nvfp4":
            assert_bitwise_equal(res.data.cpu(), want.data, f"call {t + 1} data")
            assert_bitwise_equal(res.scale.view(torch.uint8).cpu(), want.scale.view(torch.uint8), f"call {t + 1}")
            assert res.global_scale.cpu() == gs
        else:
            assert_bitwise_equal(res.cpu(), dequantize_nvfp4(want, torch.float32, backend="torch"), f"call {t + 1}")
    assert not bool(st_.saturated())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_saturation_is_reported_and_the_scale_recovers(backend):
    """A chunk 6× louder than the history saturates its largest blocks (clipped at 6 · 448 · scale):
    ``saturated()`` says so (and not for the first call, whose in-call amax fits exactly, nor for the
    quiet calls), and the scale doubles every two calls until the data fits: four clipped calls."""
    dev = DEV if backend == "triton" else "cpu"
    st_ = DelayedScaling(margin=2.0)
    quiet = _x(1, (1, 4, 2, 32)).to(dev)
    loud = (quiet.float() * 6).bfloat16()
    flags = []
    for _ in range(3):
        quantized_all_to_all(quiet, scatter_dim=2, gather_dim=1, output="nvfp4", delayed=st_, backend=backend)
        flags.append(bool(st_.saturated()))
    assert flags == [False] * 3
    flags = []
    for _ in range(6):
        y = quantized_all_to_all(loud, scatter_dim=2, gather_dim=1, output="nvfp4", delayed=st_, backend=backend)
        flags.append(bool(st_.saturated()))
    assert flags == [True] * 4 + [False] * 2
    dense = dequantize_nvfp4(y, torch.float32, backend="torch")
    assert (dense.abs().amax() / loud.float().abs().amax() - 1).abs() < 2**-3  # the last call was not clipped


def test_bad_options():
    x = torch.randn(1, 4, 2, 32)
    st_ = DelayedScaling()
    with pytest.raises(ValueError, match="delayed scaling needs format='nvfp4'"):
        quantized_all_to_all(x, scatter_dim=2, gather_dim=1, format="fp8", delayed=st_, backend="torch")
    with pytest.raises(ValueError, match="delayed scaling needs"):
        quantized_all_to_all(x, scatter_dim=2, gather_dim=1, global_scale=torch.tensor(1.0), delayed=st_,
                             backend="torch")
    with pytest.raises(ValueError, match="delayed scaling needs"):
        quantized_all_to_all(x, scatter_dim=2, gather_dim=1, tensor_scale="per_source", delayed=st_, backend="torch")
    with pytest.raises(TypeError, match="DelayedScaling"):
        quantized_all_to_all(x, scatter_dim=2, gather_dim=1, delayed=object(), backend="torch")
    with pytest.raises(ValueError, match="margin"):
        DelayedScaling(margin=0.5)
    with pytest.raises(RuntimeError, match="completed call"):
        st_.saturated()


def test_ulysses_attention_keeps_one_state_per_layer():
    """``UlyssesAttention(tensor_scale="delayed")`` keys its DelayedScaling states by the ``layer``
    keyword; the option needs NVFP4 k/v and one head group."""
    from longlive_kernels.comm import UlyssesAttention, sdpa_attention

    ua = UlyssesAttention(lambda q, k, v, layer: sdpa_attention(q, k, v), kv_format="nvfp4", tensor_scale="delayed",
                          backend="torch")
    q, k, v = (_x(s, (1, 8, 2, 32)).float() for s in (1, 2, 3))
    for layer in (0, 1, 0):
        o = ua(q, k, v, layer=layer)
        assert o.shape == q.shape and torch.isfinite(o).all()
    assert sorted(ua._delayed) == [0, 1] and all(isinstance(s, DelayedScaling) for s in ua._delayed.values())
    with pytest.raises(ValueError, match="tensor_scale='delayed' needs kv_format='nvfp4'"):
        UlyssesAttention(kv_format="fp8", tensor_scale="delayed")
