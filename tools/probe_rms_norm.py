"""Probe (device): Wan's qk RMSNorm as written in ``blocks.RMSNorm`` (fp32 eager ops) against torch's
fused ``F.rms_norm`` on the cross-attention's q [1, 7040, 3072] bf16: device time (L2 flushed) next
to a copy, the kernels each launches, and both errors against an fp64 reference."""
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from longlive.model.blocks import RMSNorm
from longlive_kernels.testing import cuda_time_ms


def kernels(fn):
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        torch.cuda.synchronize()
    return [e.key[:60] for e in p.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]


torch.manual_seed(0)
x = (torch.randn(1, 7040, 3072, device="cuda") * 3 + 0.5).bfloat16()
norm = RMSNorm(3072).cuda().bfloat16()
with torch.no_grad():
    norm.weight.copy_(torch.randn(3072) * 0.3 + 1)
    eager = lambda: RMSNorm.forward(norm, x)
    fused = lambda: F.rms_norm(x, (3072,), norm.weight, norm.eps)
    xd = x.double()
    truth = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()
    for name, fn in (("eager fp32 ops", eager), ("F.rms_norm", fused)):
        out = fn()
        err = (out.double() - truth).abs().max().item()
        ms = cuda_time_ms(fn, hide_host=True)
        print(f"{name}: {ms * 1e3:.1f} us, max err vs fp64 {err:.3g}, kernels {kernels(fn)}")
    print(f"copy: {cuda_time_ms(lambda: x.clone(), hide_host=True) * 1e3:.1f} us")
    print("outputs differ in", (eager() != fused()).sum().item(), "of", x.numel(), "elements")
