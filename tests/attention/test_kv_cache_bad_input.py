"""FP4KVCache input errors: update / update_quantized / dequantize / start_chunk / pin_shot_sink and
the constructor name the argument that is wrong; no room for a shot sink; the dequantize op's fake
tensor."""

from __future__ import annotations

import pytest
import torch

from longlive_kernels.attention import FP4KVCache


def _started(**kw) -> FP4KVCache:
    cache = FP4KVCache(num_layers=2, num_heads=2, head_dim=32, chunk_tokens=8, max_chunks=3, **kw)
    cache.start_chunk(0)
    return cache


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (
            lambda: _started().update(0, torch.randn(1, 9, 2, 32), torch.randn(1, 9, 2, 32)),
            ValueError,
            "larger than a slot",
        ),
        (
            lambda: _started().update(0, torch.randn(1, 7, 2, 32), torch.randn(1, 7, 2, 32)),
            ValueError,
            "partial",
        ),
        (
            lambda: _started().update(2, torch.randn(1, 8, 2, 32), torch.randn(1, 8, 2, 32)),
            ValueError,
            "layer",
        ),
        (
            lambda: _started().update(-1, torch.randn(1, 8, 2, 32), torch.randn(1, 8, 2, 32)),
            ValueError,
            "layer",
        ),
        (
            lambda: _started().update(0, torch.randn(1, 8, 3, 32), torch.randn(1, 8, 3, 32)),
            ValueError,
            "shape",
        ),
        (
            lambda: _started().update(0, torch.randn(1, 8, 2, 64), torch.randn(1, 8, 2, 64)),
            ValueError,
            "shape",
        ),
        (
            lambda: _started().update(0, torch.randn(2, 8, 2, 32), torch.randn(2, 8, 2, 32)),
            ValueError,
            "shape",
        ),
        (lambda: _started().update(0, torch.randn(8, 2, 32), torch.randn(8, 2, 32)), ValueError, "dims"),
        (
            lambda: _started().update(
                0, torch.ones(1, 8, 2, 32, dtype=torch.int32), torch.randn(1, 8, 2, 32)
            ),
            TypeError,
            "dtype",
        ),
        (
            lambda: _started().update(0, torch.randn(1, 8, 2, 32), torch.randn(1, 8, 2, 32).half()),
            TypeError,
            "same dtype",
        ),
        (
            lambda: _started().update(0, torch.randn(1, 32, 2, 8).transpose(1, 3), torch.randn(1, 8, 2, 32)),
            ValueError,
            "shape|contiguous",
        ),
        (
            lambda: _started().update(0, torch.randn(1, 8, 2, 32), torch.randn(1, 8, 2, 32), chunk_id=5),
            ValueError,
            "not resident",
        ),
        (
            lambda: _started().update(0, torch.randn(1, 8, 2, 32), torch.randn(1, 8, 2, 32), backend="cuda"),
            ValueError,
            "cuda",
        ),
        (
            lambda: FP4KVCache(num_layers=1, num_heads=1, head_dim=16, chunk_tokens=8).update(
                0, torch.randn(1, 8, 1, 16), torch.randn(1, 8, 1, 16)
            ),
            ValueError,
            "start_chunk",
        ),
        (lambda: _started().update_quantized(0, torch.randn(1, 8, 2, 32), None), TypeError, "NVFP4Tensor"),
        (lambda: _started().dequantize(3), ValueError, "layer"),
        (lambda: _started().start_chunk(0), ValueError, "increase"),
        (lambda: _started().pin_shot_sink(4), ValueError, "not resident"),
        (
            lambda: FP4KVCache(
                num_layers=1, num_heads=1, head_dim=16, chunk_tokens=4, max_chunks=2
            ).pin_shot_sink(0),
            ValueError,
            "not resident",
        ),
        (
            lambda: FP4KVCache(num_layers=1, num_heads=1, head_dim=24, chunk_tokens=4),
            ValueError,
            "multiple of 16",
        ),
        (
            lambda: FP4KVCache(
                num_layers=1, num_heads=1, head_dim=16, chunk_tokens=4, max_chunks=2, sink_chunks=2
            ),
            ValueError,
            "sink_chunks",
        ),
        (
            lambda: FP4KVCache(num_layers=0, num_heads=1, head_dim=16, chunk_tokens=4),
            ValueError,
            "num_layers",
        ),
        (
            lambda: FP4KVCache(num_layers=1, num_heads=1, head_dim=16, chunk_tokens=4, storage="int4"),
            ValueError,
            "storage",
        ),
        (
            lambda: FP4KVCache(num_layers=1, num_heads=1, head_dim=16, chunk_tokens=4, scale_rule="mse"),
            ValueError,
            "scale_rule",
        ),
    ],
)
def test_bad_input_errors(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


def test_no_room_for_a_shot_sink():
    cache = FP4KVCache(num_layers=1, num_heads=1, head_dim=16, chunk_tokens=4, max_chunks=2, sink_chunks=1)
    cache.start_chunk(0)
    cache.pin_shot_sink(0)  # a global sink chunk may be pinned (it needs no extra slot)
    cache.start_chunk(1)
    with pytest.raises(ValueError, match="no room"):
        cache.pin_shot_sink(1)


def test_dequantize_op_fake_tensor():
    cache = _started()
    v = cache.layer_view(0)
    torch.library.opcheck(
        torch.ops.longlive_kernels.kv_cache_dequantize.default,
        (v.data, v.scale, v.global_scale, v.table, 1, torch.float32, "torch"),
        test_utils=("test_faketensor",),
    )
