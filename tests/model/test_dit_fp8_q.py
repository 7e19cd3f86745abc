"""FP8 attention reading q as E4M3 codes written by the fused qk-norm + RoPE: a backend that offers a
q buffer (``fp8_q_buffer``) receives it filled, with the scale bound/448 instead of the bound; the codes
are q's values within E4M3 rounding; training and backends without the buffer keep the 16-bit q."""

from __future__ import annotations

import pytest
import torch

from longlive.model.blocks import DiTBlock, TokenLayout


class _Attn:
    """Records what the block hands it; attends with q decoded from its codes."""

    def __init__(self, buffer_layout: str | None):
        self.fp8_output, self.layout, self.calls = True, buffer_layout, []
        if buffer_layout is None:
            self.fp8_q_buffer = None

    def fp8_q_buffer(self, shape, device):
        b, n, h, d = shape
        if self.layout == "heads":
            buf = torch.full((b, h, n, d), 0x7F, dtype=torch.uint8, device=device).view(torch.float8_e4m3fn)
            self.buf = buf.transpose(1, 2)
        else:
            self.buf = torch.full(shape, 0x7F, dtype=torch.uint8, device=device).view(torch.float8_e4m3fn)
        return self.buf

    def __call__(self, q, k, v, *, layer, **kw):
        self.calls.append((q, dict(kw)))
        if "q_scale" in kw:
            q = (q.float() * kw["q_scale"]).to(k.dtype)
        return torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


def _block():
    torch.manual_seed(0)
    blk = DiTBlock(64, 128, 4).bfloat16()
    with torch.no_grad():
        blk.self_attn.norm_q.weight.mul_(torch.rand(64) * 3)
    layout = TokenLayout(grid=(2, 2, 4))
    x = (torch.randn(1, layout.tokens, 64) * 4).bfloat16()
    e0, ctx = torch.randn(1, 2, 6, 64) * 0.1, torch.randn(1, 1, 7, 64).bfloat16()
    return blk, layout, x, e0, ctx


@pytest.mark.parametrize("ops", ["kernels", "torch"])
@pytest.mark.parametrize("layout_name", ["token", "heads"])
def test_fp8_q_codes_reach_the_attention(ops, layout_name):
    blk, layout, x, e0, ctx = _block()
    blk.ops = ops
    fp8, plain = _Attn(layout_name), _Attn(None)
    with torch.no_grad():
        out_fp8 = blk(x, e0, ctx, attn=fp8, layer=0, layout=layout, theta=1e4)
        out_plain = blk(x, e0, ctx, attn=plain, layer=0, layout=layout, theta=1e4)
    (q8, kw), (q, kw_plain) = fp8.calls[0], plain.calls[0]
    assert q8 is fp8.buf and q8.dtype == torch.float8_e4m3fn
    assert "q_amax" not in kw and "q_amax" in kw_plain and "k_amax" in kw
    s = kw["q_scale"]
    assert torch.equal(s, kw_plain["q_amax"] / 448)
    got = q8.float() * s
    assert not got.isnan().any(), "a code of the q buffer was not written"
    # E4M3: half a step is 2^-4 relative (normals), 2^-10·s absolute (subnormals); the 16-bit q itself
    # is one bf16 rounding (2^-9) away from the value the kernel encodes
    tol = (2**-4 + 2**-8) * q.float().abs() + 2**-10 * s
    assert ((got - q.float()).abs() <= tol).all()
    assert not torch.equal(got, q.float())  # really FP8
    rel = ((out_fp8.float() - out_plain.float()).norm() / out_plain.float().norm()).item()
    assert rel < 0.05


def test_no_fp8_q_under_autograd_or_without_a_buffer():
    blk, layout, x, e0, ctx = _block()
    fp8 = _Attn("token")
    blk(x, e0, ctx, attn=fp8, layer=0, layout=layout, theta=1e4)  # grad mode on: training
    q, kw = fp8.calls[0]
    assert q.dtype == torch.bfloat16 and "q_scale" not in kw and "q_amax" in kw
    none = _Attn("token")
    none.fp8_q_buffer = lambda shape, device: None  # e.g. no cuDNN FP8 on this device
    with torch.no_grad():
        blk(x, e0, ctx, attn=none, layer=0, layout=layout, theta=1e4)
    q, kw = none.calls[0]
    assert q.dtype == torch.bfloat16 and "q_scale" not in kw


def test_cache_attention_offers_a_q_buffer_only_for_cudnn_fp8():
    """``CacheAttention.fp8_q_buffer``: None for BF16 compute, a BF16 cache or a CPU device (the paths that
    would only decode the codes again)."""
    from longlive.inference.cache_policy import CacheAttention
    from longlive.model.attention import make_kv_cache

    kw = {"num_layers": 1, "num_heads": 2, "head_dim": 64, "chunk_tokens": 8, "max_chunks": 2, "sink_chunks": 1}
    fp4, bf16 = make_kv_cache(storage="fp4", **kw), make_kv_cache(storage="bf16", **kw)
    shape = (1, 8, 2, 64)
    assert CacheAttention(fp4, compute="bf16").fp8_q_buffer(shape, "cpu") is None
    assert CacheAttention(bf16, compute="fp8").fp8_q_buffer(shape, "cpu") is None
    assert CacheAttention(fp4, compute="fp8").fp8_q_buffer(shape, "cpu") is None
