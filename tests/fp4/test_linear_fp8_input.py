"""NVFP4Linear fed already quantized row-wise E4M3 activations (``forward(codes, x_scale=...)``, what
the fused adaLN hands the DiT's FP8 linears): in fp8 mode the codes go to the GEMM as they are, the
same bits as quantizing the bf16 activation inside the call; other modes decode them to bf16 first;
bad pairs are rejected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from longlive_kernels.fp4 import NVFP4Linear
from longlive_kernels.fp4 import reference as ref
from longlive_kernels.testing import triton_device

DEV = triton_device()


def _pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    codes, scale = ref.quantize_fp8_rowwise(x.reshape(-1, x.shape[-1]))
    return codes.view(x.shape), scale.view(x.shape[:-1])


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("rows", [1, 13])
def test_fp8_mode_takes_the_codes_as_they_are(backend, rows):
    dev = DEV if backend == "triton" else "cpu"
    torch.manual_seed(rows)
    mod = NVFP4Linear.from_linear(nn.Linear(64, 48).to(dev), "fp8", backend=backend)
    x = (torch.randn(2, rows, 64) * torch.exp2(torch.randint(-4, 5, (2, rows, 1)))).bfloat16().to(dev)
    codes, scale = _pair(x)
    assert mod.takes_fp8_input
    got = mod(codes, x_scale=scale)
    assert got.shape == (2, rows, 48) and got.dtype == torch.bfloat16
    assert torch.equal(got, mod(x))  # quantizing inside the call gives the same codes and scales


@pytest.mark.parametrize("mode", ["bf16", "w4a16", "nvfp4"])
def test_other_modes_decode_the_codes(mode):
    torch.manual_seed(1)
    lin = nn.Linear(64, 32).bfloat16()
    mod = NVFP4Linear.from_linear(lin, mode, backend="torch")
    x = torch.randn(5, 64).bfloat16()
    codes, scale = _pair(x)
    decoded = (codes.float() * scale.unsqueeze(-1)).bfloat16()
    assert not mod.takes_fp8_input
    assert torch.equal(mod(codes, x_scale=scale), mod(decoded))


def test_bad_pairs_are_rejected():
    mod = NVFP4Linear.from_linear(nn.Linear(32, 16), "fp8", backend="torch")
    x = torch.randn(4, 32)
    codes, scale = _pair(x)
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        mod(x, x_scale=scale)
    with pytest.raises(ValueError, match="x_scale must have shape"):
        mod(codes, x_scale=scale[:3])
    with pytest.raises(ValueError, match="input_activation"):
        mod(codes, x_scale=scale, input_activation="gelu_tanh")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_per_tensor_weight_takes_per_tensor_codes(backend):
    """fp8_scaling="tensor": one weight scale; per-tensor activation codes (one-element x_scale) give
    ``(codes·s_x) @ (W8·s_w)ᵀ + b``; a bf16 input is quantized row-wise and runs the row-wise kernel
    with the weight scale broadcast; the packed weight round-trips through the state dict."""
    dev = DEV if backend == "triton" else "cpu"
    torch.manual_seed(3)
    lin = nn.Linear(64, 48).to(dev)
    mod = NVFP4Linear.from_linear(lin, "fp8", backend=backend, fp8_scaling="tensor")
    assert mod.weight_scale.shape == () and "fp8_scaling=tensor" in repr(mod)
    wq, ws = ref.quantize_fp8_tensorwise(lin.weight.detach())
    assert torch.equal(mod.weight_fp8.view(torch.uint8), wq.view(torch.uint8)) and torch.equal(mod.weight_scale, ws)
    x = torch.randn(2, 7, 64).bfloat16().to(dev)
    codes, xs = ref.quantize_fp8_tensorwise(x, torch.tensor(0.05, device=dev))
    want = ref.fp8_gemm(codes.reshape(-1, 64), xs, wq, ws, lin.bias.detach(), out_dtype=torch.float32)
    got = mod(codes, x_scale=xs)
    assert got.shape == (2, 7, 48)
    assert (got.float().reshape(-1, 48) - want).abs().max() <= 2e-2 * want.abs().max()
    rows, rs = _pair(x)
    want_rows = ref.fp8_gemm(rows.reshape(-1, 64), rs.reshape(-1), wq, ws, lin.bias.detach(), out_dtype=torch.float32)
    assert (mod(x).float().reshape(-1, 48) - want_rows).abs().max() <= 2e-2 * want_rows.abs().max()
    again = NVFP4Linear(64, 48, mode="fp8", backend=backend, fp8_scaling="tensor", device=dev, dtype=torch.float32)
    again.load_state_dict(mod.state_dict())
    assert torch.equal(again(codes, x_scale=xs), got)
    row_mod = NVFP4Linear(64, 48, mode="fp8", backend=backend, device=dev)
    with pytest.raises(RuntimeError, match="weight_scale"):  # a per-tensor checkpoint into a row-wise module
        row_mod.load_state_dict(mod.state_dict())


def test_quantize_model_fp8_tensor_patterns():
    from longlive_kernels.fp4 import quantize_model

    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 16))
    quantize_model(model, "fp8", backend="torch", fp8_tensor=("0",))
    assert model[0].fp8_scaling == "tensor" and model[0].weight_scale.shape == ()
    assert model[1].fp8_scaling == "row" and model[1].weight_scale.shape == (16,)
    with pytest.raises(ValueError, match="fp8_scaling"):
        NVFP4Linear(32, 16, mode="fp8", fp8_scaling="block")
