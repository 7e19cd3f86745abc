"""Module-level functions run on spawned gloo ranks by test_sp.py (pickled by reference)."""

from __future__ import annotations


def sp_stream(rank, world, prompts, storage, kv_comm, ops, steps, seed, device="cpu", dtype=None, kv_scaling="current"):
    import torch

    from longlive.inference import CachePolicy, SPGroup

    from ._helpers import micro_pipeline

    torch.set_num_threads(1)
    dev = f"cuda:{rank}" if device == "cuda" else device
    pipe = micro_pipeline(
        policy=CachePolicy(storage=storage),
        sp=SPGroup(kv_comm=kv_comm, kv_scaling=kv_scaling),
        ops=ops,
        device=dev,
        dtype=dtype or torch.float32,
    )
    out = [c.latents for c in pipe.stream(prompts, num_chunks=len(prompts), steps=steps, seed=seed)]
    return torch.stack(out).cpu()
