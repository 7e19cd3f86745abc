"""Streaming decode: async (worker threads) == sync == whole-clip decode, mp4 writing as chunks arrive,
error propagation, and Generate's Ctrl-C path leaving a playable mp4 of every finished chunk."""

import av
import numpy as np
import pytest
import torch

from longlive.inference import ChunkDecoder, Mp4Writer, to_uint8_frames
from longlive.model import PatchVAE, WanVAE, WanVAEConfig

from ._helpers import micro_pipeline


def _read_mp4(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _small_wan():
    torch.manual_seed(0)
    return WanVAE(WanVAEConfig(enc_dim=8, dec_dim=8)).eval()


@pytest.mark.parametrize("vae_kind", ["wan", "patch"])
def test_async_decode_equals_sync_and_whole_clip(vae_kind):
    vae = _small_wan() if vae_kind == "wan" else PatchVAE(4, clamp=True)
    c = vae.latent_channels
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(1, c, 2, 2, 2, generator=g) for _ in range(4)]
    got = {}
    for mode in ("sync", "async"):
        frames = []
        dec = ChunkDecoder(
            vae, mode=mode, sink=lambda i, f, out=frames: out.append((i, f.copy())), max_pending=1
        )
        for i, z in enumerate(chunks):
            dec.submit(i, z)
        dec.close()
        assert [i for i, _ in frames] == [0, 1, 2, 3]
        assert dec.chunks_decoded == 4 and dec.frames_decoded == sum(f.shape[0] for _, f in frames)
        got[mode] = np.concatenate([f for _, f in frames])
    assert np.array_equal(got["sync"], got["async"])
    with torch.no_grad():
        whole = to_uint8_frames(vae.decode(torch.cat(chunks, 2)))[0].numpy()
    assert got["sync"].shape == whole.shape
    assert np.abs(got["sync"].astype(int) - whole.astype(int)).max() <= 1  # fp32 rounding at a .5 boundary
    if vae_kind == "wan":
        assert got["sync"].shape[0] == 1 + 4 * (8 - 1)  # 4k+1 rule over the stream


def test_to_uint8_frames():
    v = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 5, 1, 1).expand(1, 3, 5, 1, 1)
    f = to_uint8_frames(v)
    assert f.shape == (1, 5, 1, 1, 3) and f.dtype == torch.uint8
    assert f[0, :, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        to_uint8_frames(torch.zeros(1, 4, 2, 2, 2))


@pytest.mark.parametrize("fragmented", [True, False])
def test_mp4_writer_chunks(tmp_path, fragmented):
    path = tmp_path / "v.mp4"
    yy, xx = np.mgrid[0:16, 0:16]
    base = np.stack([40 + 8 * yy, 40 + 8 * xx, np.full_like(yy, 128)], -1)[None].astype(
        np.uint8
    )  # smooth (yuv420p)
    with Mp4Writer(path, fps=8, fragmented=fragmented) as w:
        for k in range(3):
            w.write(np.repeat(base, 5, axis=0) // (k + 1))
        assert w.frames_written == 15 and w.chunks_written == 3
    frames = _read_mp4(path)
    assert frames.shape == (15, 16, 16, 3)
    assert np.abs(frames[0].astype(int) - base[0].astype(int)).mean() < 6  # lossy H.264, same picture
    with pytest.raises(RuntimeError, match="closed"):
        w.write(base)


def test_mp4_writer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Mp4Writer(tmp_path / "missing" / "v.mp4", fps=8)
    with pytest.raises(ValueError, match="fps"):
        Mp4Writer(tmp_path / "v.mp4", fps=0)
    w = Mp4Writer(tmp_path / "v.mp4", fps=8)
    with pytest.raises(ValueError, match="uint8"):
        w.write(np.zeros((2, 16, 16, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="even"):
        w.write(np.zeros((2, 15, 16, 3), dtype=np.uint8))
    w.close()


def test_decoder_errors_reach_the_caller():
    vae = PatchVAE(4)

    def bad_sink(i, frames):
        raise OSError("disk full")

    dec = ChunkDecoder(vae, mode="async", sink=bad_sink, max_pending=1)
    with pytest.raises(RuntimeError, match="disk full"):
        for i in range(50):
            dec.submit(i, torch.zeros(1, 48, 1, 2, 2))
        dec.close()
    with pytest.raises(ValueError, match="decode mode"):
        ChunkDecoder(vae, mode="later")


def test_generate_writes_every_chunk_and_stops_cleanly_on_ctrl_c(tmp_path):
    pipe = micro_pipeline()
    out = tmp_path / "a.mp4"
    r = pipe.generate("a red circle", num_chunks=4, out=out, steps=1, progress=False)
    assert (r.chunks_done, r.chunks_written, r.frames_written, r.interrupted) == (4, 4, 8, False)
    assert _read_mp4(out).shape == (8, 16, 16, 3)

    def stop_after_three(chunk):
        if chunk.index == 2:
            raise KeyboardInterrupt

    out2 = tmp_path / "b.mp4"
    r = pipe.generate(
        "a red circle", num_chunks=20, out=out2, steps=1, progress=False, on_chunk=stop_after_three
    )
    assert r.interrupted and r.chunks_done == 3 and r.chunks_written == 3 and r.frames_written == 6
    assert _read_mp4(out2).shape[0] == 6
    r = pipe.generate("x", num_chunks=2, out=None, steps=1, progress=False)  # DiT only
    assert r.chunks_done == 2 and r.frames_written == 0
