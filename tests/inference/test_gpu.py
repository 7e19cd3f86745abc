"""GPU paths (skipped without CUDA): decode on a second stream / another GPU == sync, the bf16 + FP4-KV
pipeline vs an fp32 reference, generate() to mp4 with peak memory, a 5B-width slice with NVFP4 linears,
NCCL SP=2 == SP=1."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longlive.data.prompts import SCENE_CUT_PREFIX
from longlive.inference import CachePolicy, ChunkDecoder, Pipeline
from longlive.model import WanVAE, WanVAEConfig

from ._helpers import micro_pipeline

PROMPTS = (
    ["a red circle"] * 3
    + ["a red circle moves up"] * 2
    + [SCENE_CUT_PREFIX + "a blue square", "a blue square"]
)


def _decode_all(vae, chunks, mode):
    got = []
    dec = ChunkDecoder(vae, mode=mode, sink=lambda i, f: got.append(f.copy()))
    for i, z in enumerate(chunks):
        dec.submit(i, z)
    dec.close()
    return np.concatenate(got)


@pytest.mark.gpu
def test_second_stream_decode_equals_sync():
    torch.manual_seed(0)
    vae = WanVAE(WanVAEConfig(enc_dim=16, dec_dim=16)).cuda().eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    chunks = [torch.randn(1, 48, 2, 4, 4, device="cuda", generator=g) for _ in range(4)]
    a, b = _decode_all(vae, chunks, "sync"), _decode_all(vae, chunks, "async")
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.gpu
@pytest.mark.multigpu
def test_decode_on_another_gpu_equals_sync():
    torch.manual_seed(0)
    vae = WanVAE(WanVAEConfig(enc_dim=16, dec_dim=16)).to("cuda:1").eval()
    g = torch.Generator(device="cuda:0").manual_seed(0)
    chunks = [torch.randn(1, 48, 2, 4, 4, device="cuda:0", generator=g) for _ in range(4)]
    a = _decode_all(vae, [c.to("cuda:1") for c in chunks], "sync")
    b = _decode_all(vae, chunks, "async")  # latents cross from cuda:0 on the decode stream of cuda:1
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.gpu
@pytest.mark.parametrize("storage", ["bf16", "fp4"])
def test_bf16_pipeline_with_kernel_cache_close_to_fp32(storage):
    ref = micro_pipeline(policy=CachePolicy(storage="bf16"), ops="torch", device="cuda")
    got = micro_pipeline(policy=CachePolicy(storage=storage), device="cuda", dtype=torch.bfloat16)
    a = [c.latents for c in ref.stream(PROMPTS, num_chunks=len(PROMPTS), steps=3, seed=1)]
    b = [c.latents for c in got.stream(PROMPTS, num_chunks=len(PROMPTS), steps=3, seed=1)]
    for n, (x, y) in enumerate(zip(a, b)):
        assert torch.isfinite(y).all()
        assert F.cosine_similarity(x.flatten(), y.flatten(), dim=0) > 0.95, f"chunk {n}"


@pytest.mark.gpu
def test_generate_on_gpu_writes_mp4(tmp_path):
    av = pytest.importorskip("av", reason="PyAV reads the mp4 back")

    pipe = micro_pipeline(policy=CachePolicy(storage="fp4"), device="cuda", dtype=torch.bfloat16)
    r = pipe.generate(PROMPTS, num_chunks=len(PROMPTS), out=tmp_path / "v.mp4", steps=2, progress=False)
    assert r.chunks_written == len(PROMPTS) and r.peak_memory_gb is not None and r.peak_memory_gb > 0
    with av.open(str(tmp_path / "v.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == r.frames_written == 2 * len(PROMPTS)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["nvfp4", "fp8", "fp8_tensor"])
def test_5b_width_slice_streams(precision):
    # the 5B block geometry (3072 wide, 24 heads, 704x1280 chunks of 7040 tokens) with 2 blocks
    cfg = __import__("longlive.config", fromlist=["ModelConfig"]).ModelConfig.from_name("wan2.2-ti2v-5b")
    cfg = cfg.replace(num_layers=2)
    pipe = Pipeline.from_pretrained(config=cfg, random_weights=True, precision=precision, kv_cache="fp4")
    s = pipe.session(steps=2)
    for n in range(3):
        out = s.next_chunk("a corgi surfs")
        assert out.latents.shape == (1, 48, 8, 44, 80) and torch.isfinite(out.latents).all()
        assert out.num_frames == (29 if n == 0 else 32)


@pytest.mark.gpu
@pytest.mark.multigpu
def test_nccl_sp2_equals_single_gpu():
    from longlive_kernels.comm._spawn import run_distributed

    from ._sp_workers import sp_stream

    ref = micro_pipeline(policy=CachePolicy(storage="bf16"), ops="torch", device="cuda")
    a = torch.stack([c.latents for c in ref.stream(PROMPTS, num_chunks=len(PROMPTS), steps=2, seed=4)]).cpu()
    outs = run_distributed(
        sp_stream, 2, backend="nccl", args=(PROMPTS, "bf16", "bf16", "torch", 2, 4, "cuda"), timeout_s=300
    )
    for out in outs:
        torch.testing.assert_close(out, a, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_channels_last_vae_decodes_the_same():
    import copy

    torch.manual_seed(0)
    vae = WanVAE(WanVAEConfig(enc_dim=16, dec_dim=16)).cuda().eval()
    cl = copy.deepcopy(vae)
    for param in cl.parameters():  # as the pipeline does: Module.to(memory_format=) rejects 4-D params
        if param.dim() == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
    assert any(p.is_contiguous(memory_format=torch.channels_last_3d) and not p.is_contiguous()
               for p in cl.parameters())
    g = torch.Generator(device="cuda").manual_seed(0)
    chunks = [torch.randn(1, 48, 2, 4, 4, device="cuda", generator=g) for _ in range(3)]
    a, b = _decode_all(vae, chunks, "sync"), _decode_all(cl, chunks, "async")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
