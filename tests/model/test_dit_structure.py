"""CausalDiT structure: presets, exact 5B parameter count, official state-dict names, config round
trip; RoPE, patchify, one block + head and adaLN against the spec formulas, ops="torch" vs kernels;
the BF16 cache policy, bad inputs, compile, quantized linears."""

import math

import pytest
import torch

from longlive.config import ARConfig, ModelConfig
from longlive.model.attention import BF16KVCache, DenseAttention
from longlive.model.blocks import TokenLayout, adaln_torch, rope_qk_torch
from longlive.model.dit import CausalDiT
from longlive_kernels.testing import rel_err

from ._dit_helpers import _inputs, _model, _tiny

FIVE_B = 4_999_787_712


# ---------------------------------------------------------------------------------------------
# Config / structure
# ---------------------------------------------------------------------------------------------
def test_5b_preset_is_the_spec_architecture():
    c = ModelConfig.from_name("wan2.2-ti2v-5b")
    assert (c.num_layers, c.dim, c.num_heads, c.head_dim, c.ffn_dim) == (30, 3072, 24, 128, 14336)
    assert (c.patch_size, c.in_channels, c.out_channels, c.freq_dim) == ((1, 2, 2), 48, 48, 256)
    assert (c.text_dim, c.text_len, c.eps, c.qk_norm, c.cross_attn_norm) == (4096, 512, 1e-6, True, True)
    assert c.rope_dims == (44, 42, 42)
    assert (c.grid_size, c.tokens_per_frame, c.resolution) == ((22, 40), 880, (704, 1280))
    assert (c.ar.chunk_frames, c.chunk_tokens, c.cache_tokens) == (8, 7040, 28160)
    assert (c.ar.max_chunks, c.ar.sink_chunks, c.ar.multi_shot_rope_offset) == (4, 1, 8)
    assert c.num_parameters() == FIVE_B
    s = ModelConfig.from_name("small-1.3b")
    assert (s.dim, s.num_layers, s.num_heads) == (1536, 30, 12)


@pytest.mark.parametrize("name", ["wan2.2-ti2v-5b", "small-1.3b", "tiny"])
def test_parameter_count_on_meta_device(name):
    cfg = ModelConfig.from_name(name)
    with torch.device("meta"):
        m = CausalDiT(cfg)
    assert m.num_parameters() == cfg.num_parameters()
    if name == "wan2.2-ti2v-5b":
        assert m.num_parameters() == FIVE_B
        per_block = sum(p.numel() for p in m.blocks[0].parameters())
        assert per_block == 163_656_704


def test_5b_state_dict_uses_official_names_and_shapes():
    with torch.device("meta"):
        sd = CausalDiT(ModelConfig.from_name("wan2.2-ti2v-5b")).state_dict()
    expect = {
        "patch_embedding.weight": (3072, 48, 1, 2, 2), "patch_embedding.bias": (3072,),
        "text_embedding.0.weight": (3072, 4096), "text_embedding.2.weight": (3072, 3072),
        "time_embedding.0.weight": (3072, 256), "time_embedding.2.weight": (3072, 3072),
        "time_projection.1.weight": (18432, 3072), "time_projection.1.bias": (18432,),
        "blocks.29.self_attn.q.weight": (3072, 3072), "blocks.0.self_attn.o.bias": (3072,),
        "blocks.0.self_attn.norm_q.weight": (3072,), "blocks.0.self_attn.norm_k.weight": (3072,),
        "blocks.0.cross_attn.k.weight": (3072, 3072), "blocks.0.cross_attn.norm_k.weight": (3072,),
        "blocks.0.norm3.weight": (3072,), "blocks.0.norm3.bias": (3072,),
        "blocks.0.ffn.0.weight": (14336, 3072), "blocks.0.ffn.2.weight": (3072, 14336),
        "blocks.0.modulation": (1, 6, 3072),
        "head.head.weight": (192, 3072), "head.head.bias": (192,), "head.modulation": (1, 2, 3072),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert len(sd) == 30 * 27 + 15
    assert not any("norm1" in k or "norm2" in k or "freqs" in k for k in sd)


def test_config_yaml_round_trip_and_overrides():
    yaml = pytest.importorskip("yaml")
    for name in ("wan2.2-ti2v-5b", "small-1.3b", "tiny"):
        c = ModelConfig.from_name(name)
        assert ModelConfig.from_dict(yaml.safe_load(yaml.safe_dump(c.to_dict()))) == c
    c = ModelConfig.from_yaml("model:\n  preset: tiny\n  num_layers: 2\n  ar: {chunk_frames: 2, max_chunks: 8}\n")
    assert (c.num_layers, c.dim, c.ar.chunk_frames, c.ar.max_chunks, c.ar.sink_chunks) == (2, 384, 2, 8, 1)
    with pytest.raises(ValueError, match="unknown ModelConfig keys.*num_layer"):
        ModelConfig.from_dict({"preset": "tiny", "num_layer": 3})
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.from_name("wan-14b")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ModelConfig.from_name("tiny").replace(num_heads=5)
    with pytest.raises(ValueError, match="sink_chunks"):
        ARConfig(max_chunks=2, sink_chunks=2)


# ---------------------------------------------------------------------------------------------
# Spec formulas, ops backends
# ---------------------------------------------------------------------------------------------
def test_rope_matches_complex_formula():
    """Interleaved pairs, split 24/20/20 for head_dim 64, positions (f + offset, y, x)."""
    torch.manual_seed(0)
    grid, d, off = (2, 3, 4), 64, 5
    q = torch.randn(1, 24, 2, d, dtype=torch.float64)
    out, _ = rope_qk_torch(q.float(), q.float(), layout=TokenLayout(grid, 1, off), theta=10000.0,
                           norm_weight_q=None, norm_weight_k=None, eps=1e-6)
    idx = torch.arange(24)
    pos = [(idx // 12 + off).double(), (idx // 4 % 3).double(), (idx % 4).double()]
    freqs = []
    for p, n in zip(pos, (12, 10, 10)):
        freqs.append(torch.outer(p, 10000.0 ** (-torch.arange(n, dtype=torch.float64) * 2 / (2 * n))))
    rot = torch.polar(torch.ones(24, 32, dtype=torch.float64), torch.cat(freqs, 1))
    ref = torch.view_as_real(torch.view_as_complex(q.view(1, 24, 2, 32, 2)) * rot[None, :, None]).flatten(-2)
    assert rel_err(out.double(), ref) < 1e-6


def test_patchify_is_the_conv3d_and_unpatchify_is_wans_einsum():
    cfg = ModelConfig.from_name("wan2.2-ti2v-5b").replace(num_layers=1, dim=64, num_heads=1, ffn_dim=64,
                                                           text_dim=32)
    torch.manual_seed(0)
    model = CausalDiT(cfg)
    x = torch.randn(2, 48, 3, 4, 6)
    tokens, grid = model.patchify(x)
    conv = torch.nn.functional.conv3d(x, model.patch_embedding.weight, model.patch_embedding.bias, stride=(1, 2, 2))
    assert grid == (3, 2, 3)
    assert torch.allclose(tokens, conv.flatten(2).transpose(1, 2), atol=1e-5)
    head_out = torch.randn(2, 18, 1 * 2 * 2 * 48)
    ref = torch.stack([torch.einsum("fhwpqrc->cfphqwr", u.view(3, 2, 3, 1, 2, 2, 48)).reshape(48, 3, 4, 6)
                       for u in head_out])
    assert torch.equal(model.unpatchify(head_out, grid), ref)


def test_block_and_head_match_the_spec_formulas():
    """One block + head against an independent eager transcription of spec §1.1 (fp64)."""
    cfg = _tiny()
    model = _model(cfg).double()
    blk, fn = model.blocks[0], torch.nn.functional
    layout = TokenLayout((2, 4, 6), 1, 3)
    n, d, h = layout.tokens, cfg.dim, cfg.num_heads
    x = torch.randn(1, n, d, dtype=torch.float64)
    e0 = torch.randn(1, 2, 6, d, dtype=torch.float64)
    ctx = torch.randn(1, 1, cfg.text_len, d, dtype=torch.float64)

    def per_token(v):  # [1, F, C] -> [1, L, C]
        return v.repeat_interleave(layout.frame_len, dim=1)

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def rope(v):  # [1, L, H, D] interleaved pairs, complex rotation
        out, _ = rope_qk_torch(v.float(), v.float(), layout=layout, theta=1e4, norm_weight_q=None,
                               norm_weight_k=None, eps=1e-6)
        return out.double()

    def attn(q, k, v):
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v).flatten(2)

    e = [per_token(t) for t in (blk.modulation.unsqueeze(0) + e0).unbind(2)]
    sa, ca = blk.self_attn, blk.cross_attn
    y = fn.layer_norm(x, (d,), eps=1e-6) * (1 + e[1]) + e[0]
    q = rope(rms(sa.q(y), sa.norm_q.weight).view(1, n, h, -1))
    k = rope(rms(sa.k(y), sa.norm_k.weight).view(1, n, h, -1))
    ref = x + sa.o(attn(q, k, sa.v(y).view(1, n, h, -1))) * e[2]
    y = fn.layer_norm(ref, (d,), blk.norm3.weight, blk.norm3.bias, eps=1e-6)
    c = ctx[:, 0]
    ref = ref + ca.o(attn(rms(ca.q(y), ca.norm_q.weight).view(1, n, h, -1),
                          rms(ca.k(c), ca.norm_k.weight).view(1, -1, h, cfg.head_dim), ca.v(c).view(1, -1, h, cfg.head_dim)))
    y = fn.layer_norm(ref, (d,), eps=1e-6) * (1 + e[4]) + e[3]
    ref = ref + blk.ffn[2](fn.gelu(blk.ffn[0](y), approximate="tanh")) * e[5]
    with torch.no_grad():
        out = blk(x, e0, ctx, attn=DenseAttention(), layer=0, layout=layout, theta=1e4)
        assert rel_err(out, ref) < 1e-6
        t_e = torch.randn(1, 2, d, dtype=torch.float64)
        mod = model.head.modulation.unsqueeze(0) + t_e[:, :, None]
        head_ref = model.head.head(fn.layer_norm(out, (d,), eps=1e-6) * (1 + per_token(mod[:, :, 1])) + per_token(mod[:, :, 0]))
        assert rel_err(model.head(out, t_e, frame_len=layout.frame_len), head_ref) < 1e-6


def test_adaln_reference_math():
    x = torch.randn(2, 6, 8)
    shift, scale = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    out = adaln_torch(x, shift, scale, frame_len=2, eps=1e-6)
    ln = torch.nn.functional.layer_norm(x, (8,), eps=1e-6).view(2, 3, 2, 8)
    ref = (ln * (1 + scale[:, :, None]) + shift[:, :, None]).view(2, 6, 8)
    assert torch.allclose(out, ref, atol=1e-6)


def test_ops_torch_matches_kernels_backend():
    cfg = _tiny()
    model = _model(cfg)
    clean, noisy, t_noisy, ctx = _inputs(cfg, frames=4)
    with torch.no_grad():
        a = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx)
        b = model.set_ops("torch").forward_teacher_forcing(clean, noisy, t_noisy, ctx)
    assert rel_err(b, a) < 1e-5


# ---------------------------------------------------------------------------------------------
# Cache policy, bad inputs
# ---------------------------------------------------------------------------------------------
def test_bf16_cache_sink_window_and_shot_sink():
    c = BF16KVCache(num_layers=1, num_heads=1, head_dim=8, chunk_tokens=2, max_chunks=4, sink_chunks=1,
                    dtype=torch.float32)
    seen = []
    for n in range(7):
        c.start_chunk(n)
        c.start_chunk(n)  # re-calls for the same chunk keep its slot
        seen.append(c.context_chunks())
        if n == 4:
            c.pin_shot_sink(4)
    assert seen == [[], [0], [0, 1], [0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 5]]
    with pytest.raises(ValueError, match="must not go back"):
        c.start_chunk(2)


def test_bad_inputs_have_clear_errors():
    cfg = _tiny()
    model = _model(cfg)
    clean, noisy, t_noisy, ctx = _inputs(cfg, frames=4)
    with pytest.raises(ValueError, match="in_channels=192"):
        model.forward_teacher_forcing(clean[:, :48], noisy[:, :48], t_noisy, ctx)
    with torch.device("meta"):
        five = CausalDiT(ModelConfig.from_name("wan2.2-ti2v-5b"))
    with pytest.raises(ValueError, match=r"multiples of the patch \(1, 2, 2\)"):
        five._check_latents("x_chunk", torch.zeros(1, 48, 8, 43, 80))
    with pytest.raises(ValueError, match=r"\[B=1, F=4\]"):
        model.forward_teacher_forcing(clean, noisy, t_noisy[:, :3], ctx)
    with pytest.raises(ValueError, match="384"):
        model.forward_teacher_forcing(clean, noisy, t_noisy, torch.randn(1, 8, 512))
    with pytest.raises(ValueError, match="multiple of chunk_frames=2"):
        model.forward_teacher_forcing(clean[:, :, :3], noisy[:, :, :3], t_noisy[:, :3], ctx)
    cache = model.make_kv_cache(1, storage="bf16")
    with pytest.raises(ValueError, match="chunk_tokens=48"):
        model.forward_chunk(noisy[:, :, :1], t_noisy[:, :1], ctx, cache=cache, chunk_id=0)
    with pytest.raises(ValueError, match="storage='fp4'"):
        model.set_ops("torch").make_kv_cache(1, storage="fp4")


# ---------------------------------------------------------------------------------------------
# Compile, quantized linears
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ops", ["kernels", "torch"])
def test_block_compiles_fullgraph_without_graph_breaks(ops):
    cfg = _tiny()
    model = _model(cfg, ops=ops)
    block = model.blocks[0]
    layout = TokenLayout((2, 4, 6), 1, 3)
    x = torch.randn(1, layout.tokens, cfg.dim)
    e0 = torch.randn(1, 2, 6, cfg.dim)
    ctx = torch.randn(1, 1, cfg.text_len, cfg.dim)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    attn = DenseAttention()
    with torch.no_grad():
        out = compiled(x, e0, ctx, attn=attn, layer=0, layout=layout, theta=10000.0)
        ref = block(x, e0, ctx, attn=attn, layer=0, layout=layout, theta=10000.0)
    assert rel_err(out, ref) < 1e-5


def test_nvfp4_mode_runs():
    fp4 = pytest.importorskip("longlive_kernels.fp4")
    if not hasattr(fp4, "quantize_model"):
        pytest.skip("longlive_kernels.fp4.quantize_model not available yet")
    cfg = _tiny(dim=256, num_heads=4, ffn_dim=512)
    model = _model(cfg)
    clean, noisy, t_noisy, ctx = _inputs(cfg, frames=2)
    with torch.no_grad():
        ref = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx)
        model.quantize_("nvfp4")
        out = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx)
    assert not isinstance(model.blocks[0].self_attn.q, torch.nn.Linear)
    assert isinstance(model.head.head, torch.nn.Linear) and isinstance(model.time_projection[1], torch.nn.Linear)
    assert torch.isfinite(out).all() and rel_err(out, ref) < 0.5
