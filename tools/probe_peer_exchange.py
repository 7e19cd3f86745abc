"""Probe of the peer-store Ulysses exchange (issue 6): launch parameters of the store kernel, and the
SP=2 attention layer with the best of them against P = 1.

Times (max over ranks of the per-rank median, CUDA events after an L2 flush and a GPU spin that
hides the host) the q/k/v seq→head exchange and the o head→seq exchange of one 5B chunk (7040
tokens, 24 heads × 128, bf16) for every (rows per program, warps, destination-first grid) in the
sweep, then runs bench_all_to_all's SP layer with the fastest.

Usage::

    torchrun --nproc-per-node 2 tools/probe_peer_exchange.py
"""

from __future__ import annotations

import itertools
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench", "comm"))

SWEEP = list(itertools.product((16, 32, 64, 128), (4, 8), (False, True)))


def main() -> int:
    import bench_all_to_all as bench

    from longlive_kernels.comm import peer_exchange as pe

    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device())
    b, s, h, d, window = 1, 7040, 24, 128, 28160
    timer = bench.Timer(device, 5, 30)
    g = torch.Generator(device="cpu").manual_seed(rank)
    q, k, v = (torch.randn(b, s // world, h, d, generator=g).to(device, torch.bfloat16) for _ in range(3))
    o = torch.randn(b, s, h // world, d, generator=g).to(device, torch.bfloat16)
    ex = pe.PeerExchange(None, batch=b, tokens=s // world, heads=h, head_dim=d, dtype=torch.bfloat16,
                         device=device)
    ref_in = [t.clone() for t in ex.seq_to_head(q, k, v)]
    ref_out = ex.head_to_seq(o)
    rows = []
    for block_rows, warps, dest_first in SWEEP:
        pe._BLOCK_ROWS, pe._NUM_WARPS, pe._DEST_FIRST = block_rows, warps, dest_first
        got_in = [t.clone() for t in ex.seq_to_head(q, k, v)]
        same = all(torch.equal(a, c) for a, c in zip(got_in, ref_in)) and torch.equal(ex.head_to_seq(o), ref_out)
        t_in = timer(lambda: ex.seq_to_head(q, k, v))
        t_out = timer(lambda: ex.head_to_seq(o))
        rows.append((t_in + t_out, block_rows, warps, dest_first, t_in, t_out, same))
    rows.sort()
    if rank == 0:
        mb = 3 * q.numel() * 2 * (world - 1) / world / 1e6
        print(f"# q/k/v: {mb:.1f} MB leave each rank; o: {mb / 3:.1f} MB")
        print("| rows/program | warps | dest first | q,k,v ms | o ms | sum ms | NVLink GB/s (q,k,v) | bit-equal |")
        print("|---:|---:|---|---:|---:|---:|---:|---|")
        for tot, br, w, df, ti, to, same in rows:
            print(f"| {br} | {w} | {df} | {ti:.4f} | {to:.4f} | {tot:.4f} | {mb / ti / 1e3:.0f} | {same} |")
    best = rows[0]
    pe._BLOCK_ROWS, pe._NUM_WARPS, pe._DEST_FIRST = best[1], best[2], best[3]
    for label, cfg in (("default (32, 4, False)", (32, 4, False)), (f"best {best[1:4]}", best[1:4])):
        pe._BLOCK_ROWS, pe._NUM_WARPS, pe._DEST_FIRST = cfg
        for _ in range(2):
            sp_rows: list = []
            bench._bench_sp_attention(world, (b, s, h, d, window), device, timer, sp_rows)
            if rank == 0:
                for p, key, ms, tf, spd in sp_rows:
                    print(f"SP layer [{label}] P={p} {key}: {ms:.3f} ms, {spd:.2f}x")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
