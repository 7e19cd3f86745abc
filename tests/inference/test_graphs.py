"""CUDA graphs of the chunk forward (``longlive.inference.graphs.ChunkGraphs``): off the GPU the
runner is a pass-through; on a GPU a graphed stream equals the eager one bit for bit."""

from __future__ import annotations

import pytest
import torch

from longlive.inference.graphs import ChunkGraphs


def test_runner_is_eager_off_cuda_and_checks_arguments():
    seen = []

    def forward(x, t, ctx, offset):
        seen.append(offset)
        return x * t[:, None] + ctx.sum() + offset

    runner = ChunkGraphs()
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(2, 5, generator=g), torch.rand(2, generator=g), torch.randn(3, generator=g)
    for off in (0, 8, 16):
        assert torch.equal(runner(forward, (1,), off, x, t, ctx), forward(x, t, ctx, off))
    assert seen == [0, 0, 8, 8, 16, 16] and runner.num_graphs == 0
    with pytest.raises(ValueError, match="eager_calls"):
        ChunkGraphs(eager_calls=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("storage", ["fp4", "bf16"])
def test_graphed_stream_equals_eager_stream(storage):
    """Tiny model, FP4KVCache, 7 chunks with a prompt switch (eager re-cache forwards between
    graph replays) and a scene cut: every chunk's latents are bit-identical with and without
    graphs, and the window's steady state reuses its graphs (one per context length)."""
    from longlive.inference import CachePolicy, Pipeline

    prompts = ["a red ball", "a red ball", "a blue cube", "a blue cube",
               "The scene transitions. a green cone", "a green cone", "a green cone"]
    runs = []
    for graphs in (False, True):
        pipe = Pipeline.from_pretrained(config="tiny", random_weights=True, text_encoder="hash", device="cuda",
                                        policy=CachePolicy(max_chunks=4, sink_chunks=1, storage=storage),
                                        cuda_graphs=graphs)
        session = pipe.session(steps=3, seed=3)
        runs.append([session.next_chunk(p).latents.clone() for p in prompts])
        if graphs:
            assert session.graphs.disabled_reason is None
            assert 1 <= session.graphs.num_graphs <= 4
    for eager, graphed in zip(*runs, strict=True):
        assert torch.equal(eager, graphed)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphs_with_async_decode_on_the_same_gpu():
    """The async decoder's thread works on the DiT's GPU while the session captures its graphs:
    both finish (captures happen only while the decoder is idle) and the frames equal a graph-free
    run's."""
    from longlive.inference import ChunkDecoder, Pipeline

    frames = []
    for graphs in (False, True):
        pipe = Pipeline.from_pretrained(config="tiny", random_weights=True, text_encoder="hash", device="cuda",
                                        cuda_graphs=graphs)
        got = []
        decoder = ChunkDecoder(pipe.vae, mode="async", sink=lambda i, f, got=got: got.append(f.copy()))
        session = pipe.session(steps=2, seed=5)
        for n in range(6):
            decoder.submit(n, session.next_chunk("a red ball").latents)
        decoder.close()
        assert session.graphs.disabled_reason is None
        frames.append(got)
    assert len(frames[0]) == len(frames[1]) == 6
    for a, b in zip(*frames, strict=True):
        assert (a == b).all()
