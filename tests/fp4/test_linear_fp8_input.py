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
