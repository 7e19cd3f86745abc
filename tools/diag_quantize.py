"""GPU diagnostic: compare NVFP4 quantize across reference-on-CPU, reference-on-GPU, Triton and
CUDA; print mismatch counts and the first mismatching block in detail."""

from __future__ import annotations

import torch

from longlive_kernels._backend import has_cuda_extension
from longlive_kernels.fp4 import quantize_nvfp4


def main() -> None:
    torch.manual_seed(0)
    x = (torch.randn(1000, 3072, device="cuda") * torch.exp(torch.randn(1000, 1, device="cuda") * 3)).bfloat16()
    for rule in ("static6", "four_over_six"):
        qs = {
            "ref_cpu": quantize_nvfp4(x.cpu(), scale_rule=rule, backend="torch"),
            "ref_gpu": quantize_nvfp4(x, scale_rule=rule, backend="torch").to("cpu"),
            "triton": quantize_nvfp4(x, scale_rule=rule, backend="triton").to("cpu"),
        }
        if has_cuda_extension():
            qs["cuda"] = quantize_nvfp4(x, scale_rule=rule, backend="cuda").to("cpu")
        base = qs["ref_cpu"]
        for name, q in qs.items():
            dd = (q.data != base.data).nonzero()
            ds = (q.scale.view(torch.uint8) != base.scale.view(torch.uint8)).nonzero()
            print(f"{rule:14s} {name:8s} data diff {dd.shape[0]:6d} scale diff {ds.shape[0]:6d} "
                  f"gs {q.global_scale.item():.9g} (ref {base.global_scale.item():.9g})")
            if dd.shape[0] and name != "ref_cpu":
                r, c = dd[0].tolist()
                blk = (2 * c) // 16
                xs = x.cpu()[r, 16 * blk:16 * blk + 16].float()
                print("   block", r, blk, "x", xs.tolist())
                print("   scale", base.scale.view(torch.uint8)[r, blk].item(), q.scale.view(torch.uint8)[r, blk].item())
                print("   data ", base.data[r, 8 * blk:8 * blk + 8].tolist(), q.data[r, 8 * blk:8 * blk + 8].tolist())


if __name__ == "__main__":
    main()
