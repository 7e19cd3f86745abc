"""TEMPORARY: time the flat NVFP4 quantize kernel per prefetch depth (LONGLIVE_QUANT_DEPTH), one
process per depth; checks CUDA == Triton bit for bit on the timed tensors."""
import os
import subprocess
import sys

CHILD = r'''
import torch
from longlive_kernels.fp4 import quantize_nvfp4
from longlive_kernels.testing import copy_bandwidth_gbs, cuda_time_ms
copy = copy_bandwidth_gbs()
out = []
for m, k in ((7040, 3072), (7040, 14336)):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3
    gs = x.abs().amax().float() / 2688
    for rnd in ("rne", "stochastic"):
        a = quantize_nvfp4(x, global_scale=gs, rounding=rnd, seed=3, backend="cuda")
        b = quantize_nvfp4(x, global_scale=gs, rounding=rnd, seed=3, backend="triton")
        assert torch.equal(a.data, b.data) and torch.equal(a.scale.view(torch.uint8), b.scale.view(torch.uint8)), rnd
    t = cuda_time_ms(lambda: quantize_nvfp4(x, global_scale=gs, backend="cuda"), hide_host=True, iters=100)
    eff = m * k * 2.5625 / t / 1e6
    out.append(f"{m}x{k}: {t*1e3:.1f} us, {eff:.0f} GB/s = {eff/copy:.3f} x copy ({copy:.0f})")
print("depth", __import__("os").environ.get("LONGLIVE_QUANT_DEPTH"), "|", " | ".join(out))
'''
for d in sys.argv[1:] or ["1", "2", "3", "4"]:
    env = dict(os.environ, LONGLIVE_QUANT_DEPTH=d)
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
    print(r.stdout.strip() or r.stderr[-2000:])
