"""Device time of ``layernorm_fp8_scale`` for every block of a step in one launch (``groups``) against
one launch per block, at the 5B width (30 blocks, C = 3072) and 1 / 8 / 16 modulation rows (frames).

    python tools/probe_layernorm_fp8_scale.py      (H100; CUDA events, L2 flushed, host hidden)
"""

from __future__ import annotations

import torch

from longlive_kernels.attention import layernorm_fp8_scale
from longlive_kernels.testing import cuda_time_ms


def main() -> None:
    g, c = 30, 3072
    print("| rows per block | one launch, 30 groups (µs) | 30 launches (µs) | ratio |")
    print("|---|---|---|---|")
    for rows in (1, 8, 16):
        e = torch.randn(g, 1, rows, 6, c, device="cuda")
        scale, shift = e[..., 1, :], e[..., 0, :]
        grouped = layernorm_fp8_scale(scale, shift, groups=g)
        single = torch.stack([layernorm_fp8_scale(scale[i], shift[i]) for i in range(g)])
        assert torch.equal(grouped, single)
        t1 = cuda_time_ms(lambda s=scale, h=shift: layernorm_fp8_scale(s, h, groups=g), hide_host=True) * 1e3
        t30 = cuda_time_ms(lambda s=scale, h=shift: [layernorm_fp8_scale(s[i], h[i]) for i in range(g)],
                          hide_host=True) * 1e3
        print(f"| {rows} | {t1:.1f} | {t30:.1f} | {t30 / t1:.1f}x |")


if __name__ == "__main__":
    main()
