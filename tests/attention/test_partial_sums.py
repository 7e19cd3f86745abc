"""The backward kernels' second-stage sum (``partial_sums.sum_partials``) against torch sums."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from longlive_kernels._backend import interpret_mode
from longlive_kernels.attention.partial_sums import sum_partials
from longlive_kernels.testing import assert_bitwise_equal

DEV = "cuda" if torch.cuda.is_available() and not interpret_mode() else "cpu"


@given(seed=st.integers(0, 2**31 - 1), n_acc=st.integers(1, 3), groups=st.integers(1, 5),
       p_max=st.integers(1, 40), c=st.sampled_from([1, 7, 64, 100, 3072]), f64=st.booleans(), data=st.data())
def test_per_group_sums(seed, n_acc, groups, p_max, c, f64, data):
    """adaLN layout [n_acc, groups, P_max, C], only the first n_used of P_max rows summed; NaN in the
    unused slots and NaN-poisoned outputs catch reads past n_used and unwritten elements."""
    n_used = data.draw(st.integers(1, p_max))
    g = torch.Generator().manual_seed(seed)
    part = torch.randn(n_acc, groups, p_max, c, generator=g).to(DEV)
    part[:, :, n_used:] = float("nan")
    dt = torch.float64 if f64 else torch.float32
    outs = [torch.full((groups, c), float("nan"), dtype=dt, device=DEV) for _ in range(n_acc)]
    sum_partials(part, outs, n_rows=n_used, rows_inner=n_used, outer_stride=0, group_stride=p_max * c,
                 acc_stride=groups * p_max * c)
    for a in range(n_acc):
        expect = part[a, :, :n_used].double().sum(dim=1)
        torch.testing.assert_close(outs[a].double(), expect, rtol=0, atol=n_used * 2.0**-20 * 8)


@given(seed=st.integers(0, 2**31 - 1), bsz=st.integers(1, 3), p_max=st.integers(1, 30), c=st.sampled_from([5, 256]),
       data=st.data())
def test_sums_over_batch_and_programs(seed, bsz, p_max, c, data):
    """RoPE layout [2, B, P_max, C] summed over (B, n_used) into [C]; the second plane alone too."""
    n_used = data.draw(st.integers(1, p_max))
    g = torch.Generator().manual_seed(seed)
    part = torch.randn(2, bsz, p_max, c, generator=g).to(DEV)
    part[:, :, n_used:] = float("nan")
    both = [torch.full((c,), float("nan"), device=DEV) for _ in range(2)]
    sum_partials(part, both, n_rows=bsz * n_used, rows_inner=n_used, outer_stride=p_max * c, group_stride=0,
                 acc_stride=bsz * p_max * c)
    second = [torch.full((c,), float("nan"), device=DEV)]
    sum_partials(part[1:], second, n_rows=bsz * n_used, rows_inner=n_used, outer_stride=p_max * c,
                 group_stride=0, acc_stride=bsz * p_max * c)
    for a in range(2):
        expect = part[a, :, :n_used].double().sum(dim=(0, 1))
        torch.testing.assert_close(both[a].double(), expect, rtol=0, atol=bsz * n_used * 2.0**-20 * 8)
    assert_bitwise_equal(second[0], both[1], "second plane alone vs with the first")


def test_deterministic_and_bad_count():
    part = torch.randn(3, 2, 50, 300, device=DEV)
    runs = []
    for _ in range(2):
        outs = [torch.empty(2, 300, device=DEV) for _ in range(3)]
        sum_partials(part, outs, n_rows=50, rows_inner=50, outer_stride=0, group_stride=50 * 300,
                     acc_stride=2 * 50 * 300)
        runs.append(outs)
    for a in range(3):
        assert_bitwise_equal(runs[0][a], runs[1][a], "same sums on a second run")
    with pytest.raises(ValueError, match="outs"):
        sum_partials(part, [], n_rows=1, rows_inner=1, outer_stride=0, group_stride=0, acc_stride=0)
