"""Probe (issue 6): is an SP=2 rank's attention (12 of 24 heads) half the time of the P = 1 one?

Times SDPA of a 7040-token chunk over a 28160-token window (5B model, 128-dim heads, bf16) at 24
and 12 heads, with q/k/v as [B, S, H, D] views (the Ulysses layout) or contiguous [B, H, S, D],
for each SDPA backend: device time (L2 flushed, host hidden behind a GPU spin), median of 20.

Usage::

    python tools/probe_sdpa_heads.py
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from longlive_kernels.testing import cuda_time_ms

BACKENDS = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def main() -> int:
    dev = torch.device("cuda")
    s, w, d = 7040, 28160, 128
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| heads | layout | backend | ms | TFLOP/s | ms per head |")
    print("|---:|---|---|---:|---:|---:|")
    for heads in (24, 12):
        flops = 4 * s * w * heads * d
        for layout in ("bshd", "bhsd"):
            if layout == "bshd":
                q = torch.randn(1, s, heads, d, device=dev, dtype=torch.bfloat16).transpose(1, 2)
                k, v = (torch.randn(1, w, heads, d, device=dev, dtype=torch.bfloat16).transpose(1, 2) for _ in "kv")
            else:
                q = torch.randn(1, heads, s, d, device=dev, dtype=torch.bfloat16)
                k, v = (torch.randn(1, heads, w, d, device=dev, dtype=torch.bfloat16) for _ in "kv")
            for name, be in BACKENDS.items():
                def call(q=q, k=k, v=v, be=be):
                    if be is None:
                        return F.scaled_dot_product_attention(q, k, v)
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(q, k, v)
                try:
                    ms = cuda_time_ms(call, warmup=3, iters=20, hide_host=True)
                except RuntimeError as e:  # a backend that refuses the layout
                    print(f"| {heads} | {layout} | {name} | refused: {str(e).splitlines()[0][:80]} | | |")
                    continue
                print(f"| {heads} | {layout} | {name} | {ms:.3f} | {flops / ms / 1e9:.0f} | {ms / heads:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
