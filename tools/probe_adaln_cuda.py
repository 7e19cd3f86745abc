"""Probe (device): the CUDA adaLN forward (``csrc/attention/adaln.cu``) against the Triton one at the 5B
model's shapes (C = 3072, 880 tokens per frame), device time with L2 flushed and the host hidden; and
the M = 1760, 3072 × 3072 producer pair of issue 3 (adaLN writing bf16 h + cuBLAS BF16 against adaLN
writing FP8 h + the FP8 linear), with either kernel on either side, timed in the same run.

    python tools/probe_adaln_cuda.py
"""
import math

import torch
import torch.nn.functional as F

from longlive_kernels.attention import adaln_modulate, gated_residual_adaln
from longlive_kernels.fp4 import quantize_fp8_rowwise
from longlive_kernels.fp4.gemm_fp8 import fp8_linear
from longlive_kernels.testing import cuda_time_ms


def t_us(fn):
    with torch.no_grad():
        fn()
        return cuda_time_ms(fn, hide_host=True, iters=100) * 1e3


print(f"device: {torch.cuda.get_device_name()}")
C, FL = 3072, 880
print("\n| tokens | op | h | Triton µs | CUDA µs | CUDA × copy | Triton / CUDA |")
print("|---|---|---|---|---|---|---|")
for m in (1760, 7040, 14080):
    g = torch.Generator(device="cuda").manual_seed(m)
    x = torch.randn(1, m, C, device="cuda", dtype=torch.bfloat16, generator=g)
    y = torch.randn(1, m, C, device="cuda", dtype=torch.bfloat16, generator=g)
    e = 0.5 * torch.randn(1, m // FL, 6, C, device="cuda", generator=g)
    for op in ("adaln", "residual_adaln"):
        for fp8 in (False, True):
            def run(be, op=op, fp8=fp8, x=x, y=y, e=e):
                if op == "adaln":
                    return lambda: adaln_modulate(x, e[:, :, 0], e[:, :, 1], frame_len=FL, backend=be, out_fp8=fp8)
                return lambda: gated_residual_adaln(x, y, e[:, :, 2], e[:, :, 0], e[:, :, 1], frame_len=FL,
                                                    backend=be, out_fp8=fp8)
            tt, tc = t_us(run("triton")), t_us(run("cuda"))
            n_in = 2 if op != "adaln" else 1
            moved = x.numel() * (2 * n_in + (1 if fp8 else 2) + (2 if op != "adaln" else 0))
            src = torch.empty(moved // 4, dtype=torch.bfloat16, device="cuda")  # copying it moves `moved` bytes
            dst = torch.empty_like(src)
            copy = t_us(lambda src=src, dst=dst: dst.copy_(src))
            print(f"| {m} | {op} | {'fp8' if fp8 else 'bf16'} | {tt:.1f} | {tc:.1f} | {copy / tc:.2f} | "
                  f"{tt / tc:.2f} |", flush=True)

# issue 3's producer pair at M = 1760, K = N = 3072
m = 1760
g = torch.Generator(device="cuda").manual_seed(1)
x = torch.randn(1, m, C, device="cuda", dtype=torch.bfloat16, generator=g)
w = (torch.randn(C, C, device="cuda", generator=g) / math.sqrt(C)).to(torch.bfloat16)
w8, ws8 = quantize_fp8_rowwise(w)
sh, sc = (0.5 * torch.randn(1, m // FL, C, device="cuda", generator=g) for _ in range(2))


def bf16_pair(be):
    return lambda: F.linear(adaln_modulate(x, sh, sc, frame_len=FL, backend=be)[0], w)


def fp8_pair(be):
    def fn():
        codes, rs = adaln_modulate(x, sh, sc, frame_len=FL, backend=be, out_fp8=True)
        return fp8_linear(codes[0], w8, ws8, x_scale=rs[0])
    return fn


print("\n| M = 1760, 3072 × 3072 | µs | × (Triton adaLN + BF16) | × (CUDA adaLN + BF16) |")
print("|---|---|---|---|")
rows = {}
for _ in range(2):  # twice, interleaved: the spread between repeats is the noise
    for name, fn in (("adaLN bf16 h (Triton) + cuBLAS BF16", bf16_pair("triton")),
                     ("adaLN bf16 h (CUDA) + cuBLAS BF16", bf16_pair("cuda")),
                     ("adaLN FP8 h (Triton) + FP8 linear", fp8_pair("triton")),
                     ("adaLN FP8 h (CUDA) + FP8 linear", fp8_pair("cuda")),
                     ("cuBLAS BF16 alone", lambda: F.linear(x[0], w))):
        rows.setdefault(name, []).append(t_us(fn))
base_t = min(rows["adaLN bf16 h (Triton) + cuBLAS BF16"])
base_c = min(rows["adaLN bf16 h (CUDA) + cuBLAS BF16"])
for name, ts in rows.items():
    t = min(ts)
    print(f"| {name} | {t:.1f} ({', '.join(f'{v:.1f}' for v in ts)}) | {base_t / t:.3f} | {base_c / t:.3f} |")
