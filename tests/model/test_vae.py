"""VAEs: WanVAE structure/loading/streaming on random weights at reduced width, PatchVAE exactness."""

import dataclasses
import os

import pytest
import torch

from longlive.model.vae import (
    PatchVAE,
    StateDictMismatchError,
    VideoVAE,
    WanVAE,
    WanVAEConfig,
    load_state_dict_file,
    load_vae,
)
from longlive.model.vae_wan import WAN22_LATENT_MEAN, WAN22_LATENT_STD, _patchify, _unpatchify

SMALL = WanVAEConfig(enc_dim=8, dec_dim=8)  # same structure, 1.05 M parameters


@pytest.fixture(scope="module")
def small_vae() -> WanVAE:
    torch.manual_seed(0)
    vae = WanVAE(SMALL).eval().requires_grad_(False)
    # Break the all-ones norm gains and zero-ish biases so every path carries signal.
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith(("gamma", "bias")):
                p.add_(0.1 * torch.randn_like(p))
    return vae


def _video(t: int, h: int = 32, w: int = 48, b: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


def _latents(t: int, h: int = 2, w: int = 3, b: int = 1, c: int = 48, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, t, h, w, generator=g)


# ------------------------------------------------------------------------------------ official size
def test_official_size_names_shapes_and_count():
    with torch.device("meta"):
        vae = WanVAE()
    sd = vae.state_dict()
    # 196 tensors / 704,688,668 parameters: what the published Wan2.2_VAE.pth (2,818,839,170 bytes, fp32) holds.
    assert len(sd) == 196
    assert sum(v.numel() for v in sd.values()) == 704_688_668
    expected = {
        "encoder.conv1.weight": (160, 12, 3, 3, 3),
        "encoder.downsamples.0.downsamples.0.residual.0.gamma": (160, 1, 1, 1),
        "encoder.downsamples.0.downsamples.2.resample.1.weight": (160, 160, 3, 3),
        "encoder.downsamples.1.downsamples.0.shortcut.weight": (320, 160, 1, 1, 1),
        "encoder.downsamples.1.downsamples.2.time_conv.weight": (320, 320, 3, 1, 1),
        "encoder.downsamples.2.downsamples.2.time_conv.bias": (640,),
        "encoder.middle.1.norm.gamma": (640, 1, 1),
        "encoder.middle.1.to_qkv.weight": (1920, 640, 1, 1),
        "encoder.head.0.gamma": (640, 1, 1, 1),
        "encoder.head.2.weight": (96, 640, 3, 3, 3),
        "conv1.weight": (96, 96, 1, 1, 1),
        "conv2.weight": (48, 48, 1, 1, 1),
        "decoder.conv1.weight": (1024, 48, 3, 3, 3),
        "decoder.middle.1.proj.weight": (1024, 1024, 1, 1),
        "decoder.upsamples.0.upsamples.3.time_conv.weight": (2048, 1024, 3, 1, 1),
        "decoder.upsamples.1.upsamples.3.time_conv.weight": (2048, 1024, 3, 1, 1),
        "decoder.upsamples.2.upsamples.0.shortcut.weight": (512, 1024, 1, 1, 1),
        "decoder.upsamples.2.upsamples.3.resample.1.weight": (512, 512, 3, 3),
        "decoder.upsamples.3.upsamples.0.shortcut.weight": (256, 512, 1, 1, 1),
        "decoder.upsamples.3.upsamples.2.residual.6.weight": (256, 256, 3, 3, 3),
        "decoder.head.2.weight": (12, 256, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any("time_conv" in k for k in sd if k.startswith("decoder.upsamples.2."))
    assert not any(k.startswith("decoder.upsamples.3.upsamples.3") for k in sd)  # last stage: no resample
    assert (vae.latent_channels, vae.temporal_stride, vae.spatial_stride) == (48, 4, 16)


def test_official_latent_constants():
    vae = WanVAE(SMALL)
    mean, inv_std = vae.latent_stats()
    assert mean.shape == (1, 48, 1, 1, 1) and mean.dtype == torch.float32
    assert mean[0, 19].item() == pytest.approx(0.5109) and WAN22_LATENT_STD[39] == 1.6887
    torch.testing.assert_close(1.0 / inv_std.flatten(), torch.tensor(WAN22_LATENT_STD), rtol=1e-6, atol=0)
    raw = torch.randn(2, 48, 3, 2, 2)
    z = vae.normalize(raw)
    torch.testing.assert_close(z, (raw - torch.tensor(WAN22_LATENT_MEAN).view(1, 48, 1, 1, 1))
                               / torch.tensor(WAN22_LATENT_STD).view(1, 48, 1, 1, 1))
    torch.testing.assert_close(vae.denormalize(z), raw, rtol=1e-6, atol=1e-6)
    # bf16 weights keep the fp32 constants
    vae16 = WanVAE(SMALL).to(torch.bfloat16)
    assert vae16.latent_stats()[0].dtype == torch.float32


# ------------------------------------------------------------------------------------ geometry
def test_frame_rules():
    vae = WanVAE(SMALL)
    assert [vae.frames_to_latents(n) for n in (1, 5, 121)] == [1, 2, 31]
    assert [vae.latents_to_frames(t) for t in (1, 2, 8, 31)] == [1, 5, 29, 121]
    with pytest.raises(ValueError, match=r"1 \+ 4k.*got 10.*9 or 13"):
        vae.frames_to_latents(10)
    with pytest.raises(ValueError):
        vae.latents_to_frames(0)
    assert vae.latent_shape((2, 3, 29, 704, 1280)) == (2, 48, 8, 44, 80)


def test_patchify_channel_order_and_inverse():
    x = torch.randn(1, 3, 2, 6, 8)
    p = _patchify(x)
    assert p.shape == (1, 12, 2, 3, 4)
    c, r, q, h, w = 2, 1, 0, 2, 3  # colour, column offset, row offset: channel 4c + 2r + q
    assert torch.equal(p[0, 4 * c + 2 * r + q, 1, h, w], x[0, c, 1, 2 * h + q, 2 * w + r])
    assert torch.equal(_unpatchify(p), x)


# ------------------------------------------------------------------------------------ streaming
def test_encode_decode_shapes(small_vae):
    v = _video(9)
    z = small_vae.encode(v)
    assert z.shape == (1, 48, 3, 2, 3) and z.dtype == torch.float32 and torch.isfinite(z).all()
    y = small_vae.decode(z)
    assert y.shape == (1, 3, 9, 32, 48)
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1], [2, 3], [3, 1, 1], [1, 4]])
def test_stream_decode_equals_whole_decode(small_vae, chunks):
    z = _latents(5, b=2)
    whole = small_vae.decode(z)
    dec = small_vae.stream_decoder()
    parts, start = [], 0
    for i, n in enumerate(chunks):
        out = dec.decode_chunk(z[:, :, start:start + n])
        assert out.shape[2] == (1 + 4 * (n - 1) if i == 0 else 4 * n)
        parts.append(out)
        start += n
    assert dec.latents_seen == 5 and dec.frames_emitted == 17
    assert torch.equal(torch.cat(parts, dim=2), whole)  # same steps, same ops: bit-identical


def test_stream_decoder_reset_and_independence(small_vae):
    z = _latents(3)
    dec = small_vae.stream_decoder()
    first = dec.decode_chunk(z)
    other = small_vae.stream_decoder()  # a second stream does not disturb the first
    other.decode_chunk(_latents(2, seed=9))
    dec.reset()
    assert torch.equal(dec.decode_chunk(z), first)


def test_decode_is_causal(small_vae):
    z = _latents(4)
    full = small_vae.decode(z)
    prefix = small_vae.decode(z[:, :, :2])
    assert torch.equal(prefix, full[:, :, :5])


def test_encode_is_causal_and_streams(small_vae):
    v = _video(13)
    z = small_vae.encode(v)
    assert torch.equal(small_vae.encode(v[:, :, :5]), z[:, :, :2])
    enc = small_vae.stream_encoder()
    parts = [enc.encode_chunk(v[:, :, a:b]) for a, b in [(0, 1), (1, 9), (9, 13)]]
    assert [p.shape[2] for p in parts] == [1, 2, 1]
    assert torch.equal(torch.cat(parts, dim=2), z)
    enc = small_vae.stream_encoder()
    enc.encode_chunk(v[:, :, :5])
    with pytest.raises(ValueError, match="multiple of 4"):
        enc.encode_chunk(v[:, :, 5:8])
    with pytest.raises(ValueError, match="first video chunk must have 1 \\+ 4k"):
        small_vae.stream_encoder().encode_chunk(v[:, :, :4])


def test_multi_latent_steps_agree_to_fp32_noise(small_vae):
    fast = WanVAE(SMALL, decode_latents_per_step=4, encode_groups_per_step=3).eval()
    fast.load_state_dict(small_vae.state_dict())
    z = _latents(5)
    ref = small_vae.decode(z)
    torch.testing.assert_close(fast.decode(z), ref, rtol=1e-5, atol=1e-5)
    v = _video(13)
    torch.testing.assert_close(fast.encode(v), small_vae.encode(v), rtol=1e-5, atol=1e-5)


def test_bf16_runs(small_vae):
    vae = WanVAE(SMALL).to(torch.bfloat16).eval()
    vae.load_state_dict(small_vae.state_dict())
    z = vae.encode(_video(5))
    assert z.dtype == torch.bfloat16 and torch.isfinite(z.float()).all()
    y = vae.decode(z)
    ref = small_vae.decode(z.float())
    assert y.dtype == torch.bfloat16 and (y.float() - ref).abs().mean() < 0.05


# ------------------------------------------------------------------------------------ bad input
def test_bad_inputs(small_vae):
    with pytest.raises(ValueError, match=r"got T=10|got 10"):
        small_vae.encode(_video(10))
    with pytest.raises(ValueError, match="multiples of 16"):
        small_vae.encode(_video(5, h=40))
    with pytest.raises(ValueError, match="3 channels"):
        small_vae.encode(torch.zeros(1, 4, 5, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        small_vae.encode(torch.zeros(1, 3, 5, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="48 channels"):
        small_vae.decode(_latents(2, c=47))
    with pytest.raises(ValueError, match="5-D"):
        small_vae.decode(torch.zeros(48, 2, 2, 2))
    dec = small_vae.stream_decoder()
    dec.decode_chunk(_latents(1))
    with pytest.raises(ValueError, match="keep batch, height, width"):
        dec.decode_chunk(_latents(1, h=3))
    with pytest.raises(ValueError, match="positive int"):
        WanVAE(SMALL, decode_latents_per_step=0)


# ------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_from_pretrained_round_trip(small_vae, tmp_path, fmt):
    sd = {k: v.clone() for k, v in small_vae.state_dict().items()}
    path = tmp_path / f"Wan2.2_VAE.{fmt}"
    if fmt == "pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    loaded = WanVAE.from_pretrained(tmp_path)  # directory lookup
    assert loaded.config == SMALL and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    z = _latents(2)
    assert torch.equal(loaded.decode(z), small_vae.decode(z))
    assert load_vae("wan2.2", path).config == SMALL


def test_from_pretrained_reports_bad_checkpoints(small_vae, tmp_path):
    sd = dict(small_vae.state_dict())
    del sd["decoder.head.2.bias"]
    sd["decoder.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(StateDictMismatchError) as err:
        WanVAE.from_pretrained(tmp_path / "broken.pth")
    assert err.value.missing == ["decoder.head.2.bias"] and err.value.unexpected == ["decoder.extra.weight"]
    assert "decoder.head.2.bias" in str(err.value)
    # a Wan2.1-style encoder input (3 RGB channels, no 2x2 patchify) is named as such
    sd = dict(small_vae.state_dict())
    sd["encoder.conv1.weight"] = torch.zeros(8, 3, 3, 3, 3)
    torch.save(sd, tmp_path / "wan21.pth")
    with pytest.raises(StateDictMismatchError, match="Wan2.1"):
        WanVAE.from_pretrained(tmp_path / "wan21.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="Wan2.2_VAE"):
        WanVAE.from_pretrained(tmp_path / "empty")


def test_unsafe_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict_file(tmp_path / "evil.pth")


# ------------------------------------------------------------------------------------ PatchVAE
def test_patch_vae_exact_round_trip_and_layout():
    vae = PatchVAE(8)
    assert isinstance(vae, VideoVAE)
    assert (vae.latent_channels, vae.temporal_stride, vae.spatial_stride) == (192, 1, 8)
    v = _video(5, h=16, w=24, b=2)
    z = vae.encode(v)
    assert z.shape == (2, 192, 5, 2, 3)
    c, i, j = 1, 3, 5  # pixel_unshuffle order: channel c·64 + i·8 + j
    assert torch.equal(z[1, c * 64 + i * 8 + j, 4, 1, 2], v[1, c, 4, 8 + i, 16 + j])
    assert torch.equal(vae.decode(z), v)
    dec = vae.stream_decoder()
    parts = [dec.decode_chunk(z[:, :, a:b]) for a, b in [(0, 2), (2, 3), (3, 5)]]
    assert [p.shape[2] for p in parts] == [2, 1, 2]
    assert torch.equal(torch.cat(parts, 2), v)
    assert vae.frames_to_latents(7) == 7 and vae.latents_to_frames(7) == 7
    v16 = v.to(torch.bfloat16)
    assert torch.equal(vae.decode(vae.encode(v16)), v16)


def test_patch_vae_normalisation():
    vae = PatchVAE(4, mean=0.0, std=0.5)
    v = _video(3, h=8, w=8)
    z = vae.encode(v)
    torch.testing.assert_close(z.std().item(), v.std().item() * 2, rtol=1e-5, atol=0)
    assert torch.equal(vae.decode(z), v)  # power-of-two std stays exact
    per_channel = PatchVAE(2, mean=torch.linspace(-0.1, 0.1, 12).tolist(), std=[0.3] * 12)
    torch.testing.assert_close(per_channel.decode(per_channel.encode(v[..., :4, :4])), v[..., :4, :4])
    with pytest.raises(ValueError, match="12 values"):
        PatchVAE(2, mean=[0.0] * 5)
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode(_video(2, h=6, w=8))
    assert torch.equal(PatchVAE(2, clamp=True).decode(torch.full((1, 12, 1, 1, 1), 3.0)),
                       torch.ones(1, 3, 1, 2, 2))


def test_load_vae_factory():
    assert isinstance(load_vae("patch"), PatchVAE)
    assert load_vae("wan2.2", enc_dim=8, dec_dim=8).config == SMALL
    with pytest.raises(ValueError, match="expected 'wan2.2', 'lightvae' or 'patch'"):
        load_vae("sdxl")
    with pytest.raises(ValueError, match="pruning applies"):
        load_vae("wan2.2", pruning=0.5)


# ------------------------------------------------------------------------------------ LightVAE
def test_lightvae_widths_follow_the_pruning_rate():
    """MG-LightVAE's rule (spec §1.2): pruning = 1 - decoder conv_in.out / 1024; only the decoder shrinks."""
    for pruning, conv_in in ((0.75, 256), (0.5, 512), (0.0, 1024)):
        with torch.device("meta"):
            vae = load_vae("lightvae", pruning=pruning)
        sd = vae.state_dict()
        assert sd["decoder.conv1.weight"].shape[0] == conv_in
        assert 1 - sd["decoder.conv1.weight"].shape[0] / 1024 == pruning
        assert sd["decoder.head.2.weight"].shape == (12, conv_in // 4, 3, 3, 3)
        assert sd["encoder.conv1.weight"].shape == (160, 12, 3, 3, 3)  # the encoder keeps its widths
    assert WanVAEConfig.lightvae() == WanVAEConfig(dec_dim=64)
    for bad in (1.0, -0.1, 0.3):  # 0.3 leaves 179.2 channels
        with pytest.raises(ValueError, match="pruning"):
            WanVAEConfig.lightvae(bad)
    with pytest.raises(TypeError, match="pruning must be a float"):
        WanVAEConfig.lightvae("0.75")


def test_lightvae_checkpoint_loads_with_its_widths(tmp_path):
    cfg = dataclasses.replace(WanVAEConfig.lightvae(0.75), enc_dim=8)  # pruned decoder 64 wide
    vae = WanVAE(cfg)
    path = tmp_path / "MG-LightVAE.pth"
    torch.save(vae.state_dict(), path)
    loaded = load_vae("lightvae", path)
    assert loaded.config == cfg
    z = _latents(2)
    assert torch.equal(loaded.decode(z), vae.decode(z))
    dec = loaded.stream_decoder()  # streaming decode of the pruned decoder equals the whole decode
    streamed = torch.cat([dec.decode_chunk(z[:, :, :1]), dec.decode_chunk(z[:, :, 1:])], dim=2)
    torch.testing.assert_close(streamed, loaded.decode(z), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pruning applies"):
        load_vae("lightvae", path, pruning=0.5)


@pytest.mark.gpu
def test_official_size_streaming_on_gpu():
    """Full-width Wan2.2 VAE (random weights) on the GPU: streaming decode equals whole decode, and the
    peak memory of one 704x1280 chunk of 2 latents (8 frames after the first) is reported."""
    torch.manual_seed(0)
    vae = WanVAE().cuda().eval().requires_grad_(False)
    z = torch.randn(1, 48, 3, 4, 6, device="cuda")
    with torch.no_grad():
        whole = vae.decode(z)
        dec = vae.stream_decoder()
        streamed = torch.cat([dec.decode_chunk(z[:, :, :1]), dec.decode_chunk(z[:, :, 1:])], dim=2)
        torch.testing.assert_close(streamed, whole, rtol=1e-4, atol=1e-4)
        assert whole.shape == (1, 3, 9, 64, 96)
        torch.cuda.reset_peak_memory_stats()
        dec = vae.stream_decoder()
        big = torch.randn(1, 48, 2, 44, 80, device="cuda")
        dec.decode_chunk(big[:, :, :1])
        out = dec.decode_chunk(big[:, :, 1:])
        assert out.shape == (1, 3, 4, 704, 1280)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"WanVAE fp32 stream decode at 704x1280: peak {peak:.1f} GiB, cache {dec.cache.nbytes() / 2**30:.2f} GiB")
        assert peak < 40
