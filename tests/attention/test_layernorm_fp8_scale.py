"""``layernorm_fp8_scale``: the one-program Triton kernel gives the torch formula's scale bit for bit
(strided per-frame views of the modulation, a single [C] row against per-frame rows, one vector
missing, Inf/NaN elements, zero vectors); bad input is rejected. The bound itself is tested with the
adaLN in ``test_adaln_fp8.py``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longlive_kernels._backend import interpret_mode
from longlive_kernels.attention import layernorm_fp8_scale

DEV = "cuda" if torch.cuda.is_available() and not interpret_mode() else "cpu"


@given(seed=st.integers(0, 2**31 - 1), c=st.sampled_from([2, 5, 96, 1100, 3072]), frames=st.integers(1, 4),
       kind=st.sampled_from(["both", "scale", "shift", "row_scale", "inf", "nan", "zero"]), plus_one=st.booleans())
@settings(max_examples=30, deadline=None)
def test_triton_equals_torch(seed, c, frames, kind, plus_one):
    if DEV == "cpu" and not interpret_mode():
        pytest.skip("needs the Triton interpreter or a GPU")
    g = torch.Generator().manual_seed(seed)
    e = (torch.randn(2, frames, 6, c, generator=g) * torch.exp2(torch.randint(-6, 6, (1,), generator=g).float()))
    e = e.to(DEV)
    scale, shift = e[:, :, 1], e[:, :, 0]  # strided views of the modulation, as the DiT block passes them
    if kind == "scale":
        shift = None
    elif kind == "shift":
        scale = None
    elif kind == "row_scale":
        scale = e[0, 0, 4]  # one [C] row for every frame (a LayerNorm weight)
    elif kind in ("inf", "nan"):
        e[1, frames - 1, 0, c // 2] = float(kind)
    elif kind == "zero":
        scale, shift = torch.full_like(shift, -1.0 if plus_one else 0.0), torch.zeros_like(shift)
    got = layernorm_fp8_scale(scale, shift, plus_one=plus_one, backend="triton")
    want = layernorm_fp8_scale(scale, shift, plus_one=plus_one, backend="torch")
    assert got.shape == () and got.dtype == torch.float32
    assert torch.equal(got, want) or (torch.isinf(got) and torch.isinf(want))
    if kind in ("inf", "nan"):
        assert torch.isinf(got) and got > 0
    if kind == "zero":
        assert got.item() == 1.0


@given(seed=st.integers(0, 2**31 - 1), c=st.sampled_from([2, 96, 1100, 3072]), frames=st.integers(1, 9),
       groups=st.integers(1, 5), kind=st.sampled_from(["both", "scale", "shared_shift", "nan"]))
@settings(max_examples=25, deadline=None)
def test_groups_equal_one_call_per_group(seed, c, frames, groups, kind):
    """``groups=G``: entry g is bit for bit the scale of group g's vectors alone (the DiT's every-block
    launch over strided per-frame modulation views, and a [G, 1, C] LayerNorm-style row)."""
    if DEV == "cpu" and not interpret_mode():
        pytest.skip("needs the Triton interpreter or a GPU")
    g = torch.Generator().manual_seed(seed)
    mod = torch.randn(groups, 1, 6, c, generator=g) * torch.exp2(torch.randint(-6, 6, (groups, 1, 1, 1), generator=g))
    e = (mod + torch.randn(1, frames, 6, c, generator=g)).to(DEV)  # [G, F, 6, C]
    scale, shift = e[:, :, 1], e[:, :, 4]
    if kind == "scale":
        shift = None
    elif kind == "shared_shift":
        shift = e[:, :1, 0]
    elif kind == "nan":
        e[groups - 1, frames // 2, 1, c - 1] = float("nan")
    for be in ("triton", "torch"):
        got = layernorm_fp8_scale(scale, shift, groups=groups, backend=be)
        assert got.shape == (groups,) and got.dtype == torch.float32
        want = torch.stack([layernorm_fp8_scale(scale[i], None if shift is None else shift[i], backend="torch")
                            for i in range(groups)])
        assert torch.equal(got, want), (be, got, want)
    if kind == "nan":
        assert torch.isinf(got[-1]) and torch.isfinite(got[:-1]).all()


def test_bad_input():
    v = torch.ones(2, 8)
    with pytest.raises(ValueError, match="needs scale or shift"):
        layernorm_fp8_scale(None, None)
    with pytest.raises(ValueError, match="last dim"):
        layernorm_fp8_scale(torch.ones(4), torch.ones(5))
    with pytest.raises(ValueError, match="C >= 2"):
        layernorm_fp8_scale(torch.ones(1), None)
    with pytest.raises(ValueError, match="margin"):
        layernorm_fp8_scale(v, None, margin=0.5)
    with pytest.raises(TypeError, match="margin"):
        layernorm_fp8_scale(v, None, margin="1")
    with pytest.raises(ValueError, match="equal leading dims"):
        layernorm_fp8_scale(torch.ones(2, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match="scalar"):
        layernorm_fp8_scale(torch.ones(()), None)
    with pytest.raises(TypeError, match="scale"):
        layernorm_fp8_scale(torch.ones(4, dtype=torch.int32), None)
    with pytest.raises(ValueError, match="groups must be"):
        layernorm_fp8_scale(v, None, groups=0)
    with pytest.raises(ValueError, match=r"groups=3, shift must be \[groups"):
        layernorm_fp8_scale(torch.ones(3, 2, 8), torch.ones(2, 8), groups=3)
