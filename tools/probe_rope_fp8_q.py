"""Device time of q's way into FP8 attention at the 5B chunk (q, k [1, 7040, 24, 128] bf16, qk-RMSNorm):
the fused qk-norm + RoPE writing bf16 q followed by the per-tensor cast to E4M3 (the path until the
28th session), against the same kernel writing q's E4M3 codes itself, token- and head-major.

Bytes: the bf16 path reads q, k and writes q, k (4 × 43.3 MB), then the cast reads q and writes its
codes (43.3 + 21.6 MB); the FP8 path reads q, k and writes k and q's codes (3 × 43.3 + 21.6 MB).

    python tools/probe_rope_fp8_q.py      (H100; CUDA events, L2 flushed, host hidden)
"""

from __future__ import annotations

import torch

from longlive_kernels.attention import apply_rope_3d
from longlive_kernels.attention.fp8_sdpa import heads_major, scale_cast
from longlive_kernels.testing import cuda_time_ms


def main() -> None:
    torch.manual_seed(0)
    grid, h, d = (8, 22, 40), 24, 128  # 7040 tokens: one 704×1280 chunk of the 5B
    n = grid[0] * grid[1] * grid[2]
    q, k = (torch.randn(1, n, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    wq, wk = (torch.rand(h * d, device="cuda", dtype=torch.bfloat16) + 0.5 for _ in range(2))
    kw = {"grid": grid, "norm_weight_q": wq, "norm_weight_k": wk}
    bound = (wq.float().abs().max() * 1.01 * (h * d) ** 0.5).reshape(1)
    s = bound / torch.full_like(bound, 448.0)
    tok = torch.empty(q.shape, dtype=torch.float8_e4m3fn, device="cuda")
    hm = heads_major(tuple(q.shape), torch.float8_e4m3fn, "cuda")

    def bf16_then_cast(out):
        qo, ko = apply_rope_3d(q, k, **kw)
        scale_cast(qo, s, out, divide=True)
        return ko

    with torch.no_grad():
        copy = torch.empty_like(q)
        t_copy = cuda_time_ms(lambda: copy.copy_(q), hide_host=True) * 1e3
        rows = [
            ("rope bf16 q, k", lambda: apply_rope_3d(q, k, **kw)),
            ("rope bf16 + cast q → E4M3 token-major (until the 28th session)", lambda: bf16_then_cast(tok)),
            ("rope bf16 + cast q → E4M3 head-major", lambda: bf16_then_cast(hm)),
            ("rope, q's E4M3 codes token-major", lambda: apply_rope_3d(q, k, q_fp8_scale=s, q_fp8_out=tok, **kw)),
            ("rope, q's E4M3 codes head-major", lambda: apply_rope_3d(q, k, q_fp8_scale=s, q_fp8_out=hm, **kw)),
        ]
        print(f"copy of q (43.3 MB read + write): {t_copy:.1f} µs")
        print("| path | µs | × rope bf16 + cast (token-major) |")
        print("|---|---|---|")
        times = {name: cuda_time_ms(fn, hide_host=True, iters=100) * 1e3 for name, fn in rows}
        base = times[rows[1][0]]
        for name, t in times.items():
            print(f"| {name} | {t:.1f} | {base / t:.2f}× |")


if __name__ == "__main__":
    main()
