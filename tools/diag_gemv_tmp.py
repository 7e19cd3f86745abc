import sys, torch, longlive_kernels._C
from longlive_kernels.fp4 import quantize_nvfp4
op = torch.ops.longlive_kernels.nvfp4_gemv_cuda
x = torch.randn(4, 256, device="cuda").bfloat16()
b = quantize_nvfp4(torch.randn(256, 256, device="cuda"))
gs = b.global_scale.reshape(1).float()
out = torch.empty(4, 256, device="cuda", dtype=torch.bfloat16)
case = sys.argv[1]
try:
    if case == "oldfmt":
        xx = torch.randn(4, 24, device="cuda")
        u8 = torch.zeros(48, dtype=torch.uint8, device="cuda")
        torch.ops.longlive_kernels.nvfp4_quantize_cuda(xx, u8, u8[:6], gs.clone(), gs, torch.zeros(1, dtype=torch.int32, device="cuda"), 0, False, 0, -1, False, False)
    if case == "m": op(torch.randn(65, 256, device="cuda").bfloat16(), b.data, b.scale.view(torch.uint8), gs, None, None, out, 0, 0, 0)
except RuntimeError as e:
    print(case, "raised:", str(e).splitlines()[0][:100])
print(case, "done")
