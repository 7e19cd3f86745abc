"""Move the demo weights through a channel with a per-file size limit.

    python tools/pack_demo.py split SRC.safetensors OUT_DIR   # bf16, shards < 12 MB, metadata kept
    python tools/pack_demo.py merge DST.safetensors SHARD...   # one bf16 safetensors file
"""

import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

LIMIT = 12 * 1024 * 1024


def split(src: str, out_dir: str) -> None:
    with safe_open(src, "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    shards, cur, size = [], {}, 0
    for k, v in tensors.items():
        v = v.to(torch.bfloat16) if v.is_floating_point() else v
        if cur and size + v.numel() * v.element_size() > LIMIT:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v.contiguous()
        size += v.numel() * v.element_size()
    shards.append(cur)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for i, shard in enumerate(shards):
        save_file(shard, str(Path(out_dir) / f"demo_part{i}.safetensors"), metadata=meta)
    print(f"{len(shards)} shards, {len(tensors)} tensors")


def merge(dst: str, *parts: str) -> None:
    tensors, meta = {}, {}
    for p in parts:
        with safe_open(p, "pt") as f:
            meta = f.metadata() or meta
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, dst, metadata=meta)
    print(f"wrote {dst}: {len(tensors)} tensors, {Path(dst).stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    {"split": split, "merge": merge}[sys.argv[1]](*sys.argv[2:])
