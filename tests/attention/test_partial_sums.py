"""The backward kernels' second-stage sum (``partial_sums.sum_partials``) against fp64 torch sums."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from longlive_kernels._backend import interpret_mode
from longlive_kernels.attention.partial_sums import sum_partials
from longlive_kernels.testing import assert_bitwise_equal

DEV = "cuda" if torch.cuda.is_available() and not interpret_mode() else "cpu"


@given(seed=st.integers(0, 2**31 - 1), groups=st.integers(1, 5), p_max=st.integers(1, 40),
       c=st.sampled_from([1, 7, 64, 100, 3072]), f64=st.booleans(),
       shared=st.lists(st.booleans(), min_size=1, max_size=3), data=st.data())
def test_matches_fp64_sums(seed, groups, p_max, c, f64, shared, data):
    """Layout [n_acc, groups, P_max, C], the first n_used of P_max programs summed per group or (shared)
    over all groups; NaN in the unused slots and NaN-poisoned outputs catch reads past n_used and
    unwritten elements. fp32 sums of n terms: error ≤ n·2^-24 of Σ|terms| (≤ 4 per term here)."""
    n_acc = len(shared)
    n_used = data.draw(st.integers(1, p_max))
    g = torch.Generator().manual_seed(seed)
    part = torch.randn(n_acc, groups, p_max, c, generator=g).to(DEV)
    part[:, :, n_used:] = float("nan")
    dt = torch.float64 if f64 else torch.float32
    outs = [torch.full((c,) if s else (groups, c), float("nan"), dtype=dt, device=DEV) for s in shared]
    sum_partials(part, outs, n_used=n_used, n_groups=groups, group_stride=p_max * c,
                 acc_stride=groups * p_max * c, shared=shared)
    for a, s in enumerate(shared):
        used = part[a, :, :n_used].double()
        expect = used.sum(dim=(0, 1)) if s else used.sum(dim=1)
        n_terms = used.shape[1] * (groups if s else 1)
        bound = n_terms * 2.0**-24 * (used.abs().sum(dim=(0, 1)) if s else used.abs().sum(dim=1)) + 1e-30
        assert outs[a].shape == expect.shape
        assert ((outs[a].double() - expect).abs() <= bound).all(), f"accumulator {a} (shared={s})"


def test_deterministic_low_precision_output_and_bad_arguments():
    part = torch.randn(3, 2, 50, 300, device=DEV)
    kw = dict(n_used=50, n_groups=2, group_stride=50 * 300, acc_stride=2 * 50 * 300, shared=[False, True, False])
    runs = []
    for _ in range(2):
        outs = [torch.empty(2, 300, device=DEV), torch.empty(300, device=DEV), torch.empty(2, 300, device=DEV)]
        sum_partials(part, outs, **kw)
        runs.append(outs)
    for a in range(3):
        assert_bitwise_equal(runs[0][a], runs[1][a], "same sums on a second run")
    low = [torch.empty(2, 300, device=DEV, dtype=torch.bfloat16)]
    sum_partials(part, low, n_used=50, n_groups=2, group_stride=50 * 300, acc_stride=0)
    assert_bitwise_equal(low[0], runs[0][0].bfloat16(), "bf16 output = the fp32 sum rounded once")
    with pytest.raises(ValueError, match="outs"):
        sum_partials(part, [], n_used=1, n_groups=1, group_stride=0, acc_stride=0)
    with pytest.raises(ValueError, match="shared"):
        sum_partials(part, runs[0][:1], n_used=1, n_groups=1, group_stride=0, acc_stride=0, shared=[True, False])


def test_many_shared_rows_take_two_stages(monkeypatch):
    """Above _MAX_SHARED_ROWS a shared sum goes through per-group sums first: same values (to fp32
    rounding) for the shared and the per-group accumulators, every output element written."""
    from longlive_kernels.attention import partial_sums

    part = torch.randn(2, 6, 9, 40, device=DEV)
    kw = dict(n_used=7, n_groups=6, group_stride=9 * 40, acc_stride=6 * 9 * 40, shared=[True, False])
    one = [torch.empty(40, device=DEV), torch.empty(6, 40, device=DEV)]
    partial_sums.sum_partials(part, one, **kw)
    monkeypatch.setattr(partial_sums, "_MAX_SHARED_ROWS", 8)
    two = [torch.full((40,), float("nan"), device=DEV), torch.full((6, 40), float("nan"), device=DEV)]
    partial_sums.sum_partials(part, two, **kw)
    torch.testing.assert_close(two[0], one[0], rtol=1e-6, atol=1e-5)
    # the launch shape (so the order of the fp32 adds) may differ between the two calls
    torch.testing.assert_close(two[1], one[1], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(two[0].double(), part[0, :, :7].double().sum(dim=(0, 1)), rtol=0, atol=1e-4)
