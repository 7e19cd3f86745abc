"""Probe (device): torch._scaled_mm with per-tensor scales (cuBLASLt, scalar A/B scales) against
row-wise scales (one outer-vector algorithm in cuBLASLt at M = 1760, N = 3072) and cuBLAS BF16, at
issue 3's twelve M ≥ 1760 shapes; device time, L2 flushed, same run."""
import torch

from longlive_kernels.testing import cuda_time_ms

print("| M | K | N | bf16 TFLOP/s | row-wise × bf16 | per-tensor × bf16 | per-tensor × row-wise |")
print("|---|---|---|---|---|---|---|")
for m in (1760, 7040, 14080):
    for k, n in ((3072, 3072), (3072, 9216), (3072, 14336), (14336, 3072)):
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        a8, w8 = (a * 8).to(torch.float8_e4m3fn), (w * 2000).to(torch.float8_e4m3fn)
        sa_row = torch.full((m, 1), 0.125, device="cuda")
        sw_row = torch.full((1, n), 0.0005, device="cuda")
        sa_t, sw_t = torch.tensor(0.125, device="cuda"), torch.tensor(0.0005, device="cuda")
        t_bf = cuda_time_ms(lambda: a @ w.T, hide_host=True)
        t_row = cuda_time_ms(lambda: torch._scaled_mm(a8, w8.T, sa_row, sw_row, out_dtype=torch.bfloat16,
                                                      use_fast_accum=True), hide_host=True)
        t_ten = cuda_time_ms(lambda: torch._scaled_mm(a8, w8.T, sa_t, sw_t, out_dtype=torch.bfloat16,
                                                      use_fast_accum=True), hide_host=True)
        fl = 2 * m * k * n
        print(f"| {m} | {k} | {n} | {fl / t_bf / 1e9:.0f} | {t_bf / t_row:.2f} | {t_bf / t_ten:.2f} | "
              f"{t_row / t_ten:.2f} |", flush=True)

# the adaLN producer: bf16 h, row-wise FP8 h, per-tensor FP8 h (no row amax), and the scale's own cost
from longlive_kernels.attention import adaln_modulate, layernorm_fp8_scale

print("\n| tokens | adaLN bf16 h µs | FP8 h row-wise µs | FP8 h per-tensor µs | layernorm_fp8_scale µs |")
print("|---|---|---|---|---|")
with torch.no_grad():
    for m in (1760, 7040, 14080):
        x = torch.randn(1, m, 3072, device="cuda", dtype=torch.bfloat16)
        sh, sc = (torch.randn(1, m // 880, 3072, device="cuda") * 0.5 for _ in range(2))
        s = layernorm_fp8_scale(sc, sh)
        t = [cuda_time_ms(lambda **kw: adaln_modulate(x, sh, sc, frame_len=880, **kw), hide_host=True)]
        t.append(cuda_time_ms(lambda: adaln_modulate(x, sh, sc, frame_len=880, out_fp8=True), hide_host=True))
        t.append(cuda_time_ms(lambda: adaln_modulate(x, sh, sc, frame_len=880, out_fp8=True, fp8_scale=s),
                              hide_host=True))
        t.append(cuda_time_ms(lambda: layernorm_fp8_scale(sc, sh), hide_host=True))
        print(f"| {m} | " + " | ".join(f"{v * 1e3:.1f}" for v in t) + " |", flush=True)
