"""The chunk-wise AR loop: streaming output == reference loops built from plain ops (teacher forcing
over the whole history; a dict-of-tensors K/V store with the attended sets of the plain-Python
policy model), prompt switch / scene cut reach the cross-attention from the right chunk on, CFG,
FP4 KV storage, lengths, loading errors."""

import pytest
import torch
import torch.nn.functional as F

from longlive.data.prompts import SCENE_CUT_PREFIX, schedule_from_chunk_prompts
from longlive.inference import CachePolicy, FlowUniPCScheduler, Pipeline, plan_chunks, resolve_length
from longlive.inference.cache_policy import ForwardHandle
from longlive.model.attention import AttentionBackend

from ._helpers import micro_config, micro_model, micro_pipeline

STEPS = 3
# Exactness tests run ops="torch": its BF16KVCache stores K/V in the model dtype (fp32 here), so the only
# differences to the reference loops are summation orders. FP4KVCache's "bf16" storage is true BF16.
EXACT = "torch"


def _noise_stream(pipe, seed):
    g = torch.Generator().manual_seed(seed)
    cfg = pipe.model.config
    shape = (1, cfg.in_channels, cfg.ar.chunk_frames, *cfg.latent_size)
    return lambda: torch.randn(shape, generator=g, dtype=torch.float32)


def test_full_history_stream_equals_teacher_forcing_loop():
    # With a window holding every chunk, chunk n's steps must equal the model's teacher-forcing forward over
    # [clean chunks 0..n-1 ; noisy chunk n] with the §5.2 mask (an independent path: masked SDPA, no cache).
    n_chunks = 4
    pol = CachePolicy(
        storage="bf16", max_chunks=n_chunks + 1, sink_chunks=0, shot_sink=False, recache_on_switch=False
    )
    pipe = micro_pipeline(policy=pol, ops=EXACT)
    out = [c.latents for c in pipe.stream("a red circle", num_chunks=n_chunks, steps=STEPS, seed=3)]

    model, cf = pipe.model, pipe.model.config.ar.chunk_frames
    ctx = pipe.encode_prompt("a red circle")
    noise = _noise_stream(pipe, 3)
    sched = FlowUniPCScheduler(STEPS)
    ref = []
    with torch.no_grad():
        for n in range(n_chunks):
            x = noise()
            sched.reset()
            for t in sched.timesteps:
                clean = torch.cat(ref + [torch.zeros_like(x)], dim=2)
                noisy = torch.cat([torch.zeros_like(x)] * n + [x], dim=2)
                t_noisy = torch.full((1, clean.shape[2]), float(t))
                v = model.forward_teacher_forcing(clean, noisy, t_noisy, ctx, attention_impl="sdpa")
                x = sched.step(v[:, :, n * cf : (n + 1) * cf], x)
            ref.append(x)
    for n in range(n_chunks):
        torch.testing.assert_close(out[n], ref[n], rtol=1e-4, atol=1e-4, msg=f"chunk {n}")


class DictKV(AttentionBackend):
    """Reference K/V store: plain dict {(layer, chunk): tensor}, SDPA over the listed chunks + the call's own K/V."""

    def __init__(self):
        self.k, self.v = {}, {}

    def bind(self, chunk, context):
        self.chunk, self.context = chunk, list(context)
        return self

    def __call__(self, q, k, v, *, layer):
        self.k[layer, self.chunk], self.v[layer, self.chunk] = k.clone(), v.clone()
        ks = torch.cat([self.k[layer, c] for c in self.context] + [k], 1)
        vs = torch.cat([self.v[layer, c] for c in self.context] + [v], 1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2))
        return o.transpose(1, 2)


def _reference_loop(pipe, raw_prompts, policy, *, seed, steps=STEPS):
    """Spec §2.8 + v1 re-cache written out with plain ops and the plain-Python policy model."""
    sched_prompts = schedule_from_chunk_prompts(raw_prompts)
    model = pipe.model
    fpc = model.config.ar.chunk_frames
    plans = plan_chunks(policy, sched_prompts, frames_per_chunk=fpc)
    tokens = fpc * model.config.grid_size[0] * model.config.grid_size[1]
    store, noise, sched = DictKV(), _noise_stream(pipe, seed), FlowUniPCScheduler(steps)
    clean, outs = {}, []

    def run(x, t, ctx, chunk, context, offset):
        return model.forward_chunk(
            x,
            torch.full((1,), float(t)),
            ctx,
            cache=ForwardHandle(tokens, chunk),
            chunk_id=chunk,
            frame_offset=offset,
            attention=store.bind(chunk, context),
        )

    with torch.no_grad():
        for n, (p, plan) in enumerate(zip(sched_prompts, plans)):
            ctx = pipe.encode_prompt(p.prompt)
            for c in plan.recache:
                run(clean[c], 0, ctx, c, [d for d in plan.context if d < c], plans[c].frame_offset)
            x = noise()
            sched.reset()
            for t in sched.timesteps:
                x = sched.step(run(x, t, ctx, n, plan.context, plan.frame_offset), x)
            run(x, 0, ctx, n, plan.context, plan.frame_offset)
            clean[n] = x
            outs.append(x)
    return outs, plans


PROMPTS = (
    ["a red circle"] * 4
    + ["a red circle moves up"] * 3
    + [SCENE_CUT_PREFIX + "two blue squares"]
    + ["two blue squares"]
    + ["two blue squares spin"] * 3
)


@pytest.mark.parametrize(
    "policy",
    [
        CachePolicy(storage="bf16"),  # sink + window + shot sink + RoPE offset + re-cache
        CachePolicy(
            storage="bf16",
            max_chunks=3,
            sink_chunks=0,
            shot_sink=False,
            rope_shot_offset=0,
            recache_sinks=True,
        ),
        CachePolicy(storage="bf16", recache_on_switch=False, max_chunks=5, sink_chunks=2),
    ],
    ids=["longlive", "no-sinks", "no-recache"],
)
def test_windowed_multishot_stream_equals_reference_loop(policy):
    pipe = micro_pipeline(policy=policy, ops=EXACT)
    session = pipe.session(steps=STEPS, seed=7)
    got = [session.next_chunk(p) for p in PROMPTS]
    ref, plans = _reference_loop(pipe, PROMPTS, policy, seed=7)
    assert [c.plan for c in got] == plans
    if policy.recache_on_switch:
        assert any(p.recache for p in plans)
    for n in range(len(PROMPTS)):
        torch.testing.assert_close(got[n].latents, ref[n], rtol=1e-4, atol=1e-4, msg=f"chunk {n}")


def test_kernel_ops_and_bf16_fp4kvcache_match_reference_to_bf16_rounding():
    policy = CachePolicy(storage="bf16")
    pipe = micro_pipeline(policy=policy)  # ops="kernels": FP4KVCache with BF16 storage, fused-op references
    prompts = PROMPTS[:9]  # through the switch (re-cache) and the scene cut
    got = [c.latents for c in pipe.stream(prompts, num_chunks=len(prompts), steps=2, seed=7)]
    ref, _ = _reference_loop(pipe, prompts, policy, seed=7, steps=2)
    for n in range(len(prompts)):
        err = (got[n] - ref[n]).norm() / ref[n].norm()
        assert err < 2e-2, f"chunk {n}: rel err {err:.3g}"


def test_stream_uses_bounded_window_not_full_history():
    # Same prompts, full history vs the LongLive window: outputs must differ once chunk 0-1 fall out of the window.
    full = micro_pipeline(
        policy=CachePolicy(storage="bf16", max_chunks=12, shot_sink=False, recache_on_switch=False), ops=EXACT
    )
    win = micro_pipeline(
        policy=CachePolicy(storage="bf16", shot_sink=False, recache_on_switch=False), ops=EXACT
    )
    a = [c.latents for c in full.stream("x", num_chunks=6, steps=1, seed=1)]
    b = [c.latents for c in win.stream("x", num_chunks=6, steps=1, seed=1)]
    for n in range(4):  # chunks 0..3 attend at most 3 earlier chunks: identical
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-5)
    assert (a[5] - b[5]).abs().max() > 1e-3


def test_switch_and_cut_reach_cross_attention_from_the_right_chunk(monkeypatch):
    pipe = micro_pipeline()
    calls = []
    orig = pipe.model.forward_chunk

    def spy(x, t, context, *, cache, chunk_id, frame_offset=None, **kw):
        calls.append((len(done), chunk_id, float(t.reshape(-1)[0]), frame_offset, context.clone()))
        return orig(x, t, context, cache=cache, chunk_id=chunk_id, frame_offset=frame_offset, **kw)

    monkeypatch.setattr(pipe.model, "forward_chunk", spy)
    enc = {p: pipe.encode_prompt(p) for p in set(PROMPTS)}
    session, done = pipe.session(steps=2, seed=0), []
    for p in PROMPTS:
        done.append(session.next_chunk(p))
    # the text each generated chunk's own calls saw
    for k, p in enumerate(PROMPTS):
        own = [c for c in calls if c[0] == k and c[1] == k]
        assert len(own) == 3  # 2 steps + t=0 re-run
        for c in own:
            torch.testing.assert_close(c[4], enc[p], rtol=0, atol=0)
    # re-cache calls: at the switch chunk 4, chunks 2 and 3 (window, not the sink 0) re-run at t=0 with the NEW prompt
    rec = [c for c in calls if c[1] != c[0]]
    assert [(c[0], c[1], c[2]) for c in rec] == [(4, 2, 0.0), (4, 3, 0.0), (9, 8, 0.0)]
    for c in rec:
        torch.testing.assert_close(c[4], enc[PROMPTS[c[0]]], rtol=0, atol=0)
    # RoPE: the scene cut at chunk 7 inserts rope_shot_offset positions from chunk 7 on; re-cache keeps old offsets
    fo = {c[1]: c[3] for c in calls if c[0] == c[1]}
    gap = pipe.policy.rope_shot_offset
    assert [fo[k] for k in range(len(PROMPTS))] == [
        2 * k + (gap if k >= 7 else 0) for k in range(len(PROMPTS))
    ]
    assert {c[1]: c[3] for c in rec} == {2: 4, 3: 6, 8: 16 + gap}
    assert done[7].plan.scene_cut and done[7].prompt.startswith(SCENE_CUT_PREFIX)
    assert not done[8].prompt.startswith(SCENE_CUT_PREFIX)


def test_interactive_session_flags():
    pipe = micro_pipeline()
    s = pipe.session(steps=1)
    a = s.next_chunk("cat")
    b = s.next_chunk("cat")
    c = s.next_chunk("dog")
    d = s.next_chunk("dog", scene_cut=True)
    e = s.next_chunk("The scene transitions. dog", scene_cut=False)
    assert [x.plan.switch for x in (a, b, c, d, e)] == [False, False, True, True, False]
    assert [x.plan.scene_cut for x in (a, b, c, d, e)] == [False, False, False, True, False]
    assert d.prompt == SCENE_CUT_PREFIX + "dog" and e.prompt == "dog"
    assert c.plan.recache == (1,) and s.chunk_index == 5
    with pytest.raises(ValueError, match="non-empty"):
        s.next_chunk("  ")


def test_cfg_with_identical_negative_prompt_equals_no_cfg():
    pipe = micro_pipeline(ops=EXACT)
    plain = [c.latents for c in pipe.stream("a cat", num_chunks=3, steps=2, seed=2)]
    same = [
        c.latents
        for c in pipe.stream(
            "a cat", num_chunks=3, steps=2, seed=2, guidance_scale=3.0, negative_prompt="a cat"
        )
    ]
    other = [
        c.latents
        for c in pipe.stream(
            "a cat", num_chunks=3, steps=2, seed=2, guidance_scale=3.0, negative_prompt="blurry"
        )
    ]
    for a, b in zip(plain, same):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (plain[1] - other[1]).abs().max() > 1e-2


def test_fp4_kv_storage_close_to_bf16():
    a = [
        c.latents
        for c in micro_pipeline(policy=CachePolicy(storage="bf16"), ops=EXACT).stream(
            "x", num_chunks=4, steps=2
        )
    ]
    b = [
        c.latents
        for c in micro_pipeline(policy=CachePolicy(storage="fp4")).stream("x", num_chunks=4, steps=2)
    ]
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)  # no history yet
    for x, y in zip(a[1:], b[1:]):
        assert F.cosine_similarity(x.flatten(), y.flatten(), dim=0) > 0.98
        assert not torch.equal(x, y)


def test_same_seed_same_video_other_seed_other_video():
    pipe = micro_pipeline()
    a = torch.cat([c.latents for c in pipe.stream("x", num_chunks=2, steps=1, seed=5)], 2)
    b = torch.cat([c.latents for c in pipe.stream("x", num_chunks=2, steps=1, seed=5)], 2)
    c = torch.cat([c.latents for c in pipe.stream("x", num_chunks=2, steps=1, seed=6)], 2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_resolve_length():
    kw = {"chunk_latents": 8, "temporal_stride": 4, "fps": 24.0}
    assert resolve_length(num_frames=29, **kw) == 1 and resolve_length(num_frames=29 + 32 * 11, **kw) == 12
    with pytest.raises(ValueError, match="nearest valid: 381, 413"):
        resolve_length(num_frames=400, **kw)
    with pytest.raises(ValueError, match="nearest valid: 29"):
        resolve_length(num_frames=10, **kw)
    assert resolve_length(seconds=16.0, **kw) == 13  # 384 frames -> 29 + 32·11 = 381 < 384 -> 13 chunks
    assert resolve_length(num_chunks=3, **kw) == 3
    with pytest.raises(ValueError, match="exactly one"):
        resolve_length(num_chunks=3, seconds=1.0, **kw)
    with pytest.raises(ValueError, match="seconds must be a positive"):
        resolve_length(seconds=-1.0, **kw)
    with pytest.raises(ValueError, match="num_chunks must be a positive int"):
        resolve_length(num_chunks=0, **kw)


def test_from_pretrained_errors_and_roundtrip(tmp_path):
    from longlive.model import CheckpointMismatchError, save_checkpoint

    with pytest.raises(ValueError, match="no checkpoint given"):
        Pipeline.from_pretrained(config="tiny")
    with pytest.raises(ValueError, match="random_weights needs a config"):
        Pipeline.from_pretrained(random_weights=True)
    with pytest.raises(ValueError, match="precision must be one of"):
        Pipeline.from_pretrained(config="tiny", random_weights=True, precision="int8")
    with pytest.raises(ValueError, match="unknown model preset"):
        Pipeline.from_pretrained(config="tiny-typo", random_weights=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Pipeline.from_pretrained(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="kv_cache='fp4' is not possible"):
        Pipeline.from_pretrained(
            config=micro_config(), random_weights=True, ops="torch", kv_cache="fp4", text_encoder="hash:64"
        )
    (tmp_path / "x").mkdir()  # a checkpoint directory without Wan2.2_VAE.pth; checked before any weight is read
    with pytest.raises(ValueError, match="needs the Wan2.2 VAE"):
        Pipeline.from_pretrained(tmp_path / "x", config="wan2.2-ti2v-5b", text_encoder="hash:4096")
    with pytest.raises(ValueError, match="names the random-weight LightVAE"):
        Pipeline.from_pretrained(tmp_path / "x", config="wan2.2-ti2v-5b", vae="lightvae", text_encoder="hash:4096")
    with pytest.raises(ValueError, match="PatchVAE; --vae takes no path"):
        Pipeline.from_pretrained(
            config=micro_config(), random_weights=True, vae=tmp_path, text_encoder="hash:64"
        )
    with pytest.raises(ValueError, match="text encoder 'hash:32' is 32 wide"):
        Pipeline.from_pretrained(config=micro_config(), random_weights=True, text_encoder="hash:32")
    ck = tmp_path / "micro.safetensors"
    save_checkpoint(micro_model(), ck)
    pipe = Pipeline.from_pretrained(ck, text_encoder="hash:64", vae_options={"patch": 4})
    assert pipe.model.config == micro_config() and pipe.policy.storage == "bf16"
    with pytest.raises(CheckpointMismatchError, match="does not match"):
        Pipeline.from_pretrained(ck, config=micro_config(dim=256, num_heads=4), text_encoder="hash:64")


def test_random_lightvae_is_selected_by_name():
    """``vae="lightvae"`` with random weights: the Wan2.2 VAE with its decoder pruned as MG-LightVAE."""
    from longlive.config import ModelConfig
    from longlive.inference.loading import _build_vae, _vae_path

    cfg = ModelConfig.from_name("wan2.2-ti2v-5b")
    path = _vae_path(cfg, "lightvae", None, random_weights=True)
    vae = _build_vae(cfg, path, torch.device("meta"), torch.bfloat16, {})
    assert vae.config.dec_dim == 64 and vae.decoder.conv1.weight.shape[0] == 256
    assert vae.dtype == torch.bfloat16 and vae.spatial_stride == 16
    full = _build_vae(cfg, _vae_path(cfg, None, None, random_weights=True), torch.device("meta"), torch.bfloat16, {})
    assert full.config.dec_dim == 256


@pytest.mark.parametrize(("capability", "cudnn_fp8", "want"), [((9, 0), False, "bf16"), ((9, 0), True, "fp8"),
                                                              ((8, 9), False, "fp8")])
def test_fp8_attention_falls_back_on_hopper_without_cudnn_fp8(monkeypatch, capability, cudnn_fp8, want):
    """attention_compute='fp8' on Hopper without cuDNN's FP8 attention runs BF16 (with a warning):
    the Triton FP8 kernel left there is 2.4x slower than dequantize + cuDNN BF16 SDPA. Elsewhere, and
    with cuDNN FP8, the choice stands; bf16 and CPU devices are never touched."""
    from longlive.inference import pipeline
    from longlive_kernels.attention import fp8_sdpa

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(fp8_sdpa, "cudnn_fp8_sdpa_available", lambda device: cudnn_fp8)
    cuda = torch.device("cuda", 0)
    if want == "bf16":
        with pytest.warns(RuntimeWarning, match="nvidia-cudnn-frontend"):
            assert pipeline._usable_attention_compute("fp8", cuda) == "bf16"
    else:
        assert pipeline._usable_attention_compute("fp8", cuda) == want
    assert pipeline._usable_attention_compute("bf16", cuda) == "bf16"
    assert pipeline._usable_attention_compute("fp8", torch.device("cpu")) == "fp8"
