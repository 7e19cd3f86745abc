"""The Triton interpreter, as the CPU tests run it, rounds fp32 → bf16 to nearest even and widens
bf16 → fp32 exactly, as the GPU does (``longlive_kernels.testing.interpreter_rounds_bf16``, applied in
``conftest.py``). Stock Triton 3.6 truncates the first and flushes bf16 subnormals in the second;
these tests fail if a Triton upgrade bypasses the patch."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter only")


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def cast_kernel(x_ptr, stored_ptr, cast_ptr, n, BLOCK: tl.constexpr):
        o = tl.arange(0, BLOCK)
        m = o < n
        x = tl.load(x_ptr + o, mask=m)
        tl.store(stored_ptr + o, x, mask=m)  # implicit fp32 → bf16 at the store
        tl.store(cast_ptr + o, x.to(tl.bfloat16).to(tl.float32), mask=m)  # explicit, and back

    return cast_kernel


# an odd midpoint, just above a midpoint, 0.75 ulp (both signs), the largest finite fp32 (rounds to
# Inf), an fp32 subnormal that rounds to a bf16 subnormal, −0
_EDGES = [0x3F818000, 0x3F808001, 0x3F80C000, 0xBF80C000, 0x7F7FFFFF, 0x00018000, 0x80000000]


@given(bits=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
@example(bits=_EDGES)
def test_interpreter_bf16_casts_round_to_nearest_even(bits):
    x = torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)
    stored = torch.full(x.shape, 7.0, dtype=torch.bfloat16)
    cast = torch.full(x.shape, 7.0)
    _kernel()[(1,)](x, stored, cast, x.numel(), BLOCK=64)
    want = x.to(torch.bfloat16)
    nan = want.isnan()
    assert torch.equal(stored.isnan(), nan) and torch.equal(cast.isnan(), nan)
    assert torch.equal(stored[~nan].view(torch.int16), want[~nan].view(torch.int16)), "store conversion"
    assert torch.equal(cast[~nan].view(torch.int32), want[~nan].float().view(torch.int32)), ".to and back"
