"""CausalDiT: teacher forcing == chunk-by-chunk KV-cache inference (the test that the §5.2 mask and the
cache agree), the masks, balanced sequence parallelism. Presets, parameter count, spec formulas, bad
inputs, compile: ``test_dit_structure.py``; the 5B model on the GPU: ``test_dit_gpu.py``."""

import copy
import math

import pytest
import torch

from longlive.config import ModelConfig
from longlive.model.attention import (
    BF16KVCache,
    KVCacheAttention,
    MaskedAttention,
    SequenceParallelAttention,
)
from longlive.model.masks import TeacherForcingLayout
from longlive_kernels.testing import rel_err

from ._dit_helpers import _chunked, _inputs, _model, _tiny


def _exact_cache(model, max_chunks, *, num_heads=None, frames_per_chunk=None):
    """Plain-torch cache that stores K/V in the model dtype (fp32 here): isolates mask/cache logic
    from storage rounding."""
    cfg = model.config
    cf = frames_per_chunk or cfg.ar.chunk_frames
    return BF16KVCache(num_layers=cfg.num_layers, num_heads=num_heads or cfg.num_heads, head_dim=cfg.head_dim,
                       chunk_tokens=cf * cfg.tokens_per_frame, max_chunks=max_chunks, dtype=model.dtype)


# ---------------------------------------------------------------------------------------------
# Teacher forcing == KV-cache inference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ops,cache_impl", [("kernels", "exact"), ("torch", "exact"), ("kernels", "kernels")])
def test_teacher_forcing_equals_chunked_kv_cache_fp32(ops, cache_impl):
    """fp32 model; the exact cache must match to fp32 rounding, the model's own cache
    (``FP4KVCache`` in BF16 storage when available) to the bf16 rounding of the stored K/V."""
    cfg = _tiny()
    model = _model(cfg, ops=ops)
    clean, noisy, t_noisy, ctx = _inputs(cfg, frames=6)
    with torch.no_grad():
        tf = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx)
        cache = _exact_cache(model, 3) if cache_impl == "exact" else model.make_kv_cache(1, storage="bf16", max_chunks=3)
        ref = _chunked(model, clean, noisy, t_noisy, ctx, cache=cache, extra_steps=1)
    assert tf.shape == noisy.shape
    exact = isinstance(cache, BF16KVCache)
    assert rel_err(ref, tf) < (1e-5 if exact else 1e-3), rel_err(ref, tf)


def test_teacher_forcing_equals_chunked_kv_cache_bf16_within_bf16_noise():
    cfg = _tiny()
    m32 = _model(cfg)
    m16 = _model(cfg, dtype=torch.bfloat16)
    clean, noisy, t_noisy, ctx = _inputs(cfg, frames=6)
    with torch.no_grad():
        ref = m32.forward_teacher_forcing(clean, noisy, t_noisy, ctx)
        tf16 = m16.forward_teacher_forcing(*(x.bfloat16() for x in (clean, noisy)), t_noisy, ctx.bfloat16())
        cache = m16.make_kv_cache(1, storage="bf16", max_chunks=3)
        kv16 = _chunked(m16, clean.bfloat16(), noisy.bfloat16(), t_noisy, ctx.bfloat16(), cache=cache)
    e_tf, e_kv = rel_err(tf16.float(), ref), rel_err(kv16.float(), ref)
    assert e_tf < 3e-2
    assert e_kv <= 2 * e_tf + 1e-3, (e_kv, e_tf)
    assert rel_err(kv16.float(), tf16.float()) < 3e-2


def test_fp4_kv_cache_inference_stays_close_to_teacher_forcing():
    cfg = _tiny()
    m16 = _model(cfg, dtype=torch.bfloat16)
    clean, noisy, t_noisy, ctx = _inputs(cfg, frames=6, dtype=torch.bfloat16)
    with torch.no_grad():
        tf = m16.forward_teacher_forcing(clean, noisy, t_noisy, ctx).float()
        try:
            fp4 = m16.make_kv_cache(1, storage="fp4", max_chunks=3)
        except ValueError as exc:
            pytest.skip(str(exc))
        kv4 = _chunked(m16, clean, noisy, t_noisy, ctx, cache=fp4).float()
        kv16 = _chunked(m16, clean, noisy, t_noisy, ctx, cache=m16.make_kv_cache(1, storage="bf16", max_chunks=3))
    e4, e16 = rel_err(kv4, tf), rel_err(kv16.float(), tf)
    assert torch.isfinite(kv4).all()
    assert rel_err(kv4[:, :, :2], tf[:, :, :2]) < 2e-2  # chunk 0 has no cached history
    assert e16 < e4 < 5e-2, (e16, e4)  # measured 4.4e-3 (bf16 storage: 0, bitwise)


def test_teacher_forcing_equals_chunked_kv_cache_5b_two_layer_slice():
    """The real 5B widths (3072, 24x128 heads, FFN 14336, patch (1,2,2), 48 ch, text 4096) with 2
    blocks and a tiny 4x4 latent (2x2 tokens per frame), 2 chunks of 2 frames."""
    cfg = ModelConfig.from_name("wan2.2-ti2v-5b").replace(num_layers=2, latent_size=(4, 4), text_len=4,
                                                           ar={"chunk_frames": 2})
    model = _model(cfg)
    clean, noisy, t_noisy, ctx = _inputs(cfg, frames=4)
    with torch.no_grad():
        tf = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx)
        ref = _chunked(model, clean, noisy, t_noisy, ctx, cache=_exact_cache(model, 2))
    assert tf.shape == (1, 48, 4, 4, 4)
    assert rel_err(ref, tf) < 1e-5


def test_multishot_prompts_teacher_forcing_equals_chunked():
    cfg = _tiny()
    model = _model(cfg)
    clean, noisy, t_noisy, ctx = _inputs(cfg, frames=6, prompts=3)
    with torch.no_grad():
        tf = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx)
        ref = _chunked(model, clean, noisy, t_noisy, ctx, per_chunk_prompt=True,
                       cache=_exact_cache(model, 3))
        one = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx[:, 0])
    assert rel_err(ref, tf) < 1e-5
    assert rel_err(one, tf) > 1e-3  # the per-chunk prompts matter


def test_flex_and_sdpa_masks_agree_on_cpu():
    cfg = _tiny()
    model = _model(cfg)
    clean, noisy, t_noisy, ctx = _inputs(cfg, frames=4)
    with torch.no_grad():
        a = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx, attention_impl="sdpa")
        b = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx, attention_impl="flex")
    assert rel_err(b, a) < 1e-5


def test_teacher_forcing_backward_and_gradient_checkpointing():
    cfg = _tiny()
    model = _model(cfg).train()
    clean, noisy, t_noisy, ctx = _inputs(cfg, frames=4)
    grads = []
    for ckpt in (False, True):
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing = ckpt
        model.forward_teacher_forcing(clean, noisy, t_noisy, ctx).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert set(grads[0]) == {n for n, _ in model.named_parameters()}
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6), n


def test_rope_frame_offset_shifts_positions_of_new_chunks_only():
    """A shift of every position is invisible (RoPE is relative), so teacher forcing at offset 8
    equals chunked inference at 8 + 2n; a multi-shot offset applied from chunk 1 on changes it."""
    cfg = _tiny()
    model = _model(cfg)
    clean, noisy, t_noisy, ctx = _inputs(cfg, frames=4)

    def run(shot_offset):
        cache = _exact_cache(model, 2)
        outs = []
        for n in range(2):
            sl, off = slice(2 * n, 2 * n + 2), 8 + 2 * n + (shot_offset if n else 0)
            outs.append(model.forward_chunk(noisy[:, :, sl], t_noisy[:, sl], ctx, cache=cache, chunk_id=n,
                                            frame_offset=off))
            model.forward_chunk(clean[:, :, sl], torch.zeros(1, 2), ctx, cache=cache, chunk_id=n, frame_offset=off)
        return torch.cat(outs, 2)

    with torch.no_grad():
        tf = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx, frame_offset=8)
        same, shot = run(0), run(cfg.ar.multi_shot_rope_offset)
    assert rel_err(same, tf) < 1e-5
    assert rel_err(shot[:, :, :2], tf[:, :, :2]) < 1e-5
    assert rel_err(shot[:, :, 2:], tf[:, :, 2:]) > 1e-3


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------
def test_teacher_forcing_mask_rules():
    lay = TeacherForcingLayout(num_frames=4, frame_len=1, chunk_frames=2)
    m = lay.dense_mask().int()
    # tokens 0..3 clean frames (blocks 0,0,1,1), 4..7 noisy frames (blocks 0,0,1,1)
    expect = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 1, 1],
        [1, 1, 0, 0, 0, 0, 1, 1],
    ])
    assert torch.equal(m, expect)


@pytest.mark.parametrize("sp", [2, 4])
def test_balanced_sp_mask_is_the_plain_mask_permuted(sp):
    plain = TeacherForcingLayout(num_frames=8, frame_len=3, chunk_frames=2)
    inter = TeacherForcingLayout(num_frames=8, frame_len=3, chunk_frames=2, sp_size=sp)
    p = inter.permutation_from_plain()
    assert torch.equal(inter.dense_mask(), plain.dense_mask()[p][:, p])


def test_masked_attention_matches_dense_reference():
    lay = TeacherForcingLayout(num_frames=4, frame_len=5, chunk_frames=2)
    q, k, v = (torch.randn(1, lay.num_tokens, 2, 16) for _ in range(3))
    o = MaskedAttention(lay, impl="sdpa")(q, k, v, layer=0)
    mask = lay.dense_mask()
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / 4.0
    ref = torch.einsum("bhqk,bkhd->bqhd", s.masked_fill(~mask, -math.inf).softmax(-1), v)
    assert rel_err(o, ref) < 1e-5


# ---------------------------------------------------------------------------------------------
# Balanced sequence parallelism (2 gloo ranks on CPU)
# ---------------------------------------------------------------------------------------------
def _sp_worker(rank, world, cfg_dict, tensors):
    """Rank r owns frames [r·F/P, (r+1)·F/P) of both copies; Ulysses all-to-all around the mask /
    the head-sharded KV cache."""
    cfg = ModelConfig.from_dict(cfg_dict)
    model = _model(cfg)
    clean, noisy, t_noisy, ctx = tensors
    frames, cf = clean.shape[2], cfg.ar.chunk_frames
    local, prompts = frames // world, ctx.shape[1] // world
    sl = slice(rank * local, (rank + 1) * local)
    layout = TeacherForcingLayout(frames, cfg.tokens_per_frame, cf, sp_size=world)
    with torch.no_grad():
        tf = model.forward_teacher_forcing(
            clean[:, :, sl], noisy[:, :, sl], t_noisy[:, sl], ctx[:, rank * prompts:(rank + 1) * prompts],
            frame_offset=rank * local, attention=SequenceParallelAttention(MaskedAttention(layout, impl="sdpa")),
        )
        cache = _exact_cache(model, frames // cf, num_heads=cfg.num_heads // world)
        attn = SequenceParallelAttention(KVCacheAttention(cache))
        outs, per = [], cf // world
        for n in range(frames // cf):
            lo = n * cf + rank * per
            part = slice(lo, lo + per)
            kw = {"cache": cache, "chunk_id": n, "frame_offset": lo, "attention": attn}
            outs.append(model.forward_chunk(noisy[:, :, part], t_noisy[:, part], ctx[:, n], **kw))
            model.forward_chunk(clean[:, :, part], torch.zeros(1, per), ctx[:, n], **kw)
    return tf, outs


def test_balanced_sequence_parallel_matches_single_process():
    from longlive_kernels.comm._spawn import run_distributed

    cfg = _tiny(num_heads=4, dim=256, ffn_dim=512)
    model = _model(cfg)
    tensors = _inputs(cfg, frames=8, prompts=4)
    clean, noisy, t_noisy, ctx = tensors
    with torch.no_grad():
        ref = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx)
    results = run_distributed(_sp_worker, 2, args=(cfg.to_dict(), tensors), timeout_s=600.0)
    tf = torch.cat([r[0] for r in results], dim=2)
    assert rel_err(tf, ref) < 1e-5
    chunked = torch.cat([torch.cat([r[1][n] for r in results], dim=2) for n in range(4)], dim=2)
    assert rel_err(chunked, ref) < 1e-5


@pytest.mark.parametrize("mode", ["fp8", "nvfp4", None])
def test_ffn_gelu_goes_into_the_second_linear_when_it_takes_it(mode, monkeypatch):
    """After ``quantize_model`` the block's FFN calls ``ffn.2(ffn.0(h), input_activation="gelu_tanh")``
    (in fp8 mode the GELU is fused into the FP8 quantization); with plain ``nn.Linear`` it runs the
    Sequential. Either way the output is ``ffn.2(gelu_tanh(ffn.0(h)))`` (torch backend: exactly)."""
    from longlive_kernels.fp4 import NVFP4Linear, quantize_model

    cfg = _tiny()
    m = _model(cfg, dtype=torch.bfloat16)
    if mode is not None:
        quantize_model(m, mode, backend="torch")
    block = m.blocks[0]
    seen = []
    forward = NVFP4Linear.forward
    monkeypatch.setattr(NVFP4Linear, "forward",
                        lambda self, x, **kw: seen.append(kw.get("input_activation")) or forward(self, x, **kw))
    h = torch.randn(1, 12, cfg.dim).bfloat16()
    got = block._ffn(h)
    up, _, down = block.ffn
    want = down(torch.nn.functional.gelu(up(h), approximate="tanh"))
    assert torch.equal(got, want)
    assert ("gelu_tanh" in seen) == (mode is not None)


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=pytest.mark.gpu), "torch"])  # interpreter: 100 s
def test_fp8_linears_take_fp8_from_their_norms(backend, monkeypatch):
    """fp8 mode, inference: q/k/v, cross-q and ffn.0 receive row-wise E4M3 ``(codes, x_scale)`` made
    by the adaLN / LN3 / LN2 pass (no quantization of their own), and the model's output is bit for
    bit the one where every norm hands them bf16 h and each linear quantizes it (the same rounding
    chain). Under autograd (training) the norms keep returning bf16."""
    from longlive.model import blocks
    from longlive_kernels.fp4 import NVFP4Linear, quantize_model

    if backend == "triton" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = "cuda" if backend == "triton" else "cpu"
    cfg = _tiny()
    m = quantize_model(_model(cfg, dtype=torch.bfloat16).to(dev), "fp8", backend=backend)
    for blk in m.blocks:
        blk.kernel_backend = backend
    clean, noisy, t_noisy, ctx = (t.to(dev) for t in _inputs(cfg, frames=2, dtype=torch.bfloat16))
    seen = []
    forward = NVFP4Linear.forward
    monkeypatch.setattr(NVFP4Linear, "forward",
                        lambda self, x, **kw: seen.append(kw.get("x_scale") is not None) or forward(self, x, **kw))
    with torch.no_grad():
        fused = m.forward_teacher_forcing(clean, noisy, t_noisy, ctx)
        n_fp8 = sum(seen)
        monkeypatch.setattr(blocks, "_takes_fp8", lambda *mods: False)
        unfused = m.forward_teacher_forcing(clean, noisy, t_noisy, ctx)
    assert n_fp8 == 5 * cfg.num_layers  # q, k, v, cross q, ffn.0 of every block
    assert torch.equal(fused, unfused)
    monkeypatch.undo()
    assert not blocks._takes_fp8(m.blocks[0].self_attn.q)  # grad enabled: training keeps bf16



def test_fp8_attention_output_goes_into_the_fp8_o_projection(monkeypatch):
    """With FP8 linears, a backend that offers ``fp8_output`` (FP8 attention) is asked for its E4M3
    output and the ``o`` projection takes the codes with the one scale as every row's x_scale (no
    conversion to bf16, no row-wise re-quantization); a backend without it is called as before. The
    block output stays within FP8 rounding of the 16-bit-o path."""
    from longlive.model.blocks import DiTBlock, TokenLayout
    from longlive_kernels.attention.fp4_kv_attention import _per_tensor_fp8
    from longlive_kernels.fp4 import NVFP4Linear, quantize_model

    class Attn:
        def __init__(self, fp8_output):
            self.fp8_output, self.asked = fp8_output, 0

        def __call__(self, q, k, v, *, layer, **kw):
            o = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
            o = o.transpose(1, 2)
            if kw.get("out_fp8"):
                self.asked += 1
                return _per_tensor_fp8(o)
            return o

    torch.manual_seed(0)
    blk = quantize_model(DiTBlock(64, 128, 4).bfloat16(), "fp8", backend="torch")
    layout = TokenLayout(grid=(2, 2, 4))
    x = torch.randn(1, layout.tokens, 64).bfloat16()
    e0, ctx = torch.randn(1, 2, 6, 64) * 0.1, torch.randn(1, 1, 7, 64).bfloat16()
    seen = []
    forward = NVFP4Linear.forward
    monkeypatch.setattr(NVFP4Linear, "forward", lambda self, x, **kw: seen.append(
        (self is blk.self_attn.o, kw.get("x_scale"))) or forward(self, x, **kw))
    with torch.no_grad():
        fp8_attn, plain = Attn(True), Attn(False)
        y8 = blk(x, e0, ctx, attn=fp8_attn, layer=0, layout=layout, theta=1e4)
        o_calls = [s for is_o, s in seen if is_o]
        seen.clear()
        y16 = blk(x, e0, ctx, attn=plain, layer=0, layout=layout, theta=1e4)
    assert fp8_attn.asked == 1 and plain.asked == 0
    assert len(o_calls) == 1 and o_calls[0] is not None and o_calls[0].shape == (1, layout.tokens)
    assert (o_calls[0] == o_calls[0][0, 0]).all()  # one scale for every row
    assert [s for is_o, s in seen if is_o] == [None]
    assert rel_err(y8.float(), y16.float()) < 2**-4


@pytest.mark.parametrize("ops", ["torch", "kernels"])
def test_rms_norm_amax_bound_holds_after_rope_and_is_nearly_tight(ops):
    """``RMSNorm.amax_bound`` bounds every output of qk-RMSNorm + RoPE (the FP8 attention scale of q and
    k): on random rows and on rows with all their energy in one element, where the bound is reached up
    to its 1.01 margin and the RoPE rotation (so a looser or wrong bound fails)."""
    from longlive.model.blocks import RMSNorm, TokenLayout, rope_qk

    torch.manual_seed(0)
    h, d = 4, 16
    norm = RMSNorm(h * d)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(h * d) * 2)
    layout = TokenLayout(grid=(2, 2, 4))
    x = torch.randn(1, layout.tokens, h, d) * torch.exp2(torch.randint(-4, 5, (1, layout.tokens, 1, 1)).float())
    spike = torch.zeros_like(x)
    j = int(norm.weight.abs().argmax())  # one-hot rows at the largest weight: |y_j| = √C·|w_j|
    spike.view(1, layout.tokens, h * d)[..., j] = torch.linspace(-3, 5, layout.tokens)
    spike[0, 0] = torch.randn(h, d)  # (a zero row is not a valid RMSNorm input at eps ~ 0)
    bound = norm.amax_bound()
    assert bound.shape == (1,) and bound.dtype == torch.float32
    for inp in (x, spike):
        for dtype in (torch.float32, torch.bfloat16):
            q, k = rope_qk(inp.to(dtype), inp.to(dtype), layout=layout, theta=1e4, norm_weight_q=norm.weight.to(dtype),
                           norm_weight_k=norm.weight.to(dtype), eps=1e-12, ops=ops)
            assert q.abs().max().item() <= bound.item() and k.abs().max().item() <= bound.item()
    q, _ = rope_qk(spike, spike, layout=layout, theta=1e4, norm_weight_q=norm.weight, norm_weight_k=norm.weight,
                   eps=1e-12, ops=ops)
    assert q.abs().max().item() >= 0.95 * bound.item() / 1.01


def test_fp8_attention_is_given_the_qk_norm_bounds():
    """A backend with ``fp8_output`` gets ``q_amax`` / ``k_amax`` = the qk-norms' bounds, which bound the q
    and k it is called with; a backend without it gets neither."""
    from longlive.model.blocks import DiTBlock, TokenLayout

    class Attn:
        def __init__(self, fp8_output):
            self.fp8_output, self.kw = fp8_output, None

        def __call__(self, q, k, v, *, layer, **kw):
            self.kw, self.qk = kw, (q, k)
            return torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(
                1, 2)

    torch.manual_seed(0)
    blk = DiTBlock(64, 128, 4)
    with torch.no_grad():
        blk.self_attn.norm_q.weight.mul_(torch.rand(64) * 3)
        blk.self_attn.norm_k.weight.mul_(-torch.rand(64))
    layout = TokenLayout(grid=(2, 2, 4))
    x = torch.randn(1, layout.tokens, 64) * 4
    e0, ctx = torch.randn(1, 2, 6, 64) * 0.1, torch.randn(1, 1, 7, 64)
    fp8_attn, plain = Attn(True), Attn(False)
    with torch.no_grad():
        for attn in (fp8_attn, plain):
            blk(x, e0, ctx, attn=attn, layer=0, layout=layout, theta=1e4)
    assert "q_amax" not in plain.kw and "k_amax" not in plain.kw
    q, k = fp8_attn.qk
    for name, t, norm in (("q_amax", q, blk.self_attn.norm_q), ("k_amax", k, blk.self_attn.norm_k)):
        assert torch.equal(fp8_attn.kw[name], norm.amax_bound())
        assert 0 < t.abs().max() <= fp8_attn.kw[name].item()


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=pytest.mark.gpu), "torch"])
def test_fp8_tensor_mode_hands_per_tensor_codes(backend, monkeypatch):
    """``quantize_("fp8_tensor")``, inference: q/k/v, cross-q and ffn.0 hold per-tensor FP8 weights and
    receive per-tensor E4M3 codes from their norm's pass, with exactly the scale
    ``layernorm_fp8_scale`` gives for that block's own vectors (one launch for all blocks); the other
    linears stay row-wise, and the output is as close to the BF16 model as the row-wise FP8 model's."""
    from longlive_kernels.attention import layernorm_fp8_scale
    from longlive_kernels.fp4 import NVFP4Linear

    if backend == "triton" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = "cuda" if backend == "triton" else "cpu"
    cfg = _tiny()
    base = _model(cfg, dtype=torch.bfloat16).to(dev)
    for blk in base.blocks:
        blk.kernel_backend = backend
    models = {mode: copy.deepcopy(base).quantize_(mode, backend=backend) for mode in ("fp8", "fp8_tensor")}
    m = models["fp8_tensor"]
    per_tensor = {n for n, mod in m.named_modules() if isinstance(mod, NVFP4Linear) and mod.weight_scale.dim() == 0}
    assert per_tensor == {f"blocks.{i}.{s}" for i in range(cfg.num_layers)
                          for s in ("self_attn.q", "self_attn.k", "self_attn.v", "cross_attn.q", "ffn.0")}
    _, noisy, t_noisy, ctx = (t.to(dev) for t in _inputs(cfg, frames=2, dtype=torch.bfloat16))
    seen = []
    forward = NVFP4Linear.forward
    monkeypatch.setattr(NVFP4Linear, "forward",
                        lambda self, x, **kw: seen.append(kw.get("x_scale")) or forward(self, x, **kw))
    with torch.no_grad():
        outs = {mode: mod(noisy, t_noisy, ctx) for mode, mod in models.items()}
        n_row = len(seen) // 2
        got = [s for s in seen[n_row:] if s is not None]
        ref = base(noisy, t_noisy, ctx)
        e0 = m.embed_time(t_noisy, 1, noisy.shape[2])[1]
    monkeypatch.undo()
    want = []
    for blk in m.blocks:
        e = blk.modulation.float().unsqueeze(0) + e0
        s1 = layernorm_fp8_scale(e[:, :, 1], e[:, :, 0], backend="torch")
        s3 = layernorm_fp8_scale(blk.norm3.weight, blk.norm3.bias, plus_one=False, backend="torch")
        want += [s1, s1, s1, s3, layernorm_fp8_scale(e[:, :, 4], e[:, :, 3], backend="torch")]
    assert len(got) == len(want) == 5 * cfg.num_layers
    assert all(g.numel() == 1 and torch.equal(g.reshape(()), w) for g, w in zip(got, want)), (got, want)
    err = {mode: rel_err(o.float(), ref.float()) for mode, o in outs.items()}
    assert 0 < err["fp8_tensor"] <= 1.25 * err["fp8"] + 1e-3, err
    with torch.no_grad():  # the torch ops (no fused norms) feed bf16 h: no per-tensor scales to compute
        assert m.set_ops("torch")._norm_fp8_scales(e0) is None
    assert m.set_ops("kernels")._norm_fp8_scales(e0) is None  # grad enabled: training keeps bf16
