"""Runs on every rank of the multi-process delayed-scaling test (``test_ulysses_distributed.py``):
three calls of one ``DelayedScaling`` site over the real collective. Every rank predicts each call's
decode scale from the global tensors (call 1: the group amax; call 2: that scale · margin; call 3:
margin · the group maximum of what the ranks observed in call 1) and checks the received NVFP4 data
bit for bit against ``quantize_nvfp4`` of its gathered shard with that scale."""

from __future__ import annotations

import torch
import torch.distributed as dist

from longlive_kernels.comm import DelayedScaling, quantized_all_to_all
from longlive_kernels.comm import reference as ref
from longlive_kernels.fp4 import quantize_nvfp4
from longlive_kernels.fp4.reference import div_rn

from ._workers import Checker, _dev, _gen, _shard


def run_delayed(rank: int, p: int, device: str, backends: list[str]) -> list[str]:
    chk = Checker()
    dev = _dev(device, rank)
    b, s, h, d = 1, 2 * p, 2 * p, 64
    fulls = [_gen(80 + t, (b, s, h, d), torch.bfloat16, dev, scale=sc) for t, sc in enumerate((1.0, 2.5, 0.75))]
    for be in backends:
        try:
            for two in (False, True):  # one tensor, or (k, v) sharing the buffer and the state
                st = DelayedScaling(margin=2.0)
                gs1 = div_rn(ref.nvfp4_amax(fulls[0]), 2688.0)
                # what each rank observes in call 1: 6 · max block scale of its received shard · gs1
                mine = quantize_nvfp4(fulls[0].chunk(p, dim=2)[rank], global_scale=gs1, backend="torch")
                obs = (mine.scale.float().amax() * gs1) * 6.0
                dist.all_reduce(obs, op=dist.ReduceOp.MAX)
                expected = [gs1, gs1 * 2.0, div_rn(obs.reshape(1) * 2.0, 2688.0)[0]]
                for t, (full, gs) in enumerate(zip(fulls, expected)):
                    x = _shard(full, rank, p)
                    res = quantized_all_to_all((x, x) if two else x, scatter_dim=2, gather_dim=1, output="nvfp4",
                                               delayed=st, backend=be)
                    want = quantize_nvfp4(full.chunk(p, dim=2)[rank], global_scale=gs, backend="torch")
                    for q in (res if two else [res]):
                        tag = f"[{be} two={two}] call {t + 1}"
                        chk.bitwise(q.data, want.data, f"{tag} data")
                        chk.bitwise(q.scale.view(torch.uint8), want.scale.view(torch.uint8), f"{tag} scales")
                        chk.bitwise(q.global_scale.reshape(()), gs.reshape(()), f"{tag} decode scale")
                chk.true(not bool(st.saturated()), f"[{be}] no saturation")
        except Exception as e:  # noqa: BLE001 - recorded; every rank still reaches the barrier
            chk.failures.append(f"[{be}] {type(e).__name__}: {e}")
    dist.barrier()
    return chk.failures
