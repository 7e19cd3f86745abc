"""Fast CPU stand-in for W4A4 NVFP4 linears, numerically the same as the project's NVFP4 path.

On a CPU the NVFP4 ops run their plain-PyTorch spec (``longlive_kernels/fp4/reference.py``): readable
and exact, but ~0.2 s per 1024×384×1536 linear, i.e. ~40 s per chunk of the tiny demo model. The
quality benchmark only needs the *numbers* of W4A4, so on CPU it swaps every packed
``NVFP4Linear(mode="nvfp4")`` for :class:`EmulatedNVFP4Linear`:

- the weight is the module's own packed NVFP4 weight decoded once to fp32 (exact: every E2M1 value
  times its E4M3 block scale times the fp32 tensor scale is an fp32 number);
- the activation goes through :func:`fake_quantize_nvfp4`, which returns exactly the values of
  ``quantize_nvfp4(x, scale_rule="static6").dequantize(torch.float32)`` for finite ``x``
  (the static-6 rule of the inference recipe; E2M1 round-to-nearest-even written as 7 threshold
  comparisons instead of the spec's distance search; tested bit for bit against the spec);
- one fp32 GEMM of the decoded operands. The spec multiplies the same decoded values in fp64 and
  applies both tensor scales after the sum; the difference is fp32 summation error (~1e-7 relative),
  far below the quantization error being measured.

Other scale rules (Four Over Six) fall back to the spec's quantizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longlive_kernels.fp4 import quantize_nvfp4
from longlive_kernels.fp4.format import BLOCK_SIZE, E2M1_VALUES, E4M3_MAX, SCALE_RULES
from longlive_kernels.fp4.linear import NVFP4Linear

__all__ = ["EmulatedNVFP4Linear", "emulate_nvfp4_", "fake_quantize_nvfp4"]

# Round-to-nearest-even on the E2M1 grid 0, .5, 1, 1.5, 2, 3, 4, 6: the midpoints, and whether a
# tie goes up (the upper neighbour has the even code) — 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4.
_MIDPOINTS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


def fake_quantize_nvfp4(x: torch.Tensor) -> torch.Tensor:
    """NVFP4 quantize + decode of ``x`` [rows, K] (K % 16 == 0) with 1×16 blocks and the static-6 rule.

    Returns fp32 [rows, K] equal to ``quantize_nvfp4(x).dequantize(torch.float32)`` for finite input
    (tensor scale ``amax / (6·448)``, block scales rounded to E4M3, elements to E2M1, RNE).
    """
    if x.dim() != 2 or x.shape[-1] % BLOCK_SIZE:
        raise ValueError(f"x must be [rows, K] with K % {BLOCK_SIZE} == 0, got {tuple(x.shape)}")
    rows, k = x.shape
    xf = x.float()
    blocks = xf.view(rows, k // BLOCK_SIZE, BLOCK_SIZE)
    bamax = blocks.abs().amax(-1)
    target, denom = SCALE_RULES["static6"]

    def const(v: float) -> torch.Tensor:  # tensor operands: correctly rounded divisions, as in the spec
        return torch.tensor(v, dtype=torch.float32, device=xf.device)

    gs = bamax.amax() / const(denom)
    s = torch.clamp((bamax / const(target)) / gs, max=E4M3_MAX)
    sv = torch.nan_to_num(s, nan=0.0).to(torch.float8_e4m3fn).float()
    d = sv * gs
    v = blocks * (const(1.0) / d).unsqueeze(-1)
    mag = v.abs()
    code = torch.zeros_like(mag, dtype=torch.int64)
    for mid, tie_up in _MIDPOINTS:
        code += (mag >= mid) if tie_up else (mag > mid)
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=xf.device)
    q = torch.copysign(grid[code], v)
    dead = ((d == 0) | (bamax == 0)).unsqueeze(-1)
    q = torch.where(dead, torch.zeros_like(q), q)
    return ((q * sv.unsqueeze(-1)) * gs).view(rows, k)


class EmulatedNVFP4Linear(nn.Module):
    """A packed W4A4 :class:`NVFP4Linear` as decoded fp32 weight + activation fake-quant (module docstring)."""

    def __init__(self, linear: NVFP4Linear):
        super().__init__()
        if linear.mode != "nvfp4" or linear.trainable:
            raise ValueError(f"needs a packed NVFP4Linear in mode 'nvfp4', got {linear.extra_repr()}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.act_scale_rule = linear.recipe.act_scale_rule
        self.register_buffer("weight", linear.packed_weight().dequantize(torch.float32))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        if self.act_scale_rule == "static6":
            xq = fake_quantize_nvfp4(x2d)
        else:
            xq = quantize_nvfp4(x2d.contiguous(), scale_rule=self.act_scale_rule).dequantize(torch.float32)
        bias = None if self.bias is None else self.bias.float()
        y = F.linear(xq, self.weight, bias)
        out_dtype = x.dtype if x.dtype.is_floating_point else torch.float32
        return y.to(out_dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, emulated W4A4 NVFP4"


def emulate_nvfp4_(model: nn.Module) -> int:
    """Swap every packed W4A4 ``NVFP4Linear`` of ``model`` in place; returns how many were swapped."""
    swaps = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, NVFP4Linear) and mod.mode == "nvfp4" and not mod.trainable
    ]
    for name, mod in swaps:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, EmulatedNVFP4Linear(mod))
    return len(swaps)
