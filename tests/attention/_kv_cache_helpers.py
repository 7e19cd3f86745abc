"""Shared by the FP4KVCache tests (``test_kv_cache*.py``): K/V-like inputs, the per-tile
quantize_nvfp4 check of a slot, poisoned buffers and the check that a write touched only its slot."""

from __future__ import annotations

import torch

from longlive_kernels.attention import FP4KVCache
from longlive_kernels.attention.reference import KV_SCALE_TILE
from longlive_kernels.fp4 import quantize_nvfp4
from longlive_kernels.testing import assert_bitwise_equal, poison_like

RULES = ("static6", "static4", "four_over_six")


def _chunk(seed: int, b: int, t: int, h: int, d: int, dtype=torch.bfloat16, device="cpu") -> torch.Tensor:
    """K/V-like data: per-head gains over several binades, a few outlier tokens, one zero block."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, d, generator=g) * torch.exp2(
        torch.empty(1, 1, h, 1).uniform_(-3, 3, generator=g)
    )
    x[:, torch.randint(0, t, (max(1, t // 16),), generator=g)] *= 16
    x[0, 0, 0, :16] = 0.0
    return x.to(dtype).to(device)


def _assert_slot_is_quantization(cache: FP4KVCache, layer: int, chunk: int, k, v) -> None:
    slot = cache.slot_of(chunk)
    t = cache.chunk_tokens
    for i, x in enumerate((k, v)):
        for bi in range(x.shape[0]):
            for hi in range(x.shape[2]):
                for t0 in range(0, t, KV_SCALE_TILE):
                    rows = slice(t0, min(t, t0 + KV_SCALE_TILE))
                    q = quantize_nvfp4(
                        x[bi, rows, hi].contiguous(), scale_rule=cache.scale_rule, backend="torch"
                    )
                    assert_bitwise_equal(cache.data[layer, i, slot, bi, hi, rows].cpu(), q.data, "data")
                    assert_bitwise_equal(
                        cache.scale[layer, i, slot, bi, hi, rows].cpu(), q.scale.view(torch.uint8), "scale"
                    )
                    assert_bitwise_equal(
                        cache.global_scale[layer, i, slot, bi, hi, t0 // KV_SCALE_TILE].cpu(),
                        q.global_scale,
                        "global scale",
                    )


_BUFFERS = ("data", "scale", "global_scale")


def _poison(cache: FP4KVCache) -> dict[str, torch.Tensor]:
    """Fill every buffer of ``cache`` with poison; returns copies to compare against."""
    for name in _BUFFERS:
        getattr(cache, name).copy_(poison_like(getattr(cache, name)))
    return {n: getattr(cache, n).clone() for n in _BUFFERS}


def _assert_only_slot_written(cache: FP4KVCache, before: dict[str, torch.Tensor], layer: int, slot: int) -> None:
    for n, old in before.items():
        new = getattr(cache, n)
        untouched = torch.ones(new.shape[:3], dtype=torch.bool)
        untouched[layer, :, slot] = False
        assert_bitwise_equal(new[untouched].cpu(), old[untouched].cpu(), f"{n} outside the slot")
